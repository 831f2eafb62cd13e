# amaranth: UnusedElaboratable=no
"""The requantizer in Amaranth's simulator, bit-exact against :func:`compiler.reference.requantize`."""

import numpy as np
import pytest
from amaranth.hdl import unsigned
from amaranth.sim import Simulator

from compiler import reference
from core.arith import MULTIPLIER_BITS
from hw.requant import Requantizer


def _requantize_on(dut, acc, bias, mult, select, relu, *, offer_probability=1.0, rng=None,
                   timing=None):
    """Feed every row through ``dut`` (with random gaps when ``rng`` is given) and return the
    outputs in order. ``timing``: a list that gets (cycle offered, cycle out, tag out) for
    every value (the tag is the value's index, mod the tag's range)."""
    n = len(acc)
    got = []
    offered = []

    async def bench(ctx):
        i = 0
        cycle = 0
        while len(got) < n:
            offer = i < n and (rng is None or rng.random() < offer_probability)
            ctx.set(dut.i.valid, offer)
            if offer:
                ctx.set(dut.i.payload, {"acc": int(acc[i]), "bias": int(bias[i]),
                                        "multiplier": int(mult[i]), "shift": int(select[i]),
                                        "relu": int(relu[i]),
                                        "tag": i % (1 << dut.i.payload.tag.shape().width)})
                offered.append(cycle)
                i += 1
            _, _, valid, payload = await ctx.tick().sample(dut.o.valid, dut.o.payload)
            if valid:
                if timing is not None:
                    timing.append((offered[len(got)], cycle, payload.tag))
                got.append(payload.value)
            cycle += 1
            assert cycle < 20 * n + 100, "the requantizer lost values"

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return got


def _want(acc, bias, mult, shift, relu):
    return np.where(relu == 1, reference.requantize(acc + bias, mult, shift, True),
                    reference.requantize(acc + bias, mult, shift, False))


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
    want = _want(acc, bias, mult, shift, relu)
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


@pytest.mark.parametrize("deep, acc_width, bias_width, shifts, seed", [
    (False, 18, 18, (21, 9, 30), 1),           # a real layer's widths (acc = biased width)
    (True, 18, 18, (21, 9, 30), 2),
    (False, 25, 27, (1, 13, 24, 33, 45), 3),   # the low/high product halves (> 16 bits)
    (True, 25, 27, (1, 13, 24, 33, 45), 4),
    (True, 33, 34, (8, 34, 48, 62), 5),        # the widest sums the compiler allows
    (False, 9, 12, (2, 6, 11), 6),             # narrow: short products
])
def test_requantizer_random_vectors(deep, acc_width, bias_width, shifts, seed):
    """Thousands of random vectors, log-uniform magnitudes so that every shift has results
    inside the int8 range as well as saturated ones; a fixed latency and the tag carried."""
    rng = np.random.default_rng(seed)
    dut = Requantizer(acc_width=acc_width, bias_width=bias_width, shifts=shifts, deep=deep,
                      tag_shape=unsigned(11))
    n = 2500
    lim_acc = 2 ** (acc_width - 1)
    lim_biased = 2 ** (bias_width - 1)
    # the biased value (acc + bias) fits bias_width, as the compiler proves it does
    magnitude = np.floor(2.0 ** rng.uniform(0, bias_width - 1, n)).astype(np.int64)
    biased = np.clip(magnitude * rng.choice([-1, 1], n), -lim_biased, lim_biased - 1)
    biased[:8] = [-lim_biased, lim_biased - 1, 0, -1, 1, -lim_biased + 1, lim_biased - 2, 2]
    lo = np.maximum(-lim_acc, biased - (lim_biased - 1))
    hi = np.minimum(lim_acc - 1, biased + lim_biased)
    acc = rng.integers(lo, hi + 1)
    bias = biased - acc
    assert ((bias >= -lim_biased) & (bias < lim_biased)).all()
    mult = rng.integers(0, 2 ** MULTIPLIER_BITS, n)
    mult[rng.random(n) < 0.03] = 0
    mult[rng.random(n) < 0.03] = 2 ** MULTIPLIER_BITS - 1
    mult[rng.random(n) < 0.03] = 1
    select = rng.integers(0, len(shifts), n)
    relu = rng.integers(0, 2, n)
    shift = np.array(shifts)[select]
    want = _want(acc, bias, mult, shift, relu)
    timing = []
    got = _requantize_on(dut, acc, bias, mult, select, relu, offer_probability=0.8, rng=rng,
                         timing=timing)
    assert np.array_equal(np.array(got), want)
    # every value exactly `latency` cycles after it went in, with its own tag
    assert [out - inp for inp, out, _ in timing] == [dut.latency] * n
    assert [tag for _, _, tag in timing] == [i % 2048 for i in range(n)]
    inside = (want > -128) & (want < 127) & (want != 0)
    assert inside.sum() > n // 25 and {127, 0}.issubset(set(got)), "too few in-range results"


@pytest.mark.parametrize("seed, deep", [(1, False), (2, True), (3, False), (4, True)])
def test_requantizer_on_random_compiled_layers(seed, deep):
    """The widths, shifts, multipliers and biases of seeded random compiled models (odd sizes,
    0..99 % sparsity), fed the accumulators their weights give for random, saturating and
    sparse int8 inputs: thousands of rows, exact against the reference."""
    from models import calibration, float_model

    from compiler.build import compile_model
    from hw.images import geometry
    rng = np.random.default_rng(2000 + seed)
    shapes = [int(rng.integers(1, 60)) for _ in range(int(rng.integers(2, 5)))]
    model = float_model(shapes, sparsity=float(rng.choice([0.0, 0.3, 0.8, 0.99])), seed=seed)
    program = compile_model(model, calibration(shapes[0], seed=seed), int(rng.integers(1, 6)))
    geo = geometry(program)
    dut = Requantizer(acc_width=geo.acc_width, bias_width=geo.bias_width, shifts=geo.shifts,
                      deep=deep)
    acc, bias, mult, select, relu = [], [], [], [], []
    while len(acc) < 3000:
        m = int(rng.integers(len(program.layers)))
        layer = program.layers[m]
        w = layer.quant.weight.reshape(layer.out_features, -1).astype(np.int64)
        x = rng.integers(-128, 128, (8, w.shape[1]))
        x[rng.random(x.shape) < 0.5] = 0
        x[0] = 127 * np.sign(w.sum(axis=0))          # drives some rows to their extreme
        x[1] = -128
        a = (x @ w.T).ravel()
        rows = np.tile(np.arange(layer.out_features), len(x))
        acc += a.tolist()
        bias += layer.quant.bias[rows].tolist()
        mult += layer.quant.multiplier[rows].tolist()
        select += [m] * len(a)
        relu += [int(layer.relu)] * len(a)
    acc, bias, mult, select, relu = map(np.array, (acc, bias, mult, select, relu))
    assert (np.abs(acc) < 2 ** (geo.acc_width - 1)).all()
    shift = np.array(geo.shifts)[select]
    want = _want(acc, bias, mult, shift, relu)
    got = _requantize_on(dut, acc, bias, mult, select, relu, offer_probability=0.85, rng=rng)
    assert np.array_equal(np.array(got), want)
    assert len(set(got)) > 10


@pytest.mark.parametrize("deep", [False, True])
def test_half_even_rounding_matches_the_reference(deep):
    """Layers imported with the model's own quantization round ties to even (QuantizeLinear);
    the others, in the same requantizer, still round ties up. Ties dense (multiplier 1, small
    shifts) and the saturation edges."""
    shifts = (1, 2, 3, 14)
    half_even = (True, True, False, True)
    dut = Requantizer(acc_width=12, bias_width=13, shifts=shifts, deep=deep,
                      half_even=half_even)
    acc, select, relu = (a.ravel() for a in np.meshgrid(
        np.concatenate([np.arange(-300, 300), np.arange(-1030, -1010), np.arange(1010, 1030)]),
        np.arange(len(shifts)), [0, 1]))
    bias = np.zeros_like(acc)
    mult = np.where(select == 3, 2 ** 13, 1)
    want = np.concatenate([reference.requantize(
        np.array([a]), np.array([mm]), np.array([shifts[s]]), bool(r), half_even[s])
        for a, mm, s, r in zip(acc, mult, select, relu)])
    got = _requantize_on(dut, acc, bias, mult, select, relu)
    assert np.array_equal(got, want)
    # the reference's half-even rule is numpy's rint where the value is a tie
    x = np.arange(-64, 64)
    assert np.array_equal(reference.requantize(x, 1, 2, False, True),
                          np.clip(np.rint(x / 4), -128, 127))
