"""Every pruning method on tiny models: it reaches its target, leaves a plain model that
``build`` loads, and does what it promises (L0 gates, smaller layers, balanced PEs)."""

import copy
import functools

import numpy as np
import pytest
import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from _prune_helpers import blobs, digits_data, digits_mlp, mlp, train
from compiler.build import compile_model
from compiler.frontend import to_ir
from compiler.prune import METHODS, PruneConfig, prune_model, schedule
from compiler.prune.data import PruneData
from compiler.prune.masks import Targets, keep_count, project_exact
from compiler.prune.methods.balanced import pe_nonzero
from compiler.prune.methods.structured import find_groups

_DATA = blobs()
_DENSE = train(mlp(), _DATA)


def _prune(method, sparsity=0.8, *, model=None, data=None, epochs=20, **kw):
    config = PruneConfig(method=method, sparsity=sparsity, epochs=epochs, batch_size=32, **kw)
    return prune_model(model if model is not None else _DENSE, config,
                       data=data if data is not None else _DATA)


def _assert_plain(model):
    for m in model.modules():
        assert not parametrize.is_parametrized(m)
        assert not m._forward_pre_hooks and not m._forward_hooks
    to_ir(copy.deepcopy(model))        # build's frontend accepts it


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_prunes_a_tiny_model(method):
    before = [p.clone() for p in _DENSE.parameters()]
    result = _prune(method, 0.8, pes=4)
    total = result.sparsity.total
    tolerance = {"structured": 0.04, "balanced": 0.04}.get(method, 1.5 / total.weights)
    assert total.parameter == pytest.approx(0.8, abs=tolerance)
    assert result.accuracy_before > 0.9
    assert result.accuracy_after >= 0.7, result.accuracy_after
    _assert_plain(result.model)
    assert result.notes == [] or all("build cannot" not in n for n in result.notes)
    assert all(torch.equal(a, b) for a, b in zip(before, _DENSE.parameters()))  # input intact


def test_same_seed_same_result_and_other_seed_differs():
    a = _prune("gradual", 0.7, seed=3)
    b = _prune("gradual", 0.7, seed=3)
    c = _prune("gradual", 0.7, seed=4)
    sa, sb, sc = (r.model.state_dict() for r in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_zero_epochs_still_prunes_to_the_target():
    for method in ("gradual", "l0", "l1", "learned", "balanced"):
        r = _prune(method, 0.5, epochs=0, pes=4)
        assert r.sparsity.total.parameter == pytest.approx(0.5, abs=0.03), method


def test_l0_gates_reach_the_requested_sparsity_within_one_point():
    dense = digits_mlp()
    result = _prune("l0", 0.9, model=dense, data=digits_data(), epochs=30)
    assert result.info["gate_sparsity"] == pytest.approx(0.9, abs=0.01)
    assert result.sparsity.total.parameter == pytest.approx(0.9, abs=0.01)
    assert result.accuracy_after > 0.85


def test_structured_shrinks_linear_layers_and_batchnorm():
    dense = train(mlp(batchnorm=True), _DATA)
    result = _prune("structured", 0.75, model=dense)
    linears = [m for m in result.model.modules() if isinstance(m, nn.Linear)]
    norms = [m for m in result.model.modules() if isinstance(m, nn.BatchNorm1d)]
    assert linears[0].in_features == 12 and linears[-1].out_features == 3   # interface kept
    assert linears[0].out_features < 24 and linears[1].in_features == linears[0].out_features
    assert linears[1].out_features < 16 and linears[2].in_features == linears[1].out_features
    assert [n.num_features for n in norms] == [linears[0].out_features,
                                               linears[1].out_features]
    total = result.sparsity.total
    assert total.parameter == pytest.approx(0.75, abs=0.05)
    assert total.structural > 0.4 and total.magnitude is not None
    _assert_plain(result.model)
    out = result.model(torch.from_numpy(_DATA.x_eval))
    assert out.shape == (len(_DATA.x_eval), 3)


def test_structured_removes_conv_channels():
    rng = np.random.default_rng(0)
    y = np.arange(160) % 2
    x = rng.normal(0, 1, (160, 1, 6, 6)).astype(np.float32)
    x[y == 1, :, :3] += 1.5
    data = PruneData(x[:120], y[:120], x[120:], y[120:], "images", "images held out")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(8 * 9, 2))
    groups = find_groups(model)
    assert [(g.producer, g.consumer, g.expand) for g in groups] == [("0", "3", 1),
                                                                      ("3", "7", 9)]
    result = _prune("structured", 0.6, model=train(model, data, epochs=10), data=data)
    conv1, conv2, fc = result.model[0], result.model[3], result.model[7]
    assert conv1.out_channels < 8 and conv2.in_channels == conv1.out_channels
    assert result.model[1].num_features == conv1.out_channels
    assert fc.in_features == conv2.out_channels * 9 and fc.out_features == 2
    assert result.sparsity.total.structural > 0
    assert result.model(torch.from_numpy(x[:4])).shape == (4, 2)


@pytest.mark.parametrize("pes", [4, 8])
def test_balanced_gives_every_pe_the_same_nonzero_count(pes):
    dense = digits_mlp()          # 64-32-16-10: the 10-row layer does not divide by 4 or 8
    data = digits_data()
    result = _prune("balanced", 0.9, model=dense, data=data, epochs=6, pes=pes)
    program = compile_model(to_ir(result.model), data.x_train, pes)
    counts = pe_nonzero(program)
    for m, c in enumerate(counts):
        # every PE block with rows and columns: the same count
        owned = [n for n, k in zip(c, range(pes))
                 if program.reducers[k // program.grid.cols].row_count(m)]
        assert max(owned) - min(owned) <= 1, (m, c)
    assert result.info["balanced"] and result.info["pe_nonzero"] == counts
    assert result.sparsity.total.parameter == pytest.approx(0.9, abs=0.02)


def test_balanced_refuses_a_model_build_cannot_compile():
    from core.errors import InputError
    model = nn.Sequential(nn.Linear(12, 8), nn.Tanh(), nn.Linear(8, 3))
    with pytest.raises(InputError, match="balanced pruning needs a model that build can"):
        _prune("balanced", 0.5, model=model)


def test_learned_reports_how_its_mask_compares():
    r = _prune("learned", 0.8)
    assert 0 <= r.info["overlap_with_labels"] <= 1
    assert 0 <= r.info["magnitude_overlap_with_labels"] <= 1
    assert len(r.info["features"]) == 9


@pytest.mark.parametrize("method", ["magnitude", "structured", "l0"])
def test_auto_sparsity_stays_within_the_accuracy_budget(method):
    r = _prune("magnitude", "auto", max_accuracy_drop=2.0) if method == "magnitude" else \
        _prune(method, "auto", max_accuracy_drop=2.0)
    auto = r.info["auto"]
    assert 100 * (r.accuracy_before - auto["one_shot_accuracy"]) <= 2.0
    assert set(auto["levels"]) and max(auto["levels"].values()) > 0
    assert r.targets.per_layer == auto["levels"]
    assert r.sparsity.total.parameter > 0.2


# --- any budget from one epoch up: exact zero count, no collapse (issue 14) -------------------

def _zeros(model) -> int:
    return sum(int((m.weight == 0).sum()) for m in model.modules()
               if isinstance(m, (nn.Linear, nn.Conv2d)))


def _weights(model) -> int:
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))


def _requested(method, model, sparsity) -> int:
    """round(sparsity x weights) as the method counts it: per layer for layer-wise magnitude
    pruning, over the whole model otherwise."""
    sizes = [m.weight.numel() for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    if method == "magnitude":
        return sum(n - keep_count(n, sparsity) for n in sizes)
    return sum(sizes) - keep_count(sum(sizes), sparsity)


#: Accuracy points a method may lose against global-magnitude at the same (1 or 3 epoch)
#: budget on the 64-32-16-10 digits MLP at 80 %. Measured (default reserve): every method
#: within +-0.3 at 1 epoch and within 1.7 (l0) at 3 epochs, so 3 points catch a regression.
#: Layer-wise magnitude loses 17 / 10 points (every layer to 80 %, the 10-output layer too)
#: and structured 54 / 28 (whole neurons of 32 and 16 go, with 44 / 132 steps to recover):
#: for them the test only asks that they did not collapse to chance (10 %).
_SHORT_BUDGET_SLACK = {"magnitude": 25.0, "structured": 70.0}


@functools.lru_cache(maxsize=None)
def _short_budget_reference(epochs):
    r = prune_model(digits_mlp(), PruneConfig(method="global-magnitude", sparsity=0.8,
                                              epochs=epochs, batch_size=32), data=digits_data())
    return r.accuracy_after


@pytest.mark.parametrize("epochs", [1, 3])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_hits_the_exact_count_and_holds_up_at_short_budgets(method, epochs):
    dense = digits_mlp()
    r = prune_model(dense, PruneConfig(method=method, sparsity=0.8, epochs=epochs, batch_size=32,
                                       pes=4), data=digits_data())
    assert _zeros(r.model) + _weights(dense) - _weights(r.model) == \
        _requested(method, dense, 0.8), r.info.get("projection")
    assert r.info["projection"]["short"] == 0
    slack = _SHORT_BUDGET_SLACK.get(method, 3.0)
    assert 100 * r.accuracy_after >= 100 * _short_budget_reference(epochs) - slack
    assert r.accuracy_after > 0.2                                     # not chance (10 %)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_exact_count_when_every_phase_runs_inside_one_epoch(method, monkeypatch):
    """With no steps reserved, a one-epoch budget (44 steps) is split between all of a
    method's phases, each ending mid-epoch; the zero count must still be exact."""
    monkeypatch.setattr(schedule, "RESERVED_STEPS", 0)
    dense = digits_mlp()
    r = prune_model(dense, PruneConfig(method=method, sparsity=0.9, epochs=1, batch_size=32,
                                       pes=4), data=digits_data())
    assert _zeros(r.model) + _weights(dense) - _weights(r.model) == \
        _requested(method, dense, 0.9)
    assert r.accuracy_after > 0.2, r.accuracy_after


def test_l0_does_not_collapse_at_20_epochs():
    """The reported failure, reduced: a fixed gate learning rate and a controller that
    integrated while the goal was still falling closed 99.8 % of the gates; the model saved
    at 90.81 % sparsity with 31.4 % accuracy (global-magnitude: 83.3 %)."""
    dense, data = digits_mlp(), digits_data()
    r = prune_model(dense, PruneConfig(method="l0", sparsity=0.9, epochs=20, batch_size=64),
                    data=data)
    ref = prune_model(dense, PruneConfig(method="global-magnitude", sparsity=0.9, epochs=20,
                                         batch_size=64), data=data)
    assert _zeros(r.model) == _requested("l0", dense, 0.9)
    assert r.info["gate_sparsity"] < 0.97, r.info          # measured 0.946 (was 0.998)
    assert r.accuracy_after >= ref.accuracy_after - 0.03   # measured +0.6 points (was -52)


def test_phases_split_the_steps_with_the_final_fine_tune_reserved():
    assert schedule.split_phases(22, 2, 1, reserve=100) == [0, 22]
    assert schedule.split_phases(220, 2, 1, reserve=100) == [80, 140]
    assert schedule.split_phases(44, 2, 1, reserve=0) == [29, 15]
    assert sum(schedule.split_phases(1321, 1, 2, reserve=100)) == 1321
    assert schedule.pruning_steps(22, 16, reserve=100) == [0]


def test_l1_total_pull_and_l0_gate_rate_scale_with_the_budget():
    from compiler.prune.methods import l0, l1
    data, dense = digits_data(), digits_mlp()
    strength = {}
    for epochs in (5, 20):
        r = prune_model(dense, PruneConfig(method="l1", sparsity=0.9, epochs=epochs,
                                           batch_size=32), data=data)
        steps = schedule.split_phases(epochs * (len(data.x_train) // 32), 1, 1)[0]
        strength[epochs] = r.info["strength"] * steps
    assert strength[5] == pytest.approx(strength[20])       # the same total pull
    assert strength[5] == pytest.approx(l1.STRENGTH * 9 * l1.REFERENCE_STEPS)
    assert l0.gate_lr(10) > l0.gate_lr(100) > l0.gate_lr(1000) == l0.GATE_LR_RANGE[0]


def test_project_exact_zeroes_the_smallest_surplus_and_reports_a_shortfall():
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.arange(1, 21, dtype=torch.float32).reshape(5, 4))
        model[2].weight.copy_(torch.arange(1, 11, dtype=torch.float32).reshape(2, 5) * 0.5)
    out = project_exact(model, Targets(0.5))                   # 30 weights: 15 zeros
    assert out == {"projected": 15, "short": 0, "requested": 15}
    assert _zeros(model) == 15
    assert float(model[2].weight.detach().abs().min()) == 0 and float(model[0].weight.detach()[4, 3]) == 20
    assert project_exact(model, Targets(0.2)) == {"projected": 0, "short": 9, "requested": 6}
