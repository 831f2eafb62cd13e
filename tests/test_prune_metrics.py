"""Sparsity metrics against hand-computed values, and the small pieces they rest on."""

import pytest
import torch
import torch.nn as nn

from compiler.prune.masks import Targets, keep_count, keep_top, select
from compiler.prune.metrics import sparsity_report
from compiler.prune.schedule import cubic_sparsity, pruning_steps


def _linear(weight):
    w = torch.tensor(weight, dtype=torch.float32)
    layer = nn.Linear(w.shape[1], w.shape[0])
    with torch.no_grad():
        layer.weight.copy_(w)
    return layer


def test_metrics_against_hand_computed_values():
    dense = nn.Sequential(_linear([[1, -2], [3, 4]]), nn.ReLU(), _linear([[1, 1], [2, 2]]))
    pruned = nn.Sequential(_linear([[0, -2], [0, 0]]), nn.ReLU(), _linear([[1, 0], [2, 2]]))
    r = sparsity_report(pruned, dense)
    first, second = r.layers
    # layer 0: 3 of 4 weights zero, row 1 all zero, removed |1|+|3|+|4| of 10
    assert first.parameter == pytest.approx(0.75)
    assert first.structural == pytest.approx(0.5)
    assert first.magnitude == pytest.approx(0.8)
    # layer 2: 1 of 4 zero, no zero row, removed |1| of 6
    assert second.parameter == pytest.approx(0.25)
    assert second.structural == 0.0
    assert second.magnitude == pytest.approx(1 / 6)
    # totals pool the layers: 4 zeros of 8, 1 zero row of 4, mass 9 of 16
    assert r.total.parameter == pytest.approx(0.5)
    assert r.total.structural == pytest.approx(0.25)
    assert r.total.magnitude == pytest.approx(9 / 16)


def test_metrics_without_reference_have_no_magnitude():
    model = nn.Sequential(_linear([[0, 0, 0], [1, 0, 2]]))
    r = sparsity_report(model)
    assert r.layers[0].parameter == pytest.approx(4 / 6)
    assert r.layers[0].structural == pytest.approx(0.5)
    assert r.layers[0].magnitude is None and r.total.magnitude is None


def test_metrics_of_a_shrunk_layer_count_removed_weights():
    dense = nn.Sequential(_linear([[1, 2, 3], [4, 5, 6], [7, 8, 9]]))
    small = nn.Sequential(_linear([[5, 0]]))         # kept row 1, columns 1 and 2
    kept = {"0": (torch.tensor([1]), torch.tensor([1, 2]))}
    r = sparsity_report(small, dense, kept=kept)
    layer = r.layers[0]
    assert layer.weights == 9 and layer.nonzero == 1
    assert layer.parameter == pytest.approx(8 / 9)
    assert layer.structural == pytest.approx(2 / 3)
    assert layer.magnitude == pytest.approx((45 - 5) / 45)
    # without the kept indices the magnitude share is unknown, the rest still counts
    r = sparsity_report(small, dense)
    assert r.layers[0].parameter == pytest.approx(8 / 9)
    assert r.layers[0].structural == pytest.approx(2 / 3)
    assert r.layers[0].magnitude is None


def test_conv2d_rows_are_output_channels():
    conv = nn.Conv2d(2, 3, 2)
    with torch.no_grad():
        conv.weight.fill_(1.0)
        conv.weight[1] = 0.0
        conv.weight[2, 0] = 0.0
    r = sparsity_report(nn.Sequential(conv))
    assert r.layers[0].parameter == pytest.approx(12 / 24)
    assert r.layers[0].structural == pytest.approx(1 / 3)


def test_keep_top_breaks_ties_by_position_and_select_scopes():
    scores = torch.tensor([1.0, 3.0, 3.0, 0.5, 3.0])
    assert keep_top(scores, 2).tolist() == [False, True, True, False, False]
    assert keep_count(10, 0.95) == 1 and keep_count(10, 0.0) == 10
    scores = {"a": torch.tensor([1.0, 2.0, 3.0, 4.0]), "b": torch.tensor([10.0, 20.0])}
    glob = select(scores, Targets(0.5), scope="global")
    assert glob["a"].tolist() == [False, False, False, True]
    assert glob["b"].tolist() == [True, True]
    layer = select(scores, Targets(0.5), scope="layer")
    assert layer["a"].tolist() == [False, False, True, True]
    assert layer["b"].tolist() == [False, True]
    per = select(scores, Targets(0.5, {"a": 0.75, "b": 0.0}), scope="global")
    assert int(per["a"].sum()) == 1 and int(per["b"].sum()) == 2


def test_cubic_schedule_follows_zhu_and_gupta():
    assert cubic_sparsity(0, 0.9, start=0, span=100) == 0.0
    assert cubic_sparsity(50, 0.9, start=0, span=100) == pytest.approx(0.9 * (1 - 0.5 ** 3))
    assert cubic_sparsity(100, 0.9, start=0, span=100) == 0.9
    assert cubic_sparsity(500, 0.9, start=0, span=100) == 0.9
    steps = pruning_steps(300, 4)
    assert steps == [50, 100, 150, 200]
