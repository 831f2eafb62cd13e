"""The generated Verilog in cocotb, on Icarus and on Verilator, bit-exact against the reference
model: several shapes, sparsities, PE counts and adversarial inputs. Each case builds in its own
folder."""

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn as nn
from models import calibration, float_model, images, sparsify_

from compiler import reference
from compiler.build import compile_model
from compiler.frontend import to_ir
from compiler.simulate import run_rtl
from hw.images import weight_image
from hw.options import HardwareOptions
from hw.verilog import generate_verilog

pytestmark = pytest.mark.slow

CASES = {
    # name: (shapes, sparsity, pes, extra float_model arguments, compile arguments)
    "mlp-90pct-p8": ([64, 32, 10], 0.9, 8, {}, {"memory": "distributed"}),
    "grid-3x3-p9": ([30, 27, 12, 5], 0.6, 9, {}, {}),
    "odd-p7": ([21, 16, 9], 0.5, 7, {}, {}),
    "one-bank-p4": ([18, 14, 6], 0.5, 4, {}, {"banks": 1}),
    "dense-0pct-p3": ([12, 10, 6], 0.0, 3, {}, {}),
    "sparse-99pct-p8": ([40, 30, 8], 0.99, 8, {}, {}),
    "zero-rows-cols-p3": ([16, 12, 8, 4], 0.5, 3,
                          {"zero_rows": [(0, 0), (0, 5), (1, 3), (2, 1)],
                           "zero_cols": [(0, 7), (1, 2), (2, 0)]}, {}),
    "single-pe": ([20, 15, 5], 0.6, 1, {}, {"memory": "distributed"}),
    "padding-1bit-p2": ([10, 24, 6], 0.7, 2, {}, {"index_bits": 1}),
    "linear-hidden-p4": ([14, 9, 7, 3], 0.4, 4, {"relu_hidden": False},
                         {"memory": "distributed"}),
    "shallow-fifos-p4": ([24, 20, 12], 0.3, 4, {}, {"fifo_depth": 8}),
    # the iCE40 style: block RAM, prefetch queues, registered control (hw/options.py)
    "deep-pipeline-p1": ([32, 24, 10], 0.8, 1, {}, {"pipeline": "deep"}),
    "deep-pipeline-p3": ([20, 16, 12, 5], 0.5, 3, {}, {"pipeline": "deep"}),
    # the whole iCE40 default: block-RAM accumulators (drains in the op stream), counted
    # pointers (one read port), the deep pipeline
    "ice40-style-p4": ([28, 20, 12, 6], 0.6, 4, {},
                       {"pipeline": "deep", "accumulators": "block", "pointers": "counted"}),
    # weights uploaded over the weights stream first (iCE40 SPRAM), three-byte entries
    "uploaded-weights-p2": ([24, 16, 6], 0.6, 2, {},
                            {"pipeline": "deep", "weights": "uploaded", "index_bits": 12}),
}


def adversarial_inputs(features, n_random, seed):
    """All +max, all -max, alternating, all zero, one-hot, then random int8 vectors."""
    rng = np.random.default_rng(seed)
    alternating = np.where(np.arange(features) % 2 == 0, 127, -128)
    one_hot = np.zeros(features, dtype=np.int64)
    one_hot[features // 2] = 127
    fixed = [np.full(features, 127), np.full(features, -128), alternating, -alternating - 1,
             np.zeros(features), one_hot]
    random = rng.integers(-128, 128, (n_random, features))
    random[rng.random(random.shape) < 0.5] = 0
    return np.vstack(fixed + [random]).astype(np.int64)


# Every case runs on Icarus; these on Verilator too (P = 1, 3, 8, 9, the iCE40 style, SPRAM
# weights), whose C++ build is most of a case's time
VERILATOR_CASES = ("mlp-90pct-p8", "grid-3x3-p9", "dense-0pct-p3", "single-pe",
                   "deep-pipeline-p3", "ice40-style-p4", "uploaded-weights-p2")


def _runs(cases, on_verilator):
    assert set(on_verilator) <= set(cases), set(on_verilator) - set(cases)
    return [(case, "icarus") for case in cases] + [(case, "verilator") for case in cases
                                                   if case in on_verilator]


@pytest.mark.parametrize("case, simulator", _runs(CASES, VERILATOR_CASES))
def test_rtl_is_bit_exact(case, simulator, tmp_path):
    shapes, sparsity, pes, model_args, compile_args = CASES[case]
    model_args, compile_args = dict(model_args), dict(compile_args)
    relu_hidden = model_args.pop("relu_hidden", True)
    model = float_model(shapes, sparsity=sparsity, seed=len(case), **model_args)
    if not relu_hidden:
        model = dataclasses.replace(model, layers=tuple(
            dataclasses.replace(layer, relu=False) for layer in model.layers))
    options = HardwareOptions(fifo_depth=compile_args.pop("fifo_depth", 16),
                              banks=compile_args.pop("banks", 2),
                              memory=compile_args.pop("memory", "block"),
                              pipeline=compile_args.pop("pipeline", "short"),
                              weights=compile_args.pop("weights", "bitstream"),
                              accumulators=compile_args.pop("accumulators", "distributed"),
                              pointers=compile_args.pop("pointers", "csc"))
    program = compile_model(model, calibration(shapes[0], seed=3), pes, **compile_args)
    verilog = generate_verilog(program, tmp_path / "top.v", options)
    x = adversarial_inputs(shapes[0], 6, seed=len(case))
    expected = reference.run(program, x)
    image = weight_image(program) if options.weights == "uploaded" else None
    hw, cycles, _ = run_rtl(verilog, x, expected.outputs, lanes=program.grid.cols,
                            simulator=simulator, work_dir=tmp_path / simulator, image=image)
    assert np.array_equal(hw, expected.outputs)
    assert (cycles >= expected.ideal_cycles).all()
    # the adversarial vectors must drive some layer into saturation
    assert any(((a == 127) | (a == -128)).any() for a in expected.activations[1:])


# Convolutions: kernels 1/3/5, strides 1/2, padding 0/1, 1..16 channels, max and average pools.
CONV_CASES = {
    "k1-s1-p0-c3to8-max-p3": (lambda: nn.Sequential(
        nn.Conv2d(3, 8, 1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(72, 6)),
        (3, 6, 6), 0.5, 3, "block"),
    "k3-s2-p1-c1to16-then-k5-p8": (lambda: nn.Sequential(
        nn.Conv2d(1, 16, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(16, 4, 5),
        nn.Flatten(), nn.Linear(4, 3)), (1, 9, 9), 0.8, 8, "distributed"),
    "k5-s1-p1-c2to4-avg-relu-p4": (lambda: nn.Sequential(
        nn.Conv2d(2, 4, 5, padding=1), nn.AvgPool2d(2), nn.ReLU(), nn.Flatten(),
        nn.Linear(36, 5)), (2, 8, 8), 0.3, 4, "block"),
    "k3-s1-p1-c16to16-max-p2": (lambda: nn.Sequential(
        nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)), (16, 4, 4), 0.9, 2,
        "distributed"),
}


@pytest.mark.parametrize("case, simulator", _runs(CONV_CASES, ("k3-s2-p1-c1to16-then-k5-p8",
                                                                "k5-s1-p1-c2to4-avg-relu-p4")))
def test_rtl_convolutions_are_bit_exact(case, simulator, tmp_path):
    make, shape, sparsity, pes, memory = CONV_CASES[case]
    torch.manual_seed(len(case))
    net = sparsify_(make(), sparsity, seed=len(case))
    model = to_ir(net, input_shape=shape)
    cal = images(shape, n=64)
    program = compile_model(model, cal.reshape(len(cal), -1), pes)
    verilog = generate_verilog(program, tmp_path / "top.v", HardwareOptions(memory=memory))
    features = model.in_features
    x = np.vstack([adversarial_inputs(features, 0, seed=1),
                   reference.quantize_input(images(shape, n=4, seed=2).reshape(4, -1),
                                            program.model.input_scale)])
    expected = reference.run(program, x)
    hw, cycles, _ = run_rtl(verilog, x, expected.outputs, lanes=program.grid.cols,
                            simulator=simulator, work_dir=tmp_path / simulator)
    assert np.array_equal(hw, expected.outputs)
    assert (cycles >= expected.ideal_cycles).all()


def test_p64_on_verilator(tmp_path):
    """The largest array the board table targets: 64 PEs on an 8 x 8 grid, through the
    generated Verilog, with every input a PE row may see."""
    model = float_model([96, 80, 40, 10], sparsity=0.85, seed=64)
    program = compile_model(model, calibration(96, seed=3), 64)
    assert str(program.grid) == "8x8"
    verilog = generate_verilog(program, tmp_path / "top.v", HardwareOptions())
    x = adversarial_inputs(96, 10, seed=64)
    expected = reference.run(program, x)
    hw, cycles, intervals = run_rtl(verilog, x, expected.outputs, lanes=8,
                                    simulator="verilator", work_dir=tmp_path / "verilator")
    assert np.array_equal(hw, expected.outputs)
    assert (cycles >= expected.ideal_cycles).all()
