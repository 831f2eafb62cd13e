"""Model formats: torch.export programs (.pt2) and ONNX files load through the same layer
handlers as torch.save/TorchScript files and compile to the same memory images."""

import json
import subprocess
import sys
import textwrap
import warnings
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.nn.utils.prune as prune
from onnx import TensorProto, helper, numpy_helper

from compiler.build import compile_model
from compiler.datasets import DIGITS_IMAGE, digits_split
from compiler.frontend import load_model
from compiler.passes.quantize import float_forward
from core.errors import FrontendError

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = {"digits_mlp": None, "digits_cnn": DIGITS_IMAGE}


def _example(name):
    return torch.load(ROOT / "examples" / f"{name}.pt", weights_only=False).eval()


def _export(module, path, example, **kwargs):
    program = torch.export.export(module, (example,), **kwargs)
    torch.export.save(program, path)
    return path


def _onnx(module, path, example, dynamic=False):
    axes = {"x": {0: "n"}} if dynamic else None   # dynamic: x.view(x.size(0), -1) is Shape...
    with warnings.catch_warnings():          # the TorchScript-based exporter is deprecated
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), str(path), dynamo=False, opset_version=13,
                          input_names=["x"], dynamic_axes=axes)
    return path


def _images(program):
    """Every array the hardware's memories are initialised from."""
    arrays = []
    for pe in program.pe_images:
        arrays += [pe.entry_value, pe.entry_index, pe.ptr]
    for reducer in program.reducers:
        arrays += [reducer.bias, reducer.multiplier, *reducer.rows]
    return arrays


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The bundled examples, each saved as torch.export (as exported and decomposed to core
    ATen) and as ONNX."""
    folder = tmp_path_factory.mktemp("formats")
    files = {}
    for name, shape in EXAMPLES.items():
        module = _example(name)
        example = torch.zeros(1, *(shape or (64,)))
        program = torch.export.export(module, (example,))
        torch.export.save(program, folder / f"{name}.pt2")
        torch.export.save(program.run_decompositions(), folder / f"{name}_core.pt2")
        _onnx(module, folder / f"{name}.onnx", example)
        files[name] = [folder / f"{name}.pt2", folder / f"{name}_core.pt2",
                       folder / f"{name}.onnx"]
    return files


@pytest.mark.parametrize("name", EXAMPLES)
def test_the_examples_compile_to_identical_memory_images_from_every_format(exported, name):
    shape = EXAMPLES[name]
    x = digits_split()[0][:128]
    reference = compile_model(load_model(ROOT / "examples" / f"{name}.pt", input_shape=shape),
                              x, 8)
    want = _images(reference)
    assert sum(a.size for a in want) > 0
    for path in exported[name]:
        program = compile_model(load_model(path, input_shape=shape), x, 8)
        got = _images(program)
        assert len(got) == len(want), path.name
        assert all(a.dtype == b.dtype and np.array_equal(a, b) for a, b in zip(got, want)), \
            path.name
        assert [layer.nnz for layer in program.layers] \
            == [layer.nnz for layer in reference.layers], path.name      # zeros stay zeros


class UserNet(nn.Module):
    """A forward written as users write it: functional calls, view with the batch size."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.norm = nn.BatchNorm1d(64)
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn(self.conv(x))), 2)
        x = self.drop(self.norm(torch.flatten(x, 1)))
        return self.fc(x.view(x.size(0), -1))


def _user_net():
    torch.manual_seed(0)
    net = UserNet()
    for bn in (net.bn, net.norm):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.data.uniform_(0.5, 1.5)
    return net.eval()


@pytest.mark.parametrize("dynamic", [False, True])
def test_a_custom_class_with_functional_forward_and_batchnorm(tmp_path, dynamic):
    net = _user_net()
    prune.l1_unstructured(net.fc, "weight", amount=0.75)      # exported as weight_orig * mask
    shapes = {"x": {0: torch.export.Dim("n")}} if dynamic else None
    path = _export(net, tmp_path / "net.pt2", torch.randn(3, 1, 8, 8), dynamic_shapes=shapes)
    model = load_model(path, input_shape=(1, 8, 8))
    assert [(layer.name, layer.relu, layer.pool is not None) for layer in model.layers] \
        == [("conv", True, True), ("fc", False, False)]
    assert model.layers[1].nnz == 160                 # the prune mask folded in
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        want = net(x).numpy()
    got = float_forward(model, x.reshape(5, -1).numpy())[-1]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    # the same class through ONNX (BatchNormalization at opset 13, Shape -> Reshape if dynamic)
    path = _onnx(net, tmp_path / "net.onnx", torch.randn(2, 1, 8, 8), dynamic)
    onnx_model = load_model(path, input_shape=(1, 8, 8))
    for a, b in zip(onnx_model.layers, model.layers, strict=True):
        np.testing.assert_allclose(a.weight, b.weight, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(a.bias, b.bias, rtol=1e-6, atol=1e-6)


def test_a_user_file_class_exported_builds_with_no_trust_pickle(tmp_path):
    """The class lives in the user's file only; the build cannot import it and need not."""
    user = tmp_path / "user"
    user.mkdir()
    (user / "mynet.py").write_text(textwrap.dedent("""
        import torch
        import torch.nn as nn
        import torch.nn.functional as F

        class MyNet(nn.Module):
            def __init__(self):
                super().__init__()
                self.hidden = nn.Linear(64, 32)
                self.out = nn.Linear(32, 10)

            def forward(self, x):
                x = torch.flatten(x, 1)
                return self.out(F.relu(self.hidden(x)))

        torch.manual_seed(0)
        net = MyNet().eval()
        with torch.no_grad():
            net.hidden.weight[torch.rand(32, 64) < 0.8] = 0.0
        torch.export.save(torch.export.export(net, (torch.zeros(1, 64),)), "mynet.pt2")
    """))
    subprocess.run([sys.executable, "mynet.py"], cwd=user, check=True, timeout=300)
    out = tmp_path / "build"
    result = subprocess.run(
        [sys.executable, "-m", "compiler", "build", str(user / "mynet.pt2"), "--board",
         "arty_a7", "--no-bitstream", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    assert [layer["out_features"] for layer in report["layers"]] == [32, 10]
    assert report["layers"][0]["sparsity"] > 0.7
    assert (out / "sparsemac_top.v").is_file()


class Tanh(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return torch.tanh(self.fc(x))


def test_an_unsupported_operator_names_itself_its_node_and_the_supported_list(tmp_path):
    path = _export(Tanh(), tmp_path / "tanh.pt2", torch.randn(1, 4))
    with pytest.raises(FrontendError, match=r"unsupported operator 'aten.tanh' at node 'tanh' "
                                            r".*supported: .*aten.conv2d.*aten.linear"):
        load_model(path)
    path = _onnx(Tanh(), tmp_path / "tanh.onnx", torch.randn(1, 4))
    with pytest.raises(FrontendError, match=r"unsupported operator 'Tanh' at node '/Tanh'; "
                                            r"supported: .*Conv.*Gemm"):
        load_model(path)


def test_the_cli_prints_an_unsupported_operator_in_one_line(tmp_path):
    path = _export(Tanh(), tmp_path / "tanh.pt2", torch.randn(1, 4))
    result = subprocess.run([sys.executable, "-m", "compiler", "build", str(path), "--board",
                             "arty_a7", "--no-bitstream", "--out", str(tmp_path / "b")],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "unsupported operator 'aten.tanh'" in lines[0], result.stderr
    assert "Traceback" not in result.stderr


class Skip(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)

    def forward(self, x):
        return self.a(x) + x


def test_a_branching_export_is_refused(tmp_path):
    with pytest.raises(FrontendError, match="not a plain chain"):
        load_model(_export(Skip(), tmp_path / "skip.pt2", torch.randn(1, 4)))


def _tensor(name, array):
    return numpy_helper.from_array(np.asarray(array, dtype=np.float32), name)


def test_onnx_matmul_add_batchnorm_reshape_and_noops(tmp_path):
    """A graph as other exporters write it, built with onnx.helper: BatchNormalization over
    features, MatMul + Add, Reshape, Identity and Dropout; initializers keep their zeros."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((6, 5)) * (rng.random((6, 5)) < 0.5)    # MatMul: [in, out]
    b1, w2, b2 = rng.standard_normal(5), rng.standard_normal((3, 5)), rng.standard_normal(3)
    mean, var = rng.standard_normal(6), rng.uniform(0.5, 2, 6)
    gamma, beta = rng.uniform(0.5, 1.5, 6), rng.standard_normal(6)
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["flat"], name="flatten"),
        helper.make_node("BatchNormalization", ["flat", "g", "b", "m", "v"], ["bn"],
                         name="bn", epsilon=1e-3),
        helper.make_node("MatMul", ["bn", "w1"], ["mm"], name="fc1/matmul"),
        helper.make_node("Add", ["b1", "mm"], ["fc1"], name="fc1/add"),
        helper.make_node("Relu", ["fc1"], ["r"], name="relu"),
        helper.make_node("Dropout", ["r"], ["d"], name="drop"),
        helper.make_node("Identity", ["d"], ["i"], name="id"),
        helper.make_node("Gemm", ["i", "w2", "b2"], ["y"], name="fc2", transB=1, beta=0.5),
    ]
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
        [numpy_helper.from_array(np.array([-1, 6], dtype=np.int64), "shape"),
         _tensor("g", gamma), _tensor("b", beta), _tensor("m", mean), _tensor("v", var),
         _tensor("w1", w1), _tensor("b1", b1), _tensor("w2", w2), _tensor("b2", b2)])
    path = tmp_path / "mlp.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    model = load_model(path)
    assert [(layer.name, layer.in_features, layer.out_features, layer.relu)
            for layer in model.layers] == [("fc1/matmul", 6, 5, True), ("fc2", 5, 3, False)]
    x = rng.standard_normal((7, 6)).astype(np.float32)
    scale = gamma / np.sqrt(var + 1e-3)
    hidden = np.maximum(((x - mean) * scale + beta) @ w1 + b1, 0)
    np.testing.assert_allclose(float_forward(model, x)[-1], hidden @ w2.T + 0.5 * b2,
                               rtol=1e-4, atol=1e-4)
    # no BatchNorm before it: the MatMul's zeros are the layer's zeros
    assert np.array_equal(model.layers[1].weight == 0, np.asarray(w2, np.float32) == 0)


def test_onnx_conv_options_the_array_lacks_are_named(tmp_path):
    weight = np.ones((2, 1, 3, 3))
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 0, 0])
    graph = helper.make_graph(
        [node], "c", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 7, 7])],
        [_tensor("w", weight)])
    path = tmp_path / "c.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    with pytest.raises(FrontendError, match=r"layer 'conv' \(Conv\) uses asymmetric pads"):
        load_model(path, input_shape=(1, 8, 8))


def test_bad_pt2_and_onnx_files_give_one_line_errors(tmp_path, exported):
    good = exported["digits_mlp"][0].read_bytes()
    (tmp_path / "cut.pt2").write_bytes(good[: len(good) // 2])
    onnx_bytes = exported["digits_mlp"][2].read_bytes()
    (tmp_path / "cut.onnx").write_bytes(onnx_bytes[: len(onnx_bytes) // 2])
    (tmp_path / "text.onnx").write_text("hello, not a graph")
    (tmp_path / "text.pt2").write_text("hello, not a program")
    for name, match in [("cut.pt2", "corrupt model file .*torch.export.save"),
                        ("cut.onnx", "not a valid ONNX model"),
                        ("text.onnx", "not a valid ONNX model"),
                        ("text.pt2", "not a model file")]:
        with pytest.raises(FrontendError, match=match) as info:
            load_model(tmp_path / name)
        assert "\n" not in str(info.value)


def test_a_pt2_whose_weights_are_pickled_is_refused_before_torch_reads_it(tmp_path, exported):
    """torch.export.load would unpickle a use_pickle weight with weights_only=False."""
    source = exported["digits_mlp"][0]
    path = tmp_path / "pickled.pt2"
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(path, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename.endswith("_weights_config.json"):
                config = json.loads(data)
                next(iter(config["config"].values()))["use_pickle"] = True
                data = json.dumps(config).encode()
            dst.writestr(item, data)
    with pytest.raises(FrontendError, match="refused: .* as a pickle"):
        load_model(path)
