# amaranth: UnusedElaboratable=no
"""MacBanks in Amaranth's simulator: random entries into random banks, end tokens, drains and
releases, against a Python model of the same banks."""

import numpy as np
import pytest
from amaranth.sim import Simulator
from models import calibration, float_model

from compiler.build import compile_model
from hw.accumulator import MacBanks
from hw.images import geometry
from hw.options import HardwareOptions


def _geometry(banks, accumulators="distributed", pes=6, grid="3x2"):
    program = compile_model(float_model([26, 19, 11, 4], sparsity=0.5, seed=2),
                            calibration(26), pes, grid=grid)
    return geometry(program, HardwareOptions(banks=banks, accumulators=accumulators))


#: cycles from an op at the banks' input to ``partial`` (block style: a drain is an op)
_OP_LATENCY = 5


def _fills(geo, col, rng, uses):
    """Per bank use: the entries (as ops) of one layer's fill, then its end tokens, and the
    expected sums. Columns walk down their rows in steps the relative index can hold."""
    fills = []
    for _ in range(uses):
        s = int(rng.integers(geo.slots))
        rows = geo.row_slots[geo.layer_of(s)]
        ops = []
        for _ in range(int(rng.integers(1, 25))):          # columns
            act = int(rng.integers(-128, 128))
            row = int(rng.integers(0, min(rows, 2 ** geo.index_bits)))
            ops.append({"slot": s, "first": 1, "end": 0, "act": act,
                        "weight": int(rng.integers(-127, 128)), "gap": row})
            while True:
                gap = int(rng.integers(0, 2 ** geo.index_bits))
                if row + gap + 1 >= rows:
                    break
                row += gap + 1
                ops.append({"slot": s, "first": 0, "end": 0, "act": act,
                            "weight": int(rng.integers(-127, 128)), "gap": gap})
        ends = geo.expected_ends[col][geo.layer_of(s)]
        ops += [{"slot": s, "first": 0, "end": 1, "act": 0, "weight": 0, "gap": 0}] * ends
        fills.append((s, ops, _sums(ops, rows)))
    return fills


def _sums(ops, rows):
    sums = np.zeros(rows, dtype=np.int64)
    row = -1
    for o in ops:
        if o["end"]:
            continue
        row = o["gap"] if o["first"] else row + o["gap"] + 1
        sums[row] += o["weight"] * o["act"]
    return sums


async def _drain(ctx, dut, slot, rows, beside=None):
    """Drain ``rows`` rows of bank ``slot``, one request a cycle (distributed style: with
    entries ``beside`` fed at the same time; block style: drain ops in the op stream); each
    row's sum comes a fixed latency after its request."""
    block = dut.geo.accumulators == "block"
    latency = _OP_LATENCY if block else MacBanks.drain_latency(dut.geo)
    got = []
    for cycle in range(rows + latency):
        on = cycle < rows
        row = min(cycle, rows - 1)
        if block:
            ctx.set(dut.i.valid, on)
            ctx.set(dut.i.payload, {"slot": slot, "first": 0, "end": 0, "drain": 1,
                                    "row": row, "act": 0, "weight": 0, "gap": 0})
        else:
            ctx.set(dut.drain.valid, on)
            ctx.set(dut.drain.payload, {"slot": slot, "addr": row})
            if beside is not None:
                ctx.set(dut.i.valid, on)
                ctx.set(dut.i.payload, beside[row])
        await ctx.tick()
        if cycle + 1 >= latency and len(got) < rows:
            got.append(ctx.get(dut.partial))
    ctx.set(dut.i.valid, 0)
    if not block:
        ctx.set(dut.drain.valid, 0)
    return got


@pytest.mark.parametrize("banks, accumulators", [(1, "distributed"), (2, "distributed"),
                                                 (1, "block"), (2, "block"), (3, "block")])
def test_banks_accumulate_drain_and_release(banks, accumulators):
    geo = _geometry(banks, accumulators)
    col = 1
    dut = MacBanks(geo, col)
    rng = np.random.default_rng(banks)
    fills = _fills(geo, col, rng, 14)
    checked = []

    async def bench(ctx):
        for s, ops, want in fills:
            assert not (ctx.get(dut.done) >> s) & 1
            for op in ops:
                while rng.random() < 0.3:                      # gaps between entries
                    ctx.set(dut.i.valid, 0)
                    await ctx.tick()
                ctx.set(dut.i.payload, {"drain": 0, "row": 0, **op})
                ctx.set(dut.i.valid, 1)
                await ctx.tick()
            ctx.set(dut.i.valid, 0)
            for _ in range(4):
                await ctx.tick()
            assert (ctx.get(dut.done) >> s) & 1, "every end token arrived: the bank is done"
            got = await _drain(ctx, dut, s, len(want))
            ctx.set(dut.release.valid, 1)
            ctx.set(dut.release.payload, s)
            await ctx.tick()
            ctx.set(dut.release.valid, 0)
            await ctx.tick()
            assert not (ctx.get(dut.done) >> s) & 1
            checked.append((got, want.tolist()))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert len(checked) == len(fills)
    for got, want in checked:
        assert got == want            # and the drain cleared every row: the next use starts at 0


@pytest.mark.parametrize("accumulators", ["distributed", "block"])
def test_entries_into_the_same_row_back_to_back_are_forwarded(accumulators):
    """Every op its own column into one of three rows, one a cycle: the row an op reads was
    written by the op one, two or three ahead, which the pipeline's forwarding must supply."""
    geo = _geometry(1, accumulators)
    dut = MacBanks(geo, 0)
    rng = np.random.default_rng(11)
    ops = [{"slot": 0, "first": 1, "end": 0, "act": int(rng.integers(-128, 128)),
            "weight": int(rng.integers(-127, 128)), "gap": int(rng.integers(3))}
           for _ in range(300)]
    ends = geo.expected_ends[0][0]
    ops += [{"slot": 0, "first": 0, "end": 1, "act": 0, "weight": 0, "gap": 0}] * ends
    want = _sums(ops, geo.row_slots[0])
    got = []

    async def bench(ctx):
        for op in ops:
            ctx.set(dut.i.payload, {"drain": 0, "row": 0, **op})
            ctx.set(dut.i.valid, 1)
            await ctx.tick()
        ctx.set(dut.i.valid, 0)
        for _ in range(6):
            await ctx.tick()
        assert ctx.get(dut.done) & 1
        got.extend(await _drain(ctx, dut, 0, len(want)))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert np.array_equal(got, want)


def test_a_drain_reads_one_bank_while_entries_go_into_another():
    geo = _geometry(2)
    dut = MacBanks(geo, 0)
    rng = np.random.default_rng(7)
    rows0 = geo.row_slots[0]
    # bank 0 (layer 0, first inference) filled and done; then bank 1 accumulates while bank 0
    # drains, one row a cycle beside one entry a cycle
    first = [{"slot": 0, "first": int(r == 0), "end": 0, "act": 3, "weight": int(w), "gap": 0}
             for r, w in enumerate(rng.integers(-100, 100, rows0))]
    second = [{"slot": 1, "first": 1 if r == 0 else 0, "end": 0, "act": -5, "weight": int(w),
               "gap": 0} for r, w in enumerate(rng.integers(-100, 100, rows0))]
    end = {"first": 0, "end": 1, "act": 0, "weight": 0, "gap": 0}
    ends = geo.expected_ends[0][0]
    want0 = _sums(first, rows0)
    want1 = _sums(second, rows0)
    got0, got1 = [], []

    async def bench(ctx):
        for op in first + [dict(end, slot=0)] * ends:
            ctx.set(dut.i.payload, op)
            ctx.set(dut.i.valid, 1)
            await ctx.tick()
        ctx.set(dut.i.valid, 0)
        for _ in range(3):                            # the tokens through D, S and A
            await ctx.tick()
        assert ctx.get(dut.done) & 1
        got0.extend(await _drain(ctx, dut, 0, rows0, beside=second))
        for op in [dict(end, slot=1)] * ends:
            ctx.set(dut.i.payload, op)
            ctx.set(dut.i.valid, 1)
            await ctx.tick()
        ctx.set(dut.i.valid, 0)
        for _ in range(3):
            await ctx.tick()
        assert (ctx.get(dut.done) >> 1) & 1
        got1.extend(await _drain(ctx, dut, 1, rows0))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert got0 == want0.tolist() and got1 == want1.tolist()


def test_the_column_argument_is_checked():
    geo = _geometry(1)
    with pytest.raises(ValueError, match="col must be in"):
        MacBanks(geo, geo.cols)
    with pytest.raises(TypeError, match="Geometry"):
        MacBanks("geo", 0)
