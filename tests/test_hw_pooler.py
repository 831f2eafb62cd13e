# amaranth: UnusedElaboratable=no
"""The pooler in Amaranth's simulator: random windows, every mode, exact against
:func:`compiler.reference.pool`."""

from types import SimpleNamespace

import numpy as np
import pytest
from amaranth.hdl import unsigned
from amaranth.sim import Simulator

from compiler import reference
from core.arith import MULTIPLIER_BITS
from hw.pool import POOL_AVG, POOL_MAX, POOL_NONE, Pooler

TAG_BITS = 10


def _layer(kind, window, multiplier, shift, relu_after):
    """The parts of a pooled layer :func:`reference.pool` reads."""
    pool = None if kind is None else SimpleNamespace(kind=kind, relu_after=relu_after)
    return SimpleNamespace(pool=pool, group=window,
                           quant=SimpleNamespace(pool_multiplier=multiplier, pool_shift=shift))


def _expected(segments, shifts):
    """Per segment: the reference's output for each window (or, unpooled, each value)."""
    out = []
    for seg in segments:
        kind = {POOL_NONE: None, POOL_MAX: "max", POOL_AVG: "avg"}[seg["mode"]]
        shift = shifts[seg["shift"]] if shifts else 1
        for window in seg["windows"]:
            layer = _layer(kind, len(window), seg["multiplier"], shift, bool(seg["relu"]))
            out.extend(int(v) for v in reference.pool(layer, np.array([window]))[0])
    return out


def _run(dut, segments, rng, *, gap_probability, pause=8):
    """Offer every window of every segment (random idle cycles between values, within
    windows too); each value carries its segment's pooling; ``pause`` idle cycles between
    segments (0: back to back). Returns ``[(value, tag, cycle offered last, cycle out)]``."""
    got = []
    sent = []                    # (tag, cycle) of each window's last value, or each value

    async def bench(ctx):
        cycle = 0

        async def step(valid):
            nonlocal cycle
            ctx.set(dut.i.valid, valid)
            _, _, o_valid, o_payload = await ctx.tick().sample(dut.o.valid, dut.o.payload)
            if o_valid:
                got.append((o_payload.value, o_payload.tag, cycle))
            cycle += 1

        tag = 0
        for seg in segments:
            settings = {k: seg[k] for k in ("mode", "multiplier", "shift", "relu")}
            for window in seg["windows"]:
                for n, value in enumerate(window):
                    while rng.random() < gap_probability:
                        await step(0)
                    first, last = n == 0, n == len(window) - 1
                    # garbage in the tag of every value but the one that must come out
                    keep = last or seg["mode"] == POOL_NONE
                    t = tag if keep else int(rng.integers(0, 1 << TAG_BITS))
                    ctx.set(dut.i.payload, {"value": int(value), "first": first,
                                            "last": last, "tag": t, **settings})
                    if keep:
                        sent.append((tag, cycle))
                        tag = (tag + 1) % (1 << TAG_BITS)
                    await step(1)
            # garbage on the inputs while nothing is valid
            ctx.set(dut.i.payload, {"value": int(rng.integers(-128, 128)), "first": 1,
                                    "last": 1, "tag": 0, **settings})
            for _ in range(pause):
                await step(0)
        for _ in range(dut.latency + 2):
            await step(0)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return got, sent


def _windows(rng, count, longest, *, spiky=False):
    windows = []
    for _ in range(count):
        size = int(rng.integers(1, longest + 1))
        if rng.random() < 0.15:
            w = np.full(size, rng.choice([-128, 127, 0, -1]))        # flat, extremes
        elif spiky or rng.random() < 0.5:
            w = rng.integers(-128, 128, size)
        else:
            w = rng.integers(-6, 7, size) + int(rng.integers(-120, 121))
            w = np.clip(w, -128, 127)
        windows.append(w)
    return windows


def _check(dut, segments, shifts, rng, *, gap_probability=0.3, pause=8):
    got, sent = _run(dut, segments, rng, gap_probability=gap_probability, pause=pause)
    want = _expected(segments, shifts)
    assert [v for v, _, _ in got] == want
    assert [t for _, t, _ in got] == [t for t, _ in sent]
    # one fixed latency, whatever the mode: every window's result that many cycles after its
    # last value, in order
    assert [out - at for (_, _, out), (_, at) in zip(got, sent)] == [dut.latency] * len(got)
    return want


@pytest.mark.parametrize("deep", [False, True])
def test_pooler_max_avg_and_none_against_the_reference(deep):
    rng = np.random.default_rng(11 if deep else 10)
    window_max = 9
    sum_width = max(9, (128 * window_max).bit_length() + 1)     # as hw.images.geometry does
    shifts = (1, 12, 15, 17, 20)
    dut = Pooler(tag_shape=unsigned(TAG_BITS), sum_width=sum_width, shifts=shifts, deep=deep)
    segments = []
    for k in range(18):
        mode = (POOL_MAX, POOL_AVG, POOL_NONE)[k % 3]
        # an average's multiplier is about 2**shift / window; spread around that, and edges
        select = int(rng.integers(1, len(shifts))) if k % 6 != 1 else 0
        mult = int(rng.integers(0, 2 ** MULTIPLIER_BITS))
        if k % 6 == 4:
            mult = 2 ** MULTIPLIER_BITS - 1
        segments.append({"mode": mode, "multiplier": mult, "shift": select,
                         "relu": int(rng.integers(0, 2)),
                         "windows": _windows(rng, 40 if mode == POOL_NONE else 220, window_max)})
    assert dut.latency == (9 if deep else 4)
    want = _check(dut, segments, shifts, rng)
    assert len(want) > 3000
    # layers of different pooling back to back: still in order, still at one latency
    _check(dut, segments[:6], shifts, rng, gap_probability=0.1, pause=0)
    avg = _expected([s for s in segments if s["mode"] == POOL_AVG], shifts)
    assert len(set(avg)) > 100 and {0, 127}.issubset(avg), "averages must not only saturate"


def test_pooler_max_without_an_averaging_datapath():
    """``shifts=None``: max and pass-through only; windows of one value; values equal to
    the running maximum; the most negative values."""
    rng = np.random.default_rng(3)
    dut = Pooler(tag_shape=unsigned(TAG_BITS), sum_width=9)
    segments = []
    for k in range(10):
        mode = POOL_MAX if k % 2 == 0 else POOL_NONE
        windows = _windows(rng, 300 if mode == POOL_MAX else 60, 4, spiky=True)
        windows += [np.array([-128]), np.array([-128, -128, -127]), np.array([5, 5]),
                    np.array([127, -128]), np.array([-128, 127])]
        segments.append({"mode": mode, "multiplier": 0, "shift": 0, "relu": 0,
                         "windows": windows})
    assert dut.latency == 1
    _check(dut, segments, None, rng, gap_probability=0.2, pause=0)


def test_pooler_averages_of_whole_windows_without_gaps():
    """Back-to-back windows (no idle cycle) of the sizes real layers use (2x2, 3x3, 2x3), the
    multiplier and shift of a true average (round(2**s / window))."""
    rng = np.random.default_rng(5)
    shifts = (14, 16)
    dut = Pooler(tag_shape=unsigned(TAG_BITS), sum_width=12, shifts=shifts)
    segments = []
    for window, select, relu in [(4, 0, 0), (9, 1, 1), (6, 1, 0), (4, 1, 1)]:
        mult = round(2 ** shifts[select] / window)
        segments.append({"mode": POOL_AVG, "multiplier": mult, "shift": select, "relu": relu,
                         "windows": [rng.integers(-128, 128, window) for _ in range(300)]})
    want = _check(dut, segments, shifts, rng, gap_probability=0.0, pause=0)
    assert len(set(want)) > 60


def test_pooler_checks_its_arguments():
    with pytest.raises(ValueError, match="sum_width"):
        Pooler(tag_shape=unsigned(1), sum_width=8)


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_pooler_random_configurations(seed):
    """Seeded random poolers (window up to 16, shifts, the deep pipeline or not) and thousands
    of random windows in random modes, multipliers and ReLUs, with random gaps and pauses:
    exact against the reference, at one latency, tags in order."""
    rng = np.random.default_rng(3000 + seed)
    window_max = int(rng.integers(1, 17))
    sum_width = max(9, (128 * window_max).bit_length() + 1) + int(rng.integers(0, 3))
    shifts = tuple(sorted({int(s) for s in rng.integers(1, 24, int(rng.integers(1, 5)))}))
    dut = Pooler(tag_shape=unsigned(TAG_BITS), sum_width=sum_width, shifts=shifts,
                 deep=bool(rng.integers(0, 2)))
    segments = []
    while sum(len(s["windows"]) for s in segments) < 2500:
        mode = int(rng.choice([POOL_MAX, POOL_AVG, POOL_NONE]))
        select = int(rng.integers(0, len(shifts)))
        window = int(rng.integers(1, window_max + 1))
        # a true average's multiplier, or anything (incl. the extremes)
        mult = round(2 ** shifts[select] / window) if rng.random() < 0.5 else \
            int(rng.choice([0, 1, 2 ** MULTIPLIER_BITS - 1, rng.integers(0, 2 ** MULTIPLIER_BITS)]))
        mult = min(mult, 2 ** MULTIPLIER_BITS - 1)
        segments.append({"mode": mode, "multiplier": mult, "shift": select,
                         "relu": int(rng.integers(0, 2)),
                         "windows": _windows(rng, int(rng.integers(20, 200)), window_max,
                                             spiky=bool(rng.integers(0, 2)))})
    want = _check(dut, segments, shifts, rng, gap_probability=float(rng.uniform(0, 0.4)),
                  pause=int(rng.integers(0, 4)))
    assert len(want) >= 2500 and len(set(want)) > 20
