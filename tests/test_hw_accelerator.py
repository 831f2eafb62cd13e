# amaranth: UnusedElaboratable=no
"""The whole array in Amaranth's simulator, bit-exact against the reference model: grids,
styles, banks, back-pressure, zero skipping, uploaded weights."""

import numpy as np
import pytest
from amaranth.sim import Simulator
from models import assert_accelerator_exact, calibration, float_model

from compiler import reference
from compiler.build import compile_model
from core.ir import SparseProgram
from hw.images import entry_bytes, geometry, weight_image
from hw.options import HardwareOptions
from hw.simulation import input_beats, run_accelerator, stream_get, stream_put, upload_weights
from hw.top import SparseAccelerator


@pytest.mark.parametrize("memory, pipeline, banks, accumulators, pointers", [
    ("block", "short", 2, "distributed", "csc"),
    ("block", "deep", 1, "block", "counted"),              # the iCE40 default
    ("distributed", "short", 1, "distributed", "csc"),
    ("distributed", "deep", 2, "block", "counted")])
@pytest.mark.parametrize("pes, grid, shapes, sparsity", [
    (1, None, [10, 7, 4], 0.5),
    (3, None, [12, 9, 8, 5], 0.7),
    (4, "2x2", [6, 11, 3], 0.0),
    (6, "3x2", [13, 10, 7], 0.6),
])
def test_accelerator_in_amaranth_simulation(pes, grid, shapes, sparsity, memory, pipeline,
                                            banks, accumulators, pointers):
    model = float_model(shapes, sparsity=sparsity, seed=pes, zero_rows=[(0, 1)],
                        zero_cols=[(0, 2)])
    program = compile_model(model, calibration(shapes[0]), pes, grid=grid)
    x = reference.quantize_input(calibration(shapes[0], n=4, seed=8), program.model.input_scale)
    x = np.vstack([x, np.zeros(shapes[0], dtype=np.int64)])      # a layer input of all zeros
    options = HardwareOptions(memory=memory, pipeline=pipeline, banks=banks,
                              accumulators=accumulators, pointers=pointers)
    assert_accelerator_exact(program, x, options, ready_probability=0.5, valid_probability=0.7)


def test_one_inference_at_a_time_gives_the_same_outputs():
    model = float_model([15, 12, 6], sparsity=0.5, seed=4)
    program = compile_model(model, calibration(15), 4)
    x = reference.quantize_input(calibration(15, n=5, seed=3), program.model.input_scale)
    streamed, _, intervals = run_accelerator(program, x)
    alone, latency, alone_intervals = run_accelerator(program, x, stream=False)
    assert np.array_equal(streamed, alone)
    assert np.array_equal(alone, reference.run(program, x).outputs)
    # streamed inferences overlap: the whole run is shorter than the same ones one by one
    assert intervals.sum() < alone_intervals.sum()
    assert (latency > 0).all()


def test_zero_activations_and_zero_weights_cost_no_cycles():
    model = float_model([16, 16, 4], sparsity=0.0, seed=1)
    program = compile_model(model, calibration(16), 2)
    x = np.zeros((2, 16), dtype=np.int64)
    x[1, :8] = 50                                             # half the inputs nonzero
    hw, cycles, _ = run_accelerator(program, x, stream=False)
    assert np.array_equal(hw, reference.run(program, x).outputs)
    dense = compile_model(model, calibration(16), 2, dense=True)
    hw_dense, cycles_dense, _ = run_accelerator(dense, x, stream=False)
    assert np.array_equal(hw_dense, hw)
    # all-zero input: only the bias-driven layers 1.. cost work; half-dense: less than dense
    assert cycles[0] < cycles[1] < cycles_dense[1]
    assert cycles_dense[0] == cycles_dense[1]                 # dense mode skips nothing


def test_accelerator_rejects_bad_arguments():
    with pytest.raises(TypeError, match="SparseProgram"):
        SparseAccelerator("not a program")
    model = float_model([4, 3], sparsity=0.0)
    program = compile_model(model, calibration(4), 1)
    assert isinstance(program, SparseProgram)
    with pytest.raises(ValueError, match="fifo_depth"):
        HardwareOptions(fifo_depth=2)
    with pytest.raises(ValueError, match="banks"):
        HardwareOptions(banks=5)
    with pytest.raises(ValueError, match="memory"):
        HardwareOptions(memory="registers")
    with pytest.raises(TypeError, match="options"):
        SparseAccelerator(program, {"fifo_depth": 4})
    program9 = compile_model(float_model([20, 30, 5], sparsity=0.5), calibration(20), 9,
                             grid="9x1")
    with pytest.raises(ValueError, match="too shallow"):
        SparseAccelerator(program9, HardwareOptions(fifo_depth=8))


@pytest.mark.parametrize("memory, pipeline, pes, index_bits, chunk", [
    ("block", "deep", 1, None, None), ("block", "short", 3, None, None),
    ("distributed", "short", 2, None, None),
    ("block", "deep", 2, 12, None),           # 20-bit entries: three bytes each
    # weight memories deeper than one SPRAM come in chunks (here 8 words, not 16384)
    ("block", "deep", 1, None, 8), ("block", "short", 4, None, 4),
    ("distributed", "short", 1, None, 8),
])
def test_uploaded_weights_compute_what_the_bitstream_weights_do(memory, pipeline, pes,
                                                                index_bits, chunk,
                                                                monkeypatch):
    import hw.walker

    if chunk:
        monkeypatch.setattr(hw.walker, "SPRAM_DEPTH", chunk)
    shapes = [12, 9, 5]
    model = float_model(shapes, sparsity=0.6, seed=3)
    program = compile_model(model, calibration(shapes[0]), pes, index_bits=index_bits)
    options = HardwareOptions(memory=memory, pipeline=pipeline, weights="uploaded")
    geo = geometry(program, options)
    image = weight_image(program, geo)
    assert len(image) == sum(geo.entry_depth) * entry_bytes(geo)
    x = reference.quantize_input(calibration(shapes[0], n=3, seed=4), program.model.input_scale)
    expected = reference.run(program, x).outputs
    hw, _, _ = run_accelerator(program, x, options, valid_probability=0.6)
    assert np.array_equal(hw, expected)
    if chunk:
        assert max(geo.entry_depth) > 2 * chunk           # three chunks or more
    # the memories hold what was uploaded, not an initial image: other bytes, other outputs
    wrong = bytes((b + 37) % 256 for b in image)
    hw_wrong, _, _ = run_accelerator(program, x, options, image=wrong)
    assert not np.array_equal(hw_wrong, expected)


def test_a_new_upload_restarts_at_the_first_byte():
    shapes = [10, 8, 4]
    program = compile_model(float_model(shapes, sparsity=0.5, seed=5), calibration(10), 2)
    options = HardwareOptions(pipeline="deep", weights="uploaded")
    dut = SparseAccelerator(program, options)
    image = weight_image(program)
    x = reference.quantize_input(calibration(10, n=2, seed=6), program.model.input_scale)
    outputs = []

    async def bench(ctx):
        await upload_weights(ctx, dut, bytes(len(image) // 2))    # half an image of zeros
        await upload_weights(ctx, dut, image + b"\x55" * 9)         # then all of it, and more
        for row in x:
            await stream_put(ctx, dut.input, input_beats(row, dut.geo.cols))
            outputs.append(await stream_get(ctx, dut.output, 4))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert np.array_equal(np.array(outputs), reference.run(program, x).outputs)
