"""Loading model files safely and turning them into the float IR."""

import os

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.utils.prune as prune
from models import torch_mlp

from core.errors import FrontendError
from compiler.frontend import load_model
from compiler.passes.quantize import float_forward


def _save(module, tmp_path, name="m.pt"):
    path = tmp_path / name
    torch.save(module, path)
    return path


def _same_function(module, model, features):
    x = torch.randn(16, features)
    with torch.no_grad():
        want = module.eval()(x).numpy()
    got = float_forward(model, x.numpy())[-1]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)   # float meets float


def test_sequential_with_noops_and_nesting(tmp_path):
    module = nn.Sequential(nn.Flatten(), nn.Sequential(nn.Linear(6, 5), nn.ReLU()),
                           nn.Dropout(0.3), nn.Identity(), nn.Linear(5, 3))
    model = load_model(_save(module, tmp_path))
    assert [(layer.in_features, layer.out_features, layer.relu) for layer in model.layers] \
        == [(6, 5, True), (5, 3, False)]
    _same_function(module, model, 6)


def test_batchnorm_folds_into_the_linear_before_and_after(tmp_path):
    torch.manual_seed(0)
    module = nn.Sequential(nn.BatchNorm1d(6), nn.Linear(6, 5), nn.BatchNorm1d(5), nn.ReLU(),
                           nn.Linear(5, 4))
    for bn in (module[0], module[2]):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.5, 0.5)
    model = load_model(_save(module.eval(), tmp_path))
    assert len(model.layers) == 2 and model.layers[0].relu
    _same_function(module, model, 6)


def test_prune_masks_that_were_never_removed_are_folded(tmp_path):
    module = torch_mlp([8, 6, 3], sparsity=0.0)
    prune.l1_unstructured(module[0], "weight", amount=0.5)
    prune.random_unstructured(module[2], "weight", amount=0.25)
    model = load_model(_save(module, tmp_path))
    assert model.layers[0].nnz == 24 and model.layers[1].nnz == 18 - 4
    _same_function(module, model, 8)


def test_torchscript_files_load_without_pickle(tmp_path):
    module = torch_mlp([7, 5, 2])
    path = tmp_path / "m.ts"
    torch.jit.save(torch.jit.script(module), path)
    model = load_model(path)
    assert [layer.out_features for layer in model.layers] == [5, 2]
    _same_function(module, model, 7)


class CustomMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 3)
        self.b = nn.Linear(3, 2)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_a_custom_class_is_refused_without_trust_and_traced_with_it(tmp_path):
    path = _save(CustomMLP(), tmp_path)
    with pytest.raises(FrontendError, match="--trust-pickle"):
        load_model(path)
    model = load_model(path, trust_pickle=True)
    assert [layer.relu for layer in model.layers] == [True, False]


class Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned_by_pickle",))


def test_a_malicious_pickle_runs_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    torch.save({"model": Evil()}, path)
    with pytest.raises(FrontendError, match="refused"):
        load_model(path)
    assert not (tmp_path / "pwned_by_pickle").exists()


class Branching(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)

    def forward(self, x):
        return self.a(x) + self.b(x)


def test_a_forward_that_is_not_its_layers_in_order_is_caught(tmp_path):
    with pytest.raises(FrontendError, match="not a plain chain|branches"):
        load_model(_save(Branching(), tmp_path), trust_pickle=True)


@pytest.mark.parametrize("module, match", [
    (nn.Sequential(nn.Linear(4, 3), nn.Tanh()), r"unsupported layer '1' \(Tanh\); supported:"),
    (nn.Sequential(nn.ReLU(), nn.Linear(4, 3)), "does not follow a Linear"),
    (nn.Sequential(nn.Dropout()), "no Linear or Conv2d layer"),
])
def test_unsupported_structures_name_the_layer(tmp_path, module, match):
    with pytest.raises(FrontendError, match=match):
        load_model(_save(module, tmp_path))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_weights_are_refused(tmp_path, bad):
    module = torch_mlp([4, 3, 2])
    with torch.no_grad():
        module[0].weight[1, 2] = bad
    with pytest.raises(FrontendError, match=r"layer '0' \(Linear\) has NaN or Inf"):
        load_model(_save(module, tmp_path))


def test_file_errors(tmp_path):
    with pytest.raises(FrontendError, match="no such file"):
        load_model(tmp_path / "missing.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(FrontendError, match="empty file"):
        load_model(tmp_path / "empty.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(FrontendError, match="not a model file"):
        load_model(tmp_path / "text.pt")
    good = _save(torch_mlp([4, 3]), tmp_path).read_bytes()
    (tmp_path / "cut.pt").write_bytes(good[: len(good) // 2])
    with pytest.raises(FrontendError, match="corrupt"):
        load_model(tmp_path / "cut.pt")
    torch.save(torch_mlp([4, 3]).state_dict(), tmp_path / "sd.pt")
    with pytest.raises(FrontendError, match="state_dict"):
        load_model(tmp_path / "sd.pt")
