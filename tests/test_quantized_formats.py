"""Quantized models keep their training: QONNX (``Quant``) and ONNX QDQ graphs build with
their own scales, and the reference (and the RTL) compute the graph's own fake-quant integers
exactly; what cannot be represented is refused naming the node, and ``--requantize`` falls
back to calibration."""

import dataclasses
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from compiler import reference
from compiler.build import BuildConfig, build, compile_model
from compiler.datasets import digits_split
from compiler.frontend import load_module, to_ir
from compiler.passes.imported import agreement, quantize_imported
from compiler.passes.quantize import QuantizationError
from compiler.simulate import run_rtl
from hw.images import geometry, value_bits
from hw.options import HardwareOptions
from hw.verilog import generate_verilog

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SHIPPED = ["digits_mlp_w4.qonnx.onnx", "digits_mlp_w4_qdq.onnx", "digits_mlp_w8.qonnx.onnx",
           "digits_mlp_w8_qdq.onnx"]


def _qat():
    spec = importlib.util.spec_from_file_location("train_qat_digits",
                                                  EXAMPLES / "train_qat_digits.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def data():
    return digits_split()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, data):
    """A tiny 4-bit-weight model trained here (64-16-10, 90 % sparse, a few epochs), exported
    both ways."""
    qat = _qat()
    torch.set_num_threads(1)
    model = qat.train_qat(4, sparsity=0.9, epochs=6, sizes=(64, 16, 10),
                          data=(data[0], data[2]))
    folder = tmp_path_factory.mktemp("tiny")
    qat.export_qonnx(model, folder / "tiny.qonnx.onnx")
    qat.export_qdq(model, folder / "tiny_qdq.onnx")
    return model, folder


def _model_integers(module, x, out_scale):
    """The graph's own outputs (fake-quant floats, run by onnx.reference) as integers."""
    with torch.no_grad():
        y = module(torch.from_numpy(x)).double().numpy()
    ints = np.rint(y / out_scale)
    assert np.array_equal(ints * out_scale, y)      # the graph's outputs are on its grid
    return ints.astype(np.int64)


def _compiled(path, calibration, pes=8):
    module = load_module(path)
    model = to_ir(module, Path(path).stem)
    quantized, notes = quantize_imported(model, module.quantization, calibration)
    program = compile_model(model, calibration, pes, quantization=module.quantization)
    return module, quantized, notes, program


@pytest.mark.parametrize("name", SHIPPED)
def test_the_shipped_qat_models_compute_their_own_integers_exactly(name, data):
    x_train, x_test, _, y_test = data
    module, quantized, notes, program = _compiled(EXAMPLES / name, x_train)
    assert notes == []                  # power-of-two scales, int32 biases: nothing approximated
    assert all(layer.quant.half_even for layer in program.layers)
    want = _model_integers(module, x_test, quantized.output_scale)
    got = reference.run(program, reference.quantize_input(x_test, program.model.input_scale))
    assert np.array_equal(got.outputs, want)
    assert np.array_equal(reference.run_dense(quantized, got.activations[0]), want)
    bits = 4 if "_w4" in name else 8
    assert value_bits(program) <= bits
    assert all(np.abs(layer.quant.weight).max() <= 2 ** (bits - 1) - 1
               for layer in program.layers)
    assert sum(layer.nnz for layer in program.layers) <= 0.1 * sum(
        layer.weight.size for layer in program.layers)
    assert (got.outputs.argmax(1) == y_test).mean() > 0.9


def test_ties_round_to_even_as_quantize_linear_does(data):
    """Power-of-two scales put many values exactly on a tie: our calibration's rounding (ties
    up) would differ from the model; the imported layers round them to even."""
    x_train, x_test, _, _ = data
    module = load_module(EXAMPLES / "digits_mlp_w4_qdq.onnx")
    quantized, _ = quantize_imported(to_ir(module, "m"), module.quantization, x_train)
    assert agreement(module, quantized, x_test)["equal_outputs"] == 1.0
    ties_up = dataclasses.replace(quantized, layers=tuple(
        dataclasses.replace(layer, quant=dataclasses.replace(layer.quant, half_even=False))
        for layer in quantized.layers))
    assert agreement(module, ties_up, x_test)["equal_outputs"] < 1.0


def test_a_model_trained_here_matches_its_fake_quant_outputs_through_the_rtl(tiny, data,
                                                                             tmp_path):
    """QAT in torch (4-bit weights) -> QONNX and QDQ: the torch fake-quant outputs, the
    graphs' (onnx.reference) and the reference's integers are one and the same; the RTL on
    Icarus equals the reference."""
    model, folder = tiny
    x_train, x_test, _, _ = data
    with torch.no_grad():
        fake_quant = model(torch.from_numpy(x_test)).double().numpy()
    scale = model.quants[-1].scale
    want = np.rint(fake_quant / scale).astype(np.int64)
    programs = []
    for name in ("tiny.qonnx.onnx", "tiny_qdq.onnx"):
        module, quantized, notes, program = _compiled(folder / name, x_train, pes=4)
        assert notes == [] and quantized.output_scale == scale
        assert np.array_equal(_model_integers(module, x_test, scale), want)
        xq = reference.quantize_input(x_test, program.model.input_scale)
        assert np.array_equal(reference.run(program, xq).outputs, want)
        programs.append(program)
    program = programs[0]
    assert geometry(program).value_bits <= 4
    verilog = generate_verilog(program, tmp_path / "top.v", HardwareOptions())
    x = reference.quantize_input(x_test[:6], program.model.input_scale)
    expected = reference.run(program, x).outputs
    hw, _, _ = run_rtl(verilog, x, expected, lanes=program.grid.cols, simulator="icarus",
                       work_dir=tmp_path / "icarus")
    assert np.array_equal(hw, expected) and np.array_equal(hw, want[:6])


def _edited(src, dst, edit):
    proto = onnx.load(str(src))
    edit(proto)
    onnx.save(proto, str(dst))
    return dst


def _set_initializer(proto, name, value):
    for i, t in enumerate(proto.graph.initializer):
        if t.name == name:
            array = numpy_helper.to_array(t)
            proto.graph.initializer[i].CopyFrom(numpy_helper.from_array(
                np.full_like(array, value) if np.isscalar(value) else value, name))
            return
    raise KeyError(name)


def _refusal(path, data) -> str:
    module = load_module(path)
    with pytest.raises(QuantizationError) as e:
        quantize_imported(to_ir(module, Path(path).stem), module.quantization, data[0])
    message = str(e.value)
    assert "--requantize" in message and "\n" not in message
    return message


def test_what_the_array_cannot_represent_is_refused_naming_the_node(tiny, data, tmp_path):
    _, folder = tiny
    qdq, qonnx = folder / "tiny_qdq.onnx", folder / "tiny.qonnx.onnx"
    # a weight zero point other than 0
    bad = _edited(qdq, tmp_path / "zp.onnx",
                  lambda p: _set_initializer(p, "fc0.weight_zero", 1))
    message = _refusal(bad, data)
    assert "DequantizeLinear_w0" in message and "zero point 1" in message
    # 16-bit weights (QONNX: the bit width is an input)
    bad = _edited(qonnx, tmp_path / "w16.onnx", lambda p: _set_initializer(p, "q1_bits", 16.0))
    message = _refusal(bad, data)
    assert "Quant_1" in message and "16 bits" in message
    # unsigned 8-bit activations after a ReLU (Brevitas' QuantReLU default): 0..255
    relu_quant = next(n.name for n in onnx.load(str(qonnx)).graph.node
                      if n.op_type == "Quant" and any(i.startswith("relu") for i in n.input))
    index = relu_quant.split("_")[1]
    bad = _edited(qonnx, tmp_path / "u8.onnx",
                  lambda p: _set_initializer(p, f"q{index}_bits", 8.0))
    message = _refusal(bad, data)
    assert relu_quant in message and "[0, 255]" in message and "[0, 127]" in message
    # an activation zero point
    bad = _edited(qdq, tmp_path / "azp.onnx", lambda p: _set_initializer(p, "a0_zero", 3))
    assert "zero point 3" in _refusal(bad, data)


def test_requantize_builds_with_calibration_and_the_cli_names_it(tiny, data, tmp_path):
    _, folder = tiny
    bad = _edited(folder / "tiny_qdq.onnx", tmp_path / "zp.onnx",
                  lambda p: _set_initializer(p, "fc0.weight_zero", 1))
    result = subprocess.run([sys.executable, "-m", "compiler", "build", str(bad), "--board",
                             "arty_a7", "--no-bitstream", "--pes", "4", "--out",
                             str(tmp_path / "refused")], capture_output=True, text=True,
                            timeout=600, cwd=ROOT)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--requantize" in lines[0]
    config = BuildConfig(model=str(bad), board="arty_a7", pes=4, bitstream=False,
                         requantize=True, out=str(tmp_path / "requantized"))
    out = build(config)
    assert out.report["quantization"]["source"].startswith("calibration")
    assert not any(layer.quant.half_even for layer in out.program.layers)
    # the model's own scales, through build: exact, and said so in the report
    config = dataclasses.replace(config, model=str(folder / "tiny_qdq.onnx"), requantize=False,
                                 out=str(tmp_path / "own"))
    report = build(config).report
    assert report["quantization"]["source"] == "model"
    assert report["quantization"]["agreement"]["equal_outputs"] == 1.0


def test_scales_that_are_not_powers_of_two_agree_within_one_step(data, tmp_path):
    """Exact equality is impossible by construction here: ``in_scale * weight_scale /
    out_scale`` is no 15-bit fixed-point number (and the channels share one shift), so an
    output whose exact value lies within the multiplier's error of a rounding edge can round
    the other way (and the graph itself computes in float32). Build says so; the outputs stay
    within one step, and almost all are equal."""
    def rescale(proto):           # the first hidden activation's scale, and fc1's bias scale
        for i, t in enumerate(proto.graph.initializer):
            if t.name in ("a6_scale", "fc1.bias_scale"):
                proto.graph.initializer[i].CopyFrom(numpy_helper.from_array(
                    (numpy_helper.to_array(t) * np.float32(1.1)).astype(np.float32), t.name))

    path = _edited(EXAMPLES / "digits_mlp_w4_qdq.onnx", tmp_path / "scaled.onnx", rescale)
    module = load_module(path)
    quantized, notes = quantize_imported(to_ir(module, "m"), module.quantization, data[0])
    assert len(notes) == 2 and all("not a 15-bit fixed-point number" in n for n in notes)
    agree = agreement(module, quantized, data[1])
    assert agree["max_difference"] == 1 and agree["equal_outputs"] > 0.97
