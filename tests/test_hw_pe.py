# amaranth: UnusedElaboratable=no
"""hw/pe.py SparsePE in Amaranth's simulator: seeded random activation vectors onto its bus
(zeros skipped, as the input loader and the reducers skip them), end tokens from each source of
a layer, drains and releases of its banks - and the partial sums it drains, against the
integer product of the quantized model's weights restricted to the PE's rows and columns.

The bus is always ready: its back-pressure is the PE's ``almost_full``, which the bench obeys
as :class:`hw.bus.ColumnBus` does, seeing it ``bus_stages + stall_stages`` cycles late; the
PE's ``overflow`` flag must then never rise."""

import functools
import zlib
from collections import deque

import numpy as np
import pytest
from amaranth.sim import Simulator
from models import calibration, float_model

from compiler.build import compile_model
from compiler.reference import decode_pes
from hw.accumulator import MacBanks
from hw.images import geometry, pack_entries
from hw.options import HardwareOptions
from hw.pe import SparsePE


@functools.lru_cache(maxsize=None)
def _program(kind: str):
    if kind == "sparse":
        # 2x2; input 3 all zero: local column 1 of column group 1 is empty in PEs (r, 1);
        # layer 1: another all-zero column
        model = float_model([20, 16, 9], sparsity=0.6, seed=1, zero_cols=[(0, 3), (1, 5)])
        return compile_model(model, calibration(20), 4)
    if kind == "padded":
        # the same weights with a one-bit relative index: padding entries (value 0) in columns
        model = float_model([20, 16, 9], sparsity=0.6, seed=1, zero_cols=[(0, 3), (1, 5)])
        return compile_model(model, calibration(20), 4, index_bits=1)
    if kind == "tall":
        # 4x2, three layers: two reducers on each bus, so two end tokens per bank of layers 1-2
        model = float_model([16, 22, 12, 6], sparsity=0.5, seed=5, zero_cols=[(0, 2)])
        return compile_model(model, calibration(16), 8, grid="4x2")
    if kind == "dense":
        # one PE, long columns (~40 entries each in layer 0): the FIFO fills
        model = float_model([12, 40, 10], sparsity=0.05, seed=3)
        return compile_model(model, calibration(12), 1)
    if kind == "stored":
        # skip_zero_activations=False: every weight stored, every activation sent, zero or not
        model = float_model([10, 8, 5], sparsity=0.6, seed=6)
        return compile_model(model, calibration(10), 2, dense=True)
    raise KeyError(kind)


def _pe_weights(program, r, c):
    """Per layer: PE (r, c)'s weights as a dense int64 block [row_slots, col_slots], from the
    quantized model itself (rows: the reducer's, local order; columns: the column group's
    sources; 0 in unused slots)."""
    out = []
    for m, layer in enumerate(program.layers):
        mat = layer.matrix(quantized=True)
        rows = program.reducers[r].rows[m]
        src = program.column_sources(m, c)
        used = np.flatnonzero(src >= 0)
        w = np.zeros((program.row_slots[m], program.col_slots[m]), dtype=np.int64)
        w[np.ix_(np.arange(len(rows)), used)] = mat[np.ix_(rows, src[used])]
        out.append(w)
    return out


def _counts(program, k, m):
    """Entries of each local column of layer ``m`` in PE ``k``."""
    ptr = program.pe_images[k].ptr
    base = program.ptr_base[m]
    return np.diff(ptr[base:base + program.col_slots[m] + 1])


def _vector(rng, cols):
    """A random int8 activation vector, of a random density (all zero now and then)."""
    density = float(rng.choice([0.0, 0.15, 0.4, 0.7, 1.0]))
    x = rng.integers(-128, 128, cols)
    extremes = rng.random(cols) < 0.1
    x[extremes] = rng.choice([-128, 127], int(extremes.sum()))
    x[rng.random(cols) >= density] = 0
    return x.astype(np.int64)


def _rounds(geo, rng, n_rounds, cols_of, vector=_vector):
    """Inference-like rounds: round ``k`` fills bank ``k % banks`` of a random nonempty set of
    layers. Returns a list of rounds, each a list of (slot, activation vector)."""
    rounds = []
    for k in range(n_rounds):
        layers = [m for m in range(geo.layers) if rng.random() < 0.7] or \
            [int(rng.integers(geo.layers))]
        fills = []
        for m in layers:
            bank = k % geo.banks[m]
            fills.append((geo.slot(m, bank), vector(rng, cols_of(m))))
        rounds.append(fills)
    return rounds


def _items(geo, col, fills, rng, send_zeros):
    """One round's bus items: each bank's nonzero activations (in random order) split among
    the layer's sources, each source's part followed by its end token; the sources of every
    bank interleaved at random, each in its own order."""
    sources = []
    for slot, x in fills:
        m = geo.layer_of(slot)
        cols = np.flatnonzero(x) if not send_zeros else np.arange(len(x))
        cols = rng.permutation(cols)
        ends = geo.expected_ends[col][m]
        cuts = np.sort(rng.integers(0, len(cols) + 1, ends - 1))
        for part in np.split(cols, cuts):
            items = [{"column": int(t), "value": int(x[t]), "slot": slot, "end": 0}
                     for t in part]
            sources.append(items + [{"column": 0, "value": 0, "slot": slot, "end": 1}])
    merged = []
    while sources:
        k = int(rng.integers(len(sources)))
        merged.append(sources[k].pop(0))
        if not sources[k]:
            sources.pop(k)
    return merged


def _run(program, geo, r, c, rounds, rng, *, gap=None, lag=None, send_zeros=False):
    """Simulate PE (r, c) through ``rounds`` (see :func:`_rounds`). The driver offers each
    round's items with random idle cycles (probability ``gap``; None: a random one of 0, 0.2
    and 0.6 each round), holding off while the PE's ``almost_full`` was set ``lag`` cycles
    before (default: the bus's round trip, as :class:`hw.bus.ColumnBus` sees it), and starts
    a round only once its banks were released; the drainer waits for each bank's ``done``,
    drains every row of it at once, one a cycle, and releases it. Returns (the drained rows
    of every fill, in round order; stats: the walker's ops by kind, cycles, flags)."""
    dut = SparsePE(program, geo, r, c)
    k = dut.index
    lag = geo.bus_stages + geo.stall_stages if lag is None else lag
    latency = MacBanks.drain_latency(geo)
    busy = [False] * geo.slots
    got = []
    stats = {"entries": 0, "ends": 0, "drains": 0, "almost_full": 0, "overflow": 0,
             "cycles": 0, "driven": False, "items": 0}
    limit = 200 * sum(len(x) + 10 for fills in rounds for _, x in fills) + 5000

    async def driver(ctx):
        if geo.weights == "uploaded":             # the weights, in random order, first
            words = pack_entries(program, k, geo)
            for a in rng.permutation(len(words)):
                ctx.set(dut.load_addr, int(a))
                ctx.set(dut.load_data, words[a])
                ctx.set(dut.load_en, 1)
                await ctx.tick()
            ctx.set(dut.load_en, 0)
            await ctx.tick()
        seen = deque([0] * max(1, lag), maxlen=max(1, lag))   # almost_full, oldest first
        for fills in rounds:
            while any(busy[s] for s, _ in fills):
                seen.append((await ctx.tick().sample(dut.almost_full))[2])
            for s, _ in fills:
                busy[s] = True
            idle = float(rng.choice([0.0, 0.2, 0.6])) if gap is None else gap
            for item in _items(geo, c, fills, rng, send_zeros):
                while True:
                    stalled = seen[0] if lag else ctx.get(dut.almost_full)
                    go = not stalled and rng.random() >= idle
                    ctx.set(dut.bus.valid, go)
                    if go:
                        ctx.set(dut.bus.payload, item)
                    seen.append((await ctx.tick().sample(dut.almost_full))[2])
                    if go:
                        break
                stats["items"] += 1
            ctx.set(dut.bus.valid, 0)
        stats["driven"] = True

    async def monitor(ctx):
        op = dut.walker.o
        async for _, _, valid, payload, full, overflow in ctx.tick().sample(
                op.valid, op.payload, dut.almost_full, dut.overflow):
            if valid:
                kind = "ends" if payload.end else "drains" if payload.drain else "entries"
                stats[kind] += 1
            stats["almost_full"] += full
            stats["overflow"] |= overflow
            stats["cycles"] += 1

    async def drainer(ctx):
        for fills in rounds:
            for s, _ in fills:
                waited = 0
                while not (ctx.get(dut.done) >> s) & 1:
                    await ctx.tick()
                    waited += 1
                    assert waited < limit, f"bank {s} never done (the PE hangs)"
                rows = geo.row_slots[geo.layer_of(s)]
                sums = []
                for cycle in range(rows + latency):
                    ctx.set(dut.drain.valid, cycle < rows)
                    ctx.set(dut.drain.payload, {"slot": s, "addr": min(cycle, rows - 1)})
                    await ctx.tick()
                    if cycle + 1 >= latency and len(sums) < rows:
                        sums.append(ctx.get(dut.partial))
                ctx.set(dut.drain.valid, 0)
                ctx.set(dut.release.valid, 1)
                ctx.set(dut.release.payload, s)
                await ctx.tick()
                ctx.set(dut.release.valid, 0)
                assert not (ctx.get(dut.done) >> s) & 1, "a released bank is still done"
                busy[s] = False
                got.append(np.array(sums, dtype=np.int64))
        for _ in range(30):                       # anything late would show in the counts
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(driver, background=True)
    sim.add_testbench(monitor, background=True)
    sim.add_testbench(drainer)
    sim.run()
    assert stats["driven"]
    return got, stats


def _expected(program, geo, r, c, rounds, send_zeros=False):
    """The drained rows of every fill (round order), the entries and end tokens the walker
    must issue: from the model's weights and the PE's CSC column counts."""
    weights = _pe_weights(program, r, c)
    k = program.grid.pe(r, c)
    want, entries, ends = [], 0, 0
    for fills in rounds:
        for s, x in fills:
            m = geo.layer_of(s)
            want.append(weights[m] @ x)
            sent = np.ones(len(x), bool) if send_zeros else x != 0
            entries += int(_counts(program, k, m)[sent].sum())
            ends += geo.expected_ends[c][m]
    return want, entries, ends


def _check(got, want):
    assert len(got) == len(want)
    for n, (g, w) in enumerate(zip(got, want)):
        assert np.array_equal(g, w), f"fill {n}: drained {g.tolist()}, expected {w.tolist()}"


def _cols_of(program):
    return lambda m: program.col_slots[m]


def test_reference_weights_are_the_pes_images():
    """The dense restriction the tests compare with is what the PE images decode to (so a
    mismatch below is the gateware's, not the reference's)."""
    for kind in ["sparse", "padded", "tall", "stored"]:
        program = _program(kind)
        mats = decode_pes(program)
        for k in range(program.pes):
            r, c = divmod(k, program.grid.cols)
            for m, w in enumerate(_pe_weights(program, r, c)):
                assert np.array_equal(w, mats[m][k]), (kind, k, m)


CASES = [
    # kind, (r, c), options
    ("sparse", (0, 1), dict(memory="block", pipeline="short")),
    ("sparse", (1, 1), dict(memory="block", pipeline="deep")),
    ("sparse", (1, 0), dict(memory="distributed", pipeline="short")),
    ("sparse", (0, 1), dict(memory="distributed", pipeline="deep")),
    ("sparse", (1, 1), dict(memory="block", accumulators="block")),
    ("sparse", (0, 0), dict(memory="distributed", accumulators="block", pipeline="deep")),
    ("sparse", (0, 1), dict(memory="block", pointers="counted", banks=1)),
    ("sparse", (1, 1), dict(memory="distributed", weights="uploaded")),
    ("padded", (1, 0), dict(memory="block", accumulators="block", weights="uploaded")),
    ("tall", (2, 1), dict(memory="distributed", banks=3)),
    ("tall", (3, 0), dict(memory="block", accumulators="block", pointers="counted")),
]


@pytest.mark.parametrize("kind, pe, options", CASES,
                         ids=[f"{k}-{r}{c}-" + "-".join(f"{v}" for v in o.values())
                              for k, (r, c), o in CASES])
def test_pe_partial_sums_match_the_weights(kind, pe, options):
    program = _program(kind)
    geo = geometry(program, HardwareOptions(**options))
    r, c = pe
    rng = np.random.default_rng(zlib.crc32(f"{kind} {pe} {options}".encode()))
    rounds = _rounds(geo, rng, 130, _cols_of(program))
    got, stats = _run(program, geo, r, c, rounds, rng)
    want, entries, ends = _expected(program, geo, r, c, rounds)
    _check(got, want)
    assert sum(np.any(w != 0) for w in want) > len(want) // 2, "mostly nonzero sums"
    assert (stats["entries"], stats["ends"]) == (entries, ends)
    drains = sum(geo.row_slots[geo.layer_of(s)] for fills in rounds for s, _ in fills)
    assert stats["drains"] == (drains if geo.accumulators == "block" else 0)
    assert not stats["overflow"]


@pytest.mark.parametrize("memory", ["block", "distributed"])
def test_zero_activations_and_empty_columns_cost_nothing(memory):
    """PE (r, 1) of "sparse" holds nothing in local column 1 of layer 0 (input 3 is all zero).
    Vectors of zeros only and vectors nonzero only there issue the end tokens and no entry;
    the banks fill all the same (done), drain 0 and release."""
    program = _program("sparse")
    geo = geometry(program, HardwareOptions(memory=memory))
    r, c = 1, 1
    k = program.grid.pe(r, c)
    empty = 1
    counts = _counts(program, k, 0)
    assert counts[empty] == 0 and not _pe_weights(program, r, c)[0][:, empty].any()
    assert (counts > 0).sum() > 3
    rng = np.random.default_rng(17)

    def vector(rng, cols):
        x = np.zeros(cols, dtype=np.int64)
        choice = rng.integers(3)
        if choice == 1:
            x[empty] = int(rng.choice([-128, -3, 1, 127]))
        elif choice == 2:                          # the empty column beside others
            x = _vector(rng, cols)
            x[empty] = int(rng.integers(1, 128))
        return x

    rounds = [[(geo.slot(0, n % geo.banks[0]), vector(rng, geo.col_slots[0]))]
              for n in range(120)]
    got, stats = _run(program, geo, r, c, rounds, rng)
    want, entries, ends = _expected(program, geo, r, c, rounds)
    _check(got, want)
    sent_empty = sum(int(x[empty] != 0) for fills in rounds for _, x in fills)
    assert sent_empty > 60 and stats["items"] >= sent_empty + ends
    assert (stats["entries"], stats["ends"]) == (entries, ends)
    # only the vectors with other nonzero columns cost entries
    assert entries == sum(int(counts[x != 0].sum()) for fills in rounds for _, x in fills)
    others = np.arange(geo.col_slots[0]) != empty
    zeros = [n for n, fills in enumerate(rounds) if not fills[0][1][others].any()]
    assert len(zeros) > 50 and all(not got[n].any() for n in zeros)


def test_zero_activations_on_the_bus_of_a_stored_program():
    """skip_zero_activations=False (``dense``): every activation reaches the PE, zero or not,
    and each walks its whole column (every weight stored); the sums do not change."""
    program = _program("stored")
    assert not program.skip_zero_activations
    geo = geometry(program, HardwareOptions(memory="distributed"))
    r, c = 1, 0
    rng = np.random.default_rng(23)
    rounds = _rounds(geo, rng, 60, _cols_of(program))
    got, stats = _run(program, geo, r, c, rounds, rng, send_zeros=True)
    want, entries, ends = _expected(program, geo, r, c, rounds, send_zeros=True)
    _check(got, want)
    assert (stats["entries"], stats["ends"]) == (entries, ends)
    weights = _pe_weights(program, r, c)
    assert entries == sum(weights[geo.layer_of(s)].shape[0] * len(x) for fills in rounds
                          for s, x in fills) > 0


@pytest.mark.parametrize("memory, accumulators", [("block", "distributed"),
                                                  ("distributed", "block")])
def test_back_pressure_on_long_columns(memory, accumulators):
    """Long columns, activations offered back to back: the FIFO fills, ``almost_full`` holds
    the bus (seen as late as the bus sees it) and nothing overflows; the sums stay exact."""
    program = _program("dense")
    geo = geometry(program, HardwareOptions(memory=memory, accumulators=accumulators))
    assert _counts(program, 0, 0).min() >= 30
    rng = np.random.default_rng(29)

    def vector(rng, cols):
        return rng.integers(-128, 128, cols) * (rng.random(cols) < 0.8)

    rounds = _rounds(geo, rng, 12, _cols_of(program), vector)
    got, stats = _run(program, geo, 0, 0, rounds, rng, gap=0.0)
    want, entries, ends = _expected(program, geo, 0, 0, rounds)
    _check(got, want)
    assert (stats["entries"], stats["ends"]) == (entries, ends)
    assert stats["almost_full"] > stats["cycles"] // 4, "the bus must be held back often"
    assert not stats["overflow"]


def test_overflow_is_flagged_when_almost_full_is_ignored():
    """The bench's own check: a bus that ignores ``almost_full`` overruns the FIFO of a PE
    walking long columns, and ``overflow`` says so (and stays set)."""
    program = _program("dense")
    geo = geometry(program)
    rng = np.random.default_rng(31)
    dut = SparsePE(program, geo, 0, 0)
    flags = []

    async def bench(ctx):
        for _ in range(3 * geo.fifo_depth):       # activations of layer 0, every cycle
            ctx.set(dut.bus.valid, 1)
            ctx.set(dut.bus.payload, {"column": int(rng.integers(geo.col_slots[0])),
                                      "value": int(rng.integers(1, 128)), "slot": 0, "end": 0})
            await ctx.tick()
            flags.append(ctx.get(dut.overflow))
        ctx.set(dut.bus.valid, 0)
        for _ in range(20):
            await ctx.tick()
            flags.append(ctx.get(dut.overflow))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    # the FIFO and the walker's queue take the first ones
    assert not any(flags[:geo.fifo_depth]), "no overflow while the FIFO has room"
    assert 1 in flags, "overflow rises"
    assert all(flags[flags.index(1):]), "and stays set"


def test_pe_checks_its_arguments():
    program = _program("sparse")
    geo = geometry(program)
    with pytest.raises(TypeError, match="SparseProgram"):
        SparsePE("program", geo, 0, 0)
    with pytest.raises(ValueError, match="grid"):
        SparsePE(program, geo, geo.rows, 0)
    with pytest.raises(ValueError, match="grid"):
        SparsePE(program, geo, 0, -1)
