# amaranth: UnusedElaboratable=no
"""hw/bus.py ColumnBus in Amaranth's simulator, against a model of its consumers: each PE a
FIFO of ``geo.fifo_depth`` entries that raises ``almost_full`` from a register (level >=
``geo.fifo_threshold``, a cycle late, like hw/pe.py) and drains at a random rate.

Checked: every PE receives the same sequence; each source's items arrive in that source's
order, none lost or duplicated; no PE FIFO ever overflows; the input loader (the last source)
is served only when no reducer source offers an item; the reducers are served round-robin."""

import functools

import numpy as np
import pytest
from amaranth.sim import Simulator
from models import calibration, float_model

from compiler.build import compile_model
from hw.bus import ColumnBus
from hw.images import bus_layout, geometry
from hw.options import HardwareOptions

ROWS = [1, 3, 8, 9, 20]


@functools.lru_cache(maxsize=None)
def _program(rows: int):
    model = float_model([20, 40 if rows <= 40 else 80, 9], sparsity=0.6, seed=1)
    return compile_model(model, calibration(20), rows, grid=f"{rows}x1")


def _geometry(rows: int, fifo_depth=None):
    program = _program(rows)
    if fifo_depth == "min":
        # the shallowest FIFO geometry() accepts for this grid
        depth = 4
        while True:
            try:
                geo = geometry(program, HardwareOptions(fifo_depth=depth))
                break
            except ValueError:
                depth += 1
    else:
        geo = geometry(program, HardwareOptions(fifo_depth=fifo_depth or 16))
    assert geo.rows == rows
    return program, geo


def _payloads(geo, count, rng):
    """``count`` distinct bus payloads (dicts), and their keys (tuples) in the same order."""
    layout = bus_layout(geo)
    widths = {name: field.width for name, field in layout}
    total = sum(widths.values())
    assert 2 ** total >= 4 * count
    ids = rng.choice(2 ** total, count, replace=False)
    items, keys = [], []
    for n in ids:
        n = int(n)
        col = n & ((1 << widths["column"]) - 1)
        n >>= widths["column"]
        value = (n & 0xFF) - 256 * ((n >> 7) & 1)
        n >>= 8
        slot = n & ((1 << widths["slot"]) - 1)
        n >>= widths["slot"]
        end = n & 1
        items.append({"column": col, "value": value, "slot": slot, "end": end})
        keys.append((col, value, slot, end))
    return items, keys


def _key(payload):
    return (payload.column, payload.value, payload.slot, payload.end)


def _run_bus(geo, sources, items_per_source, *, seed, drain="random", offer="bursty",
             loader_start=0, tail=80):
    """Drive the sources and model the consumers. ``items_per_source``: list of counts.
    Returns a dict with what each consumer got (keys, cycles), the items' keys per source,
    handshake records, the FIFOs' peak levels."""
    dut = ColumnBus(geo, sources)
    rng = np.random.default_rng(seed)
    rows = geo.rows
    all_items, all_keys = _payloads(geo, sum(items_per_source), rng)
    per_source, per_keys = [], []
    at = 0
    for n in items_per_source:
        per_source.append(all_items[at:at + n])
        per_keys.append(all_keys[at:at + n])
        at += n
    srcs = [getattr(dut, f"src{i}") for i in range(sources)]
    pes = [getattr(dut, f"pe{j}") for j in range(rows)]
    total = sum(items_per_source)
    got = [[] for _ in range(rows)]
    got_cycles = [[] for _ in range(rows)]
    handshakes = []                       # (cycle, source index, reducer valids)
    peak = [0] * rows
    done = {"sources": 0}

    def make_driver(i):
        src_rng = np.random.default_rng(seed * 1000 + i)

        async def driver(ctx):
            items = per_source[i]
            if i == sources - 1 and loader_start:
                await ctx.tick().repeat(loader_start)
            k = 0
            while k < len(items):
                run = int(src_rng.integers(1, 60))
                if offer == "always":
                    probability = 1.0
                elif offer == "bursty":
                    probability = 1.0 if src_rng.random() < 0.5 else \
                        float(src_rng.uniform(0.05, 0.8))
                else:
                    probability = float(offer)
                for it in items[k:k + run]:
                    while src_rng.random() > probability:
                        ctx.set(srcs[i].valid, 0)
                        await ctx.tick()
                    ctx.set(srcs[i].payload, it)
                    ctx.set(srcs[i].valid, 1)
                    await ctx.tick().until(srcs[i].ready)
                if offer == "bursty" and src_rng.random() < 0.3:
                    ctx.set(srcs[i].valid, 0)
                    await ctx.tick().repeat(int(src_rng.integers(1, 100)))
                k += run
            ctx.set(srcs[i].valid, 0)
            done["sources"] += 1
        return driver

    t = 0

    async def consumers(ctx):
        nonlocal t
        level = [0] * rows
        # per consumer: the drain probability of the current phase, and cycles left in it
        rate, left = [1.0] * rows, [0] * rows
        watched = []
        for pe in pes:
            watched += [pe.valid, pe.payload]
        for s in srcs:
            watched += [s.valid, s.ready]
        quiet = 0
        while done["sources"] < sources or min(len(g) for g in got) < total or quiet < tail:
            sampled = await ctx.tick().sample(*watched)
            values = sampled[2:]
            fan, hs = values[:2 * rows], values[2 * rows:]
            valids = [bool(hs[2 * i]) for i in range(sources)]
            for i in range(sources):
                if hs[2 * i] and hs[2 * i + 1]:
                    handshakes.append((t, i, tuple(valids[:-1])))
            anything = False
            # each PE's almost_full register: this cycle's level, visible the next cycle
            ctx.set(dut.almost_full, sum(1 << j for j in range(rows)
                                         if level[j] >= geo.fifo_threshold))
            for j in range(rows):
                valid, payload = fan[2 * j], fan[2 * j + 1]
                before = level[j]
                if valid:
                    anything = True
                    assert before < geo.fifo_depth, \
                        f"PE {j} FIFO overflow at cycle {t} (level {before})"
                    got[j].append(_key(payload))
                    got_cycles[j].append(t)
                if left[j] == 0:
                    if drain == "never_full":
                        rate[j] = 1.0
                    else:
                        # a stalled phase now and then (rarer with many PEs: any one
                        # stalls the whole bus), else a random rate
                        stalled = rng.random() < 0.3 / rows ** 0.5
                        rate[j] = 0.0 if stalled else float(rng.choice([0.1, 0.4, 0.8, 1.0]))
                    left[j] = int(rng.integers(5, 80))
                left[j] -= 1
                pop = before > 0 and rng.random() < rate[j]
                level[j] = before + int(bool(valid)) - int(pop)
                peak[j] = max(peak[j], level[j])
            quiet = quiet + 1 if (done["sources"] == sources and not anything) else 0
            t += 1
            assert t < 200 * total + 20_000, "the bus hangs"

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    for i in range(sources):
        sim.add_testbench(make_driver(i), background=True)
    sim.add_testbench(consumers)
    sim.run()
    return {"got": got, "cycles": got_cycles, "time": t, "keys": per_keys,
            "handshakes": handshakes, "peak": peak, "dut": dut}


def _check_delivery(geo, sources, run):
    got, keys = run["got"], run["keys"]
    # every PE the same sequence
    for j in range(1, geo.rows):
        assert got[j] == got[0], f"PE {j} got another sequence than PE 0"
    seq = got[0]
    # nothing lost, nothing duplicated, nothing invented
    assert len(seq) == len(set(seq)), "an item arrived twice"
    expected = set(k for ks in keys for k in ks)
    assert set(seq) == expected, "items lost or invented"
    # each source's order kept
    index = {k: n for n, k in enumerate(seq)}
    for i, ks in enumerate(keys):
        positions = [index[k] for k in ks]
        assert positions == sorted(positions), f"source {i}'s items out of order"
    # the handshakes are the sequence (one item a handshake, in that order)
    assert len(run["handshakes"]) == len(seq)
    # the input loader only when no reducer offered an item
    for t, i, reducer_valids in run["handshakes"]:
        if i == sources - 1:
            assert not any(reducer_valids), \
                f"cycle {t}: input loader served while reducers {reducer_valids} had items"


def _sources(rows):
    """A bus's sources in the accelerator: the reducers on it, then the input loader."""
    return len(_program(rows).grid.reducers_on(0)) + 1


@pytest.mark.parametrize("fifo_depth", [16, "min"])
@pytest.mark.parametrize("rows", ROWS)
def test_bus_delivers_every_item_to_every_pe_in_order(rows, fifo_depth):
    _, geo = _geometry(rows, fifo_depth)
    assert geo.bus_stages == (1 if rows <= 8 else 2)
    sources = _sources(rows)
    per = max(8, (360 if rows < 20 else 200) // sources)
    counts = [per] * (sources - 1) + [150 if rows < 20 else 80]
    run = _run_bus(geo, sources, counts, seed=rows * 7 + (fifo_depth == "min"))
    _check_delivery(geo, sources, run)
    # the consumers' FIFOs filled up to the threshold (the stall path was exercised)
    assert max(run["peak"]) >= geo.fifo_threshold
    assert max(run["peak"]) <= geo.fifo_depth


@pytest.mark.parametrize("rows, sources", [(1, 1), (3, 2), (9, 3), (20, 5)])
def test_bus_with_other_source_counts(rows, sources):
    _, geo = _geometry(rows, "min")
    counts = [120 if rows < 20 else 50] * sources
    run = _run_bus(geo, sources, counts, seed=100 + rows)
    _check_delivery(geo, sources, run)
    assert max(run["peak"]) >= geo.fifo_threshold


@pytest.mark.parametrize("rows", [3, 9])
def test_input_loader_waits_for_a_burst_of_reducer_items(rows):
    """The reducers offer bursts back to back while the loader offers all the time: the loader
    gets the bus only after (and between) the bursts."""
    _, geo = _geometry(rows)
    sources = 4
    counts = [80, 80, 80, 60]
    run = _run_bus(geo, sources, counts, seed=rows, offer="always", loader_start=0)
    _check_delivery(geo, sources, run)
    hs = run["handshakes"]
    loader = [t for t, i, _ in hs if i == sources - 1]
    last_reducer = max(t for t, i, _ in hs if i != sources - 1)
    assert loader, "the loader was never served"
    # the reducers offered from cycle 0 without a gap: the loader waited for all of them
    assert min(loader) > last_reducer
    order = [i for _, i, _ in hs]
    assert order[:240].count(sources - 1) == 0


@pytest.mark.parametrize("rows", [1, 9])
def test_reducers_are_served_round_robin(rows):
    """Whenever a reducer is served it is the first one offering, in cyclic order, after the
    reducer served before."""
    _, geo = _geometry(rows)
    sources = 5
    counts = [150, 60, 150, 100, 80]
    run = _run_bus(geo, sources, counts, seed=50 + rows, offer=0.6)
    _check_delivery(geo, sources, run)
    reducers = sources - 1
    last = reducers - 1                   # the arbiter starts at reducer 0
    checked = 0
    for t, i, valids in run["handshakes"]:
        if i == sources - 1:
            continue
        order = [(last + 1 + d) % reducers for d in range(reducers)]
        first = next(r for r in order if valids[r])
        assert i == first, f"cycle {t}: reducer {i} served, {first} was next (valids {valids})"
        last = i
        checked += 1
    assert checked == sum(counts[:-1])


@pytest.mark.parametrize("rows", [1, 9])
def test_reducers_always_offering_alternate_strictly(rows):
    _, geo = _geometry(rows)
    sources = 4
    run = _run_bus(geo, sources, [90, 90, 90, 10], seed=rows, offer="always",
                   drain="never_full")
    _check_delivery(geo, sources, run)
    order = [i for _, i, _ in run["handshakes"]]
    assert order[:270] == [0, 1, 2] * 90


@pytest.mark.parametrize("rows", [3, 20])
def test_bus_moves_an_item_every_cycle_when_nothing_stalls(rows):
    _, geo = _geometry(rows)
    sources = 3
    counts = [100, 100, 100]
    run = _run_bus(geo, sources, counts, seed=rows, offer="always", drain="never_full")
    _check_delivery(geo, sources, run)
    assert max(run["peak"]) < geo.fifo_threshold
    for cycles in run["cycles"]:
        assert cycles[-1] - cycles[0] + 1 == len(cycles), "bubbles on an unstalled bus"
    # the registered fan-out: the same cycle at every PE
    assert all(c == run["cycles"][0] for c in run["cycles"])


def test_bus_with_three_fan_out_levels():
    """65 PEs: a third register level of fan-out and of the almost-full OR."""
    _, geo = _geometry(65, "min")
    assert geo.bus_stages == 3 and geo.stall_stages == 3
    sources = 3
    run = _run_bus(geo, sources, [40, 40, 40], seed=65)
    _check_delivery(geo, sources, run)
    assert max(run["peak"]) >= geo.fifo_threshold


def test_bus_checks_its_arguments():
    _, geo = _geometry(3)
    for bad in (0, -1, 2.0):
        with pytest.raises(ValueError, match="sources"):
            ColumnBus(geo, bad)
