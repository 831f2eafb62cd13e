# amaranth: UnusedElaboratable=no
"""hw/walker.py ColumnWalker in Amaranth's simulator: bus items in, the exact op sequence out
(one op per entry of a column, nothing for an empty column, one op per end token), for both
memory styles, bitstream and uploaded weights, with random gaps and back-pressure."""

import functools
import zlib

import numpy as np
import pytest
from amaranth.sim import Simulator
from models import calibration, float_model

import hw.walker
from compiler.build import compile_model
from hw.images import geometry, pack_entries
from hw.options import HardwareOptions
from hw.walker import ColumnWalker

MEMORIES = ["block", "distributed"]


@functools.lru_cache(maxsize=None)
def _program(kind: str):
    if kind == "sparse":
        # some columns empty in some PEs, a few forced empty everywhere
        model = float_model([20, 16, 9], sparsity=0.6, seed=1, zero_cols=[(0, 3), (1, 5)])
        return compile_model(model, calibration(20), 4)
    if kind == "three":
        # three layers: 6 slots in a 3-bit field (slots 6, 7 never used)
        model = float_model([12, 10, 8, 6], sparsity=0.5, seed=2)
        return compile_model(model, calibration(12), 2)
    if kind == "dense":
        # one PE, dense: long columns (every column of layer 0 has ~40 entries)
        model = float_model([12, 40, 10], sparsity=0.05, seed=3)
        return compile_model(model, calibration(12), 1)
    if kind == "empty":
        # every weight zero: PEs without a single entry (pack_entries gives one padding word)
        model = float_model([6, 8, 4], sparsity=0.5, seed=4,
                            zero_rows=[(0, r) for r in range(8)] + [(1, r) for r in range(4)])
        return compile_model(model, calibration(6), 2)
    if kind == "empty_layer":
        # layer 0 all zero: a whole layer of empty columns, layer 1 not
        model = float_model([6, 8, 4], sparsity=0.3, seed=4, zero_rows=[(0, r) for r in range(8)])
        return compile_model(model, calibration(6), 2)
    raise KeyError(kind)


def _pe_tables(program, k):
    img = program.pe_images[k]
    return ([int(p) for p in img.ptr], [int(v) for v in img.entry_value],
            [int(i) for i in img.entry_index])


def _random_items(geo, count, rng, *, end_probability=0.1, columns=None):
    """Bus items as dicts. ``columns``: optional per-layer list of columns to draw from."""
    items = []
    for _ in range(count):
        slot = int(rng.integers(geo.slots))
        layer = geo.layer_of(slot)
        choices = columns[layer] if columns is not None else range(geo.col_slots[layer])
        column = int(rng.choice(choices))
        value = int(rng.choice([-128, 127, -1, 1])) if rng.random() < 0.2 else \
            int(rng.integers(-128, 128))
        end = int(rng.random() < end_probability)
        items.append({"column": column, "value": value, "slot": slot, "end": end})
    return items


def _expected_ops(geo, ptr, values, indices, items):
    """The op sequence the walker must produce for ``items``, as tuples
    (slot, end, first, act, weight, gap); an end op as (slot, 1, None, None, None, None)."""
    ops = []
    for it in items:
        if it["end"]:
            ops.append((it["slot"], 1, None, None, None, None))
            continue
        p = geo.ptr_base[geo.layer_of(it["slot"])] + it["column"]
        for e in range(ptr[p], ptr[p + 1]):
            ops.append((it["slot"], 0, int(e == ptr[p]), it["value"], values[e], indices[e]))
    return ops


def _op_tuple(payload):
    if payload.end:
        return (payload.slot, 1, None, None, None, None)
    return (payload.slot, 0, payload.first, payload.act, payload.weight, payload.gap)


async def _put_items(ctx, dut, items, rng, *, bursty=True):
    """Offer ``items`` on ``dut.i``: runs of back-to-back items and runs with random gaps.
    Returns the number of cycles each item waited for ``ready`` (back-pressure)."""
    stalls = 0
    k = 0
    while k < len(items):
        run = int(rng.integers(1, 120))
        probability = 1.0 if not bursty or rng.random() < 0.5 else float(rng.uniform(0.1, 0.9))
        for it in items[k:k + run]:
            while rng.random() > probability:
                ctx.set(dut.i.valid, 0)
                await ctx.tick()
            ctx.set(dut.i.payload, it)
            ctx.set(dut.i.valid, 1)
            while True:
                _, _, ready = await ctx.tick().sample(dut.i.ready)
                if ready:
                    break
                stalls += 1
        k += run
    ctx.set(dut.i.valid, 0)
    return stalls


def _walk(dut, items, n_ops, rng, *, bursty=True, before=None, tail=60):
    """Run ``items`` through ``dut``; return (ops as tuples, the cycle of each op, the number
    of items accepted, cycles an offered item waited for ready). ``before``: optional
    coroutine ``before(ctx)`` run first (weight upload); items are offered after it."""
    ops, cycles = [], []
    state = {"accepted": 0, "stalls": 0, "started": before is None, "driven": False}

    async def driver(ctx):
        if before is not None:
            await before(ctx)
            state["started"] = True
        state["stalls"] = await _put_items(ctx, dut, items, rng, bursty=bursty)
        state["driven"] = True

    async def monitor(ctx):
        t = 0
        idle_after = 0
        # until every expected op came and `tail` quiet cycles after the last item went in
        while len(ops) < n_ops or not state["driven"] or idle_after < tail:
            _, _, ovalid, opayload, ivalid, iready = await ctx.tick().sample(
                dut.o.valid, dut.o.payload, dut.i.valid, dut.i.ready)
            if ovalid:
                assert state["started"], "an op before any item was offered"
                ops.append(_op_tuple(opayload))
                cycles.append(t)
            if ivalid and iready:
                state["accepted"] += 1
            idle_after = idle_after + 1 if state["driven"] and not ovalid else 0
            t += 1
            assert t < 40 * (len(items) + n_ops) + 10_000, "the walker hangs"

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(driver, background=True)
    sim.add_testbench(monitor)
    sim.run()
    return ops, cycles, state["accepted"], state["stalls"]


def _check_sequence(ops, want):
    assert len(ops) == len(want), f"{len(ops)} ops, expected {len(want)}"
    for n, (got, exp) in enumerate(zip(ops, want)):
        assert got == exp, f"op {n}: {got} != expected {exp}"


@pytest.mark.parametrize("memory", MEMORIES)
@pytest.mark.parametrize("kind, pe, banks", [("sparse", 0, 2), ("sparse", 3, 1),
                                             ("three", 1, 3), ("sparse", 1, 4)])
def test_walker_produces_the_exact_op_sequence(kind, pe, banks, memory):
    program = _program(kind)
    geo = geometry(program, HardwareOptions(memory=memory, banks=banks))
    assert geo.slots == geo.layers * banks
    ptr, values, indices = _pe_tables(program, pe)
    counts = np.diff(ptr)
    assert (counts == 0).any() and (counts > 1).any(), "empty and long columns both tested"
    dut = ColumnWalker(geo, ptr, pack_entries(program, pe, geo))
    rng = np.random.default_rng(zlib.crc32(f"{kind} {pe} {banks} {memory}".encode()))
    items = _random_items(geo, 700, rng)
    # runs of end tokens and of empty columns, back to back
    items[100:110] = [{**it, "end": 1} for it in items[100:110]]
    empties = [(s, t) for s in range(geo.slots) for t in range(geo.col_slots[geo.layer_of(s)])
               if counts[geo.ptr_base[geo.layer_of(s)] + t] == 0]
    assert empties
    for n in range(200, 230):
        s, t = empties[n % len(empties)]
        items[n] = {"column": t, "value": 5, "slot": s, "end": 0}
    want = _expected_ops(geo, ptr, values, indices, items)
    ops, _, accepted, stalls = _walk(dut, items, len(want), rng)
    assert accepted == len(items)
    _check_sequence(ops, want)
    assert stalls > 0, "the test must exercise i.ready back-pressure"


@pytest.mark.parametrize("memory", MEMORIES)
def test_walker_sustains_one_entry_per_cycle_on_long_columns(memory):
    program = _program("dense")
    geo = geometry(program, HardwareOptions(memory=memory))
    ptr, values, indices = _pe_tables(program, 0)
    counts = np.diff(ptr)
    long_cols = [[t for t in range(geo.col_slots[m]) if counts[geo.ptr_base[m] + t] >= 4]
                 for m in range(geo.layers)]
    assert all(long_cols)
    dut = ColumnWalker(geo, ptr, pack_entries(program, 0, geo))
    rng = np.random.default_rng(7)
    items = _random_items(geo, 150, rng, end_probability=0.0, columns=long_cols)
    want = _expected_ops(geo, ptr, values, indices, items)
    ops, cycles, accepted, stalls = _walk(dut, items, len(want), rng, bursty=False)
    assert accepted == len(items)
    _check_sequence(ops, want)
    # back to back: one entry every cycle from the first op to the last
    assert cycles[-1] - cycles[0] + 1 == len(ops), "bubbles between entries"
    assert stalls > 0, "long columns must back-pressure the input"


@pytest.mark.parametrize("memory", MEMORIES)
def test_walker_keeps_up_with_short_columns_and_end_tokens(memory):
    """Columns of one or two entries and end tokens, offered every cycle: still one op a
    cycle once the pipeline is full (the queue covers the lookup latency)."""
    program = _program("sparse")
    geo = geometry(program, HardwareOptions(memory=memory))
    pe = 1
    ptr, values, indices = _pe_tables(program, pe)
    counts = np.diff(ptr)
    short = [[t for t in range(geo.col_slots[m]) if 1 <= counts[geo.ptr_base[m] + t] <= 2]
             for m in range(geo.layers)]
    assert all(short)
    dut = ColumnWalker(geo, ptr, pack_entries(program, pe, geo))
    rng = np.random.default_rng(11)
    items = _random_items(geo, 300, rng, end_probability=0.2, columns=short)
    want = _expected_ops(geo, ptr, values, indices, items)
    ops, cycles, accepted, _ = _walk(dut, items, len(want), rng, bursty=False)
    assert accepted == len(items)
    _check_sequence(ops, want)
    assert cycles[-1] - cycles[0] + 1 == len(ops), "bubbles between ops"


@pytest.mark.parametrize("weights", ["bitstream", "uploaded"])
@pytest.mark.parametrize("memory", MEMORIES)
@pytest.mark.parametrize("kind", ["empty", "empty_layer"])
def test_walker_on_pes_with_empty_layers(kind, memory, weights):
    """Only end tokens come out of a layer without entries (and of a PE without any)."""
    program = _program(kind)
    geo = geometry(program, HardwareOptions(memory=memory, weights=weights))
    rng = np.random.default_rng(3)
    for pe in range(geo.pes):
        ptr, values, indices = _pe_tables(program, pe)
        if kind == "empty":
            assert ptr[-1] == 0
        else:
            assert ptr[geo.ptr_base[1]] == 0 < ptr[-1]
        words = pack_entries(program, pe, geo)
        dut = ColumnWalker(geo, ptr, words if weights == "bitstream" else None)
        items = _random_items(geo, 200, rng, end_probability=0.15)
        want = _expected_ops(geo, ptr, values, indices, items)
        before = _upload(dut, words, rng) if weights == "uploaded" else None
        ops, _, accepted, _ = _walk(dut, items, len(want), rng, before=before)
        assert accepted == len(items)
        _check_sequence(ops, want)
        assert sum(op[1] for op in ops) == sum(it["end"] for it in items) > 0


def _upload(dut, words, rng):
    """A coroutine writing ``words`` into the walker's entry memory, in random order, with
    random idle cycles between writes."""
    order = rng.permutation(len(words))

    async def before(ctx):
        ctx.set(dut.i.valid, 0)
        for a in order:
            while rng.random() < 0.3:
                ctx.set(dut.load_en, 0)
                await ctx.tick()
            ctx.set(dut.load_addr, int(a))
            ctx.set(dut.load_data, int(words[a]))
            ctx.set(dut.load_en, 1)
            await ctx.tick()
        ctx.set(dut.load_en, 0)
        ctx.set(dut.load_addr, 0)
        ctx.set(dut.load_data, 0)
        await ctx.tick()
    return before


@pytest.mark.parametrize("memory, chunk", [
    ("block", None), ("distributed", None), ("block", 8), ("distributed", 8), ("block", 4),
    ("block", 16),
])
def test_walker_with_uploaded_weights(memory, chunk, monkeypatch):
    if chunk is not None:
        monkeypatch.setattr(hw.walker, "SPRAM_DEPTH", chunk)
    program = _program("sparse")
    geo = geometry(program, HardwareOptions(memory=memory, weights="uploaded"))
    pe = 2
    ptr, values, indices = _pe_tables(program, pe)
    words = pack_entries(program, pe, geo)
    assert len(words) == ptr[-1]
    if chunk is not None:
        assert len(words) > 2 * chunk and len(words) % chunk != 0, "several, uneven chunks"
    with pytest.raises(ValueError, match="entries"):
        ColumnWalker(geo, ptr, words)
    dut = ColumnWalker(geo, ptr, None)
    rng = np.random.default_rng(5 + (chunk or 0))
    items = _random_items(geo, 400, rng)
    want = _expected_ops(geo, ptr, values, indices, items)
    ops, _, accepted, _ = _walk(dut, items, len(want), rng, before=_upload(dut, words, rng))
    assert accepted == len(items)
    _check_sequence(ops, want)


def test_walker_uploaded_memory_holds_what_was_written(monkeypatch):
    """Other words uploaded: other weights out (the memory is not initialised from the
    program)."""
    monkeypatch.setattr(hw.walker, "SPRAM_DEPTH", 8)
    program = _program("sparse")
    geo = geometry(program, HardwareOptions(weights="uploaded"))
    pe = 0
    ptr, values, indices = _pe_tables(program, pe)
    rng = np.random.default_rng(9)
    mask = (1 << geo.index_bits) - 1
    new_values = [int(v) for v in rng.integers(-128, 128, ptr[-1])]
    new_indices = [int(v) for v in rng.integers(0, mask + 1, ptr[-1])]
    words = [(v & 0xFF) | (i << 8) for v, i in zip(new_values, new_indices)]
    dut = ColumnWalker(geo, ptr, None)
    items = _random_items(geo, 200, rng)
    want = _expected_ops(geo, ptr, new_values, new_indices, items)
    ops, _, _, _ = _walk(dut, items, len(want), rng, before=_upload(dut, words, rng))
    _check_sequence(ops, want)


def test_walker_checks_its_arguments():
    program = _program("sparse")
    geo = geometry(program)
    ptr = _pe_tables(program, 0)[0]
    with pytest.raises(TypeError, match="Geometry"):
        ColumnWalker("geo", ptr, [0])
    with pytest.raises(ValueError, match="pointer table"):
        ColumnWalker(geo, ptr[:-1], pack_entries(program, 0, geo))
    with pytest.raises(ValueError, match="entries"):
        ColumnWalker(geo, ptr, None)


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_walker_random_programs_and_options(seed):
    """Seeded random programs (odd sizes, 0..99 % sparsity, empty rows and columns, 1..9 PEs)
    and random gateware options (memory, pointers, accumulators, banks): thousands of random
    bus items, the op sequence exactly what the PE's CSC tables define."""
    from hw.images import pack_pointers
    rng = np.random.default_rng(1000 + seed)
    shapes = [int(rng.integers(1, 40)) for _ in range(int(rng.integers(2, 5)))]
    model = float_model(shapes, sparsity=float(rng.choice([0.0, 0.5, 0.9, 0.99])), seed=seed,
                        zero_rows=[(0, 0)], zero_cols=[(len(shapes) - 2, 0)])
    pes = int(rng.choice([1, 2, 3, 5, 7, 9]))
    program = compile_model(model, calibration(shapes[0], seed=seed), pes)
    options = HardwareOptions(memory=str(rng.choice(MEMORIES)),
                              pointers=str(rng.choice(["csc", "counted"])),
                              accumulators=str(rng.choice(["distributed", "block"])),
                              banks=int(rng.integers(1, 5)))
    geo = geometry(program, options)
    total = 0
    for pe in rng.permutation(program.pes)[:2]:
        ptr, values, indices = _pe_tables(program, int(pe))
        dut = ColumnWalker(geo, pack_pointers(program, int(pe), geo),
                           pack_entries(program, int(pe), geo))
        items = _random_items(geo, 2500, rng, end_probability=float(rng.uniform(0.02, 0.3)))
        want = _expected_ops(geo, ptr, values, indices, items)
        ops, _, accepted, _ = _walk(dut, items, len(want), rng)
        assert accepted == len(items)
        _check_sequence(ops, want)
        total += sum(1 for op in want if not op[1])
    assert total > 0, "no entry walked"
