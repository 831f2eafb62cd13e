# amaranth: UnusedElaboratable=no
"""Gateware components in Amaranth's simulator, bit-exact against the reference model."""

import numpy as np
import pytest
from amaranth.sim import Simulator
from models import calibration, float_model

from compiler import reference
from compiler.build import compile_model
from compiler.ir import SparseProgram
from hw.requant import Requantizer
from hw.simulation import run_accelerator
from hw.options import HardwareOptions
from hw.top import SparseAccelerator


def _requantize_on(dut, acc, bias, mult, select, relu, *, offer_probability=1.0, rng=None):
    """Feed every row through ``dut`` (with random gaps when ``rng`` is given) and return the
    outputs in order."""
    n = len(acc)
    got = []

    async def bench(ctx):
        i = 0
        while len(got) < n:
            offer = i < n and (rng is None or rng.random() < offer_probability)
            ctx.set(dut.i.valid, offer)
            if offer:
                ctx.set(dut.i.payload, {"acc": int(acc[i]), "bias": int(bias[i]),
                                        "multiplier": int(mult[i]), "shift": int(select[i]),
                                        "relu": int(relu[i]), "tag": i & 1})
                i += 1
            _, _, valid, payload = await ctx.tick().sample(dut.o.valid, dut.o.payload)
            if valid:
                got.append(payload.value)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return got


@pytest.mark.parametrize("deep", [False, True])
def test_requantizer_matches_the_reference(deep):
    shifts = (1, 5, 14, 22, 37, 62)
    dut = Requantizer(acc_width=20, bias_width=22, shifts=shifts, deep=deep)
    rng = np.random.default_rng(0)
    n = 400
    acc = rng.integers(-2**19, 2**19, n)
    bias = rng.integers(-2**20, 2**20, n)
    mult = rng.integers(2**14, 2**15, n)
    mult[:20] = 0
    select = rng.integers(0, len(shifts), n)
    relu = rng.integers(0, 2, n)
    # realistic magnitudes too: results inside the int8 range, ties included
    acc[40:200] = rng.integers(-3000, 3000, 160)
    bias[40:200] = rng.integers(-500, 500, 160)
    select[40:200] = 3
    # saturation edges: multiplier 1, shift 1, so the pre-rounding value is acc + bias itself
    edges = np.array([-2**19, -1025, -1024, -513, -512, -511, -259, -258, -257, -256, -255,
                      -3, -2, -1, 0, 1, 253, 254, 255, 256, 257, 510, 511, 512, 513, 1023, 1024,
                      2**19 - 1])
    for k, rl in enumerate((0, 1)):
        at = slice(200 + k * len(edges), 200 + (k + 1) * len(edges))
        acc[at], bias[at], mult[at], select[at], relu[at] = edges, 0, 1, 0, rl
    shift = np.array(shifts)[select]
    want = np.where(relu == 1, reference.requantize(acc + bias, mult, shift, True),
                    reference.requantize(acc + bias, mult, shift, False))
    # gaps between values
    got = _requantize_on(dut, acc, bias, mult, select, relu, offer_probability=0.7, rng=rng)
    assert np.array_equal(got, want)
    assert len(set(got)) > 30, "the test values must exercise more than saturation"


@pytest.mark.parametrize("deep", [False, True])
def test_narrow_requantizer_saturates_like_the_reference(deep):
    """Shifts so large that the shifted product has ten bits or fewer: every acc, bias and
    a spread of multipliers, against the reference."""
    shifts = (12, 15)                     # shifted products of 10 and 7 bits
    dut = Requantizer(acc_width=4, bias_width=5, shifts=shifts, deep=deep)
    assert dut.product_width - (min(shifts) - 1) <= 10
    acc, bias, mult, select, relu = (a.ravel() for a in np.meshgrid(
        np.arange(-8, 8), np.arange(-8, 8), [1, 4095, 20000, 32767], [0, 1], [0, 1]))
    bias = bias * 2
    want = np.array([reference.requantize(np.array([a + b]), np.array([mm]),
                                          np.array([shifts[sel]]), bool(r))[0]
                     for a, b, mm, sel, r in zip(acc, bias, mult, select, relu)])
    got = _requantize_on(dut, acc, bias, mult, select, relu)
    assert np.array_equal(got, want)
    assert {127, -128, 0} <= set(got) and len(set(got)) > 20


def test_requantizer_checks_its_arguments():
    with pytest.raises(TypeError, match="acc_width"):
        Requantizer(acc_width="20", bias_width=22, shifts=(3,))
    with pytest.raises(ValueError, match="bias_width"):
        Requantizer(acc_width=20, bias_width=10, shifts=(3,))
    with pytest.raises(ValueError, match="shifts"):
        Requantizer(acc_width=20, bias_width=22, shifts=(0,))


@pytest.mark.parametrize("memory, pipeline", [("block", "short"), ("block", "deep"),
                                              ("distributed", "short"),
                                              ("distributed", "deep")])
@pytest.mark.parametrize("pes, shapes, sparsity", [
    (1, [10, 7, 4], 0.5),
    (3, [12, 9, 8, 5], 0.7),
    (4, [6, 11, 3], 0.0),
])
def test_accelerator_in_amaranth_simulation(pes, shapes, sparsity, memory, pipeline):
    model = float_model(shapes, sparsity=sparsity, seed=pes, zero_rows=[(0, 1)],
                        zero_cols=[(0, 2)])
    program = compile_model(model, calibration(shapes[0]), pes)
    x = reference.quantize_input(calibration(shapes[0], n=3, seed=8), program.model.input_scale)
    x = np.vstack([x, np.zeros(shapes[0], dtype=np.int64)])      # a layer input of all zeros
    hw, cycles = run_accelerator(program, x, HardwareOptions(memory=memory, pipeline=pipeline),
                                 ready_probability=0.5, valid_probability=0.7)
    assert np.array_equal(hw, reference.run(program, x).outputs)
    assert (cycles > 0).all()


def test_zero_activations_and_zero_weights_cost_no_cycles():
    model = float_model([16, 16, 4], sparsity=0.0, seed=1)
    program = compile_model(model, calibration(16), 2)
    x = np.zeros((2, 16), dtype=np.int64)
    x[1, :8] = 50                                             # half the inputs nonzero
    hw, cycles = run_accelerator(program, x)
    assert np.array_equal(hw, reference.run(program, x).outputs)
    dense = compile_model(model, calibration(16), 2, dense=True)
    hw_dense, cycles_dense = run_accelerator(dense, x)
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
    with pytest.raises(ValueError, match="queue_depth"):
        HardwareOptions(queue_depth=1)
    with pytest.raises(ValueError, match="memory"):
        HardwareOptions(memory="registers")
    with pytest.raises(TypeError, match="options"):
        SparseAccelerator(program, {"queue_depth": 4})


@pytest.mark.parametrize("depth", [3, 4, 16])
def test_prefetch_queue_keeps_order_and_takes_a_write_whenever_level_allows(depth):
    from hw.queue import PrefetchQueue
    dut = PrefetchQueue(width=8, depth=depth)
    rng = np.random.default_rng(depth)
    sent, got = [], []

    async def bench(ctx):
        n = 0
        for _ in range(800):
            # the accelerator writes on credit: whenever fewer than `depth` entries are held
            write = rng.random() < 0.6 and n < 300 and ctx.get(dut.level) < depth
            ctx.set(dut.w_data, n % 256)
            ctx.set(dut.w_en, write)
            if write:
                assert ctx.get(dut.w_rdy), "a write within the level must be taken"
                sent.append(n % 256)
                n += 1
            read = rng.random() < 0.5
            ctx.set(dut.r_en, read)
            if read and ctx.get(dut.r_rdy):
                got.append(ctx.get(dut.r_data))
            assert ctx.get(dut.busy) == (ctx.get(dut.level) != 0)
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert len(got) > 250 and got == sent[:len(got)]


@pytest.mark.parametrize("memory, pipeline, pes, index_bits, chunk", [
    ("block", "deep", 1, None, None), ("block", "short", 3, None, None),
    ("distributed", "short", 2, None, None),
    ("block", "deep", 2, 12, None),           # 20-bit entries: three bytes each
    # weight memories deeper than one SPRAM come in chunks (here 8 words, not 16384)
    ("block", "deep", 1, None, 8), ("block", "short", 2, None, 4),
    ("distributed", "short", 1, None, 8),
])
def test_uploaded_weights_compute_what_the_bitstream_weights_do(memory, pipeline, pes,
                                                                index_bits, chunk,
                                                                monkeypatch):
    import hw.lane
    from hw.images import entry_bytes, geometry, weight_image

    if chunk:
        monkeypatch.setattr(hw.lane, "SPRAM_DEPTH", chunk)

    shapes = [12, 9, 5]
    model = float_model(shapes, sparsity=0.6, seed=3)
    program = compile_model(model, calibration(shapes[0]), pes, index_bits=index_bits)
    options = HardwareOptions(memory=memory, pipeline=pipeline, weights="uploaded")
    geo = geometry(program, options)
    image = weight_image(program, geo)
    assert len(image) == sum(geo.entry_depth) * entry_bytes(geo)
    x = reference.quantize_input(calibration(shapes[0], n=3, seed=4), program.model.input_scale)
    expected = reference.run(program, x).outputs
    hw, _ = run_accelerator(program, x, options, valid_probability=0.6)
    assert np.array_equal(hw, expected)
    if chunk:
        assert max(geo.entry_depth) > 2 * chunk           # three chunks or more
    # the memories hold what was uploaded, not an initial image: other bytes, other outputs
    wrong = bytes((b + 37) % 256 for b in image)
    hw_wrong, _ = run_accelerator(program, x, options, image=wrong)
    assert not np.array_equal(hw_wrong, expected)


def test_a_new_upload_restarts_at_the_first_byte():
    from amaranth.sim import Simulator

    from hw.images import weight_image
    from hw.simulation import stream_get, stream_put, upload_weights

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
            await stream_put(ctx, dut.input, row)
            outputs.append(await stream_get(ctx, dut.output, 4))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert np.array_equal(np.array(outputs), reference.run(program, x).outputs)
