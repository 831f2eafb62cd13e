"""Every pruning method on tiny models: it reaches its target, leaves a plain model that
``build`` loads, and does what it promises (L0 gates, smaller layers, balanced PEs)."""

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from _prune_helpers import blobs, digits_data, digits_mlp, mlp, train
from compiler.build import compile_model
from compiler.frontend import to_ir
from compiler.prune import METHODS, PruneConfig, prune_model
from compiler.prune.data import PruneData
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
