# amaranth: UnusedElaboratable=no
"""hw/adder.py AdderTree in Amaranth's simulator: ``o`` is the exact sum of ``i`` exactly
``latency`` cycles later, a new input set every cycle."""

import numpy as np
import pytest
from amaranth.sim import Simulator

from hw.adder import AdderTree


def _sum_bits(n: int, width: int) -> int:
    """Signed bits that hold every sum of ``n`` signed ``width``-bit values."""
    lo, hi = -n * 2 ** (width - 1), n * (2 ** (width - 1) - 1)
    bits = 1
    while not (-(2 ** (bits - 1)) <= lo and hi <= 2 ** (bits - 1) - 1):
        bits += 1
    return bits


def _vectors(n: int, width: int, count: int, rng) -> np.ndarray:
    """``count`` input sets: random ones with the extremes mixed in (all max, all min,
    alternating, single extremes among zeros)."""
    lo, hi = -(2 ** (width - 1)), 2 ** (width - 1) - 1
    x = rng.integers(lo, hi + 1, (count, n))
    special = [np.full(n, hi), np.full(n, lo), np.zeros(n, dtype=np.int64),
               np.where(np.arange(n) % 2 == 0, hi, lo), np.where(np.arange(n) % 2 == 0, lo, hi),
               np.full(n, -1), np.full(n, min(1, hi))]
    for k in range(n):
        one = np.zeros(n, dtype=np.int64)
        one[k] = lo
        special.append(one)
        one = np.full(n, hi)
        one[k] = lo
        special.append(one)
    # extremes at random places, several times each, some back to back
    for s in special:
        for at in rng.choice(count, 3, replace=False):
            x[at] = s
    x[10:10 + len(special)] = np.array(special)
    # runs of "all max" then "all min": the largest swing between consecutive sums
    x[-8:-4] = hi
    x[-4:] = lo
    return x


def _run(dut, x: np.ndarray) -> list[int]:
    """Drive one input set a cycle; return ``o`` as sampled in each of those cycles and
    ``latency`` cycles more."""
    got = []

    async def bench(ctx):
        for t in range(len(x) + dut.latency):
            if t < len(x):
                ctx.set(dut.i, [int(v) for v in x[t]])
            else:
                ctx.set(dut.i, [0] * dut.n)
            # `o` in cycle t (before this edge's update)
            _, _, o = await ctx.tick().sample(dut.o)
            got.append(o)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return got


def _expected_latency(n: int, levels_per_stage: int) -> int:
    levels = (n - 1).bit_length() if n > 1 else 0
    return max(1, -(-levels // levels_per_stage))


@pytest.mark.parametrize("levels_per_stage", [1, 2, 3])
@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 16])
def test_adder_tree_sums_exactly_latency_cycles_later(n, levels_per_stage):
    width = 8
    out_width = _sum_bits(n, width)
    dut = AdderTree(n, width, out_width, levels_per_stage=levels_per_stage)
    assert dut.latency == _expected_latency(n, levels_per_stage)
    rng = np.random.default_rng(n * 10 + levels_per_stage)
    x = _vectors(n, width, 2000, rng)
    want = x.sum(axis=1)
    got = np.array(_run(dut, x), dtype=np.int64)
    lat = dut.latency
    # the register starts at zero: nothing but 0 before the first sum arrives
    assert np.array_equal(got[:lat], np.zeros(lat, dtype=np.int64))
    assert np.array_equal(got[lat:], want)
    # the extremes reached the output
    assert got.max() == n * 127 and got.min() == -n * 128


@pytest.mark.parametrize("n, width, out_width, levels_per_stage", [
    (16, 1, 6, 1),        # 1-bit signed inputs (-1, 0)
    (5, 3, 6, 2),
    (3, 16, 18, 1),
    (8, 8, 24, 3),        # a wider sum than needed: sign extension
    (2, 8, 9, 1),
    (1, 8, 8, 2),
])
def test_adder_tree_other_widths(n, width, out_width, levels_per_stage):
    dut = AdderTree(n, width, out_width, levels_per_stage=levels_per_stage)
    rng = np.random.default_rng(width * 100 + n)
    x = _vectors(n, width, 1000, rng)
    got = np.array(_run(dut, x), dtype=np.int64)
    lat = dut.latency
    assert lat == _expected_latency(n, levels_per_stage)
    assert np.array_equal(got[lat:], x.sum(axis=1))


def test_adder_tree_checks_its_arguments():
    for bad in ({"n": 0}, {"width": 0}, {"out_width": -1}, {"levels_per_stage": 0},
                {"n": 2.0}):
        kwargs = {"n": 4, "width": 8, "out_width": 10, "levels_per_stage": 2, **bad}
        with pytest.raises(TypeError, match=next(iter(bad))):
            AdderTree(kwargs["n"], kwargs["width"], kwargs["out_width"],
                      levels_per_stage=kwargs["levels_per_stage"])
