# amaranth: UnusedElaboratable=no
"""The input loader in Amaranth's simulator: input beats onto the C buses, bank by bank, gated
by the reducers' drain parities."""

import numpy as np
import pytest
from amaranth.sim import Simulator
from models import calibration, float_model

from compiler.build import compile_model
from hw.images import geometry
from hw.loader import InputLoader
from hw.options import HardwareOptions
from hw.simulation import input_beats

_PROGRAMS = {}


def _program(shapes, grid, dense=False):
    key = (tuple(shapes), grid, dense)
    if key not in _PROGRAMS:
        rows, cols = map(int, grid.split("x"))
        model = float_model(shapes, sparsity=0.6, seed=1)
        _PROGRAMS[key] = compile_model(model, calibration(shapes[0]), rows * cols, grid=grid,
                                       dense=dense)
    return _PROGRAMS[key]


def _inputs(rng, n, features, *, density=0.5):
    x = rng.integers(-128, 128, (n, features))
    x[rng.random(x.shape) > density] = 0
    x[0] = 0                                     # an inference of zeros only
    x[1] = rng.integers(1, 128, features)        # one without a zero
    x[-1, -1] = -128
    return x


def _run(geo, x, rng, *, ready_probability=1.0, valid_probability=1.0, drain_delay):
    """Feed ``x`` [N, in] through an InputLoader and model the reducers' drains of its
    layer-0 banks: ``drain_delay(n)`` -> (cycles after inference n's last end token until the
    reducers are part-way, cycles more until every one has drained it); part-way, neither
    drained flag is set. Asserts, cycle by cycle, the handshake rules; returns what each bus
    carried and the event log."""
    dut = InputLoader(geo)
    C, B, T, F = geo.cols, geo.banks[0], geo.beats, geo.in_features
    n_inf = len(x)
    beats = []
    for n, row in enumerate(x):
        for t, lanes in enumerate(input_beats(row, C)):
            if t == T - 1:                       # nonzero garbage in the padding lanes
                for i in range(C):
                    if t * C + i >= F:
                        lanes[i] = int(rng.choice([-128, -1, 1, 127, 55]))
            beats.append((n, t, lanes))
    got = [[] for _ in range(C)]
    log = {"taken_first": {}, "ended": {}, "freed": {}, "refused": 0, "started": []}

    async def bench(ctx):
        drains = [0] * B                 # every reducer drained bank b this often
        partway = [False] * B
        pending = []                     # (cycle, bank, what): drain events
        ends = [0] * n_inf               # buses that delivered inference n's end token
        nxt = 0                          # next beat to offer
        offering = False
        cycle = 0
        first_taken_before = False
        while nxt < len(beats) or any(e < C for e in ends) or pending:
            assert cycle < 40 * len(beats) + 4000, f"the loader hung (beat {nxt}, ends {ends})"
            # the reducers' drain parities of the layer-0 banks
            for when, b, what in sorted(p for p in pending if p[0] <= cycle):
                pending.remove((when, b, what))
                if what == "partway":
                    partway[b] = True
                else:
                    partway[b] = False
                    drains[b] += 1
                    log["freed"].setdefault(b, []).append(cycle)
            even = sum((drains[b] % 2 == 0 and not partway[b]) << b for b in range(B))
            odd = sum((drains[b] % 2 == 1 and not partway[b]) << b for b in range(B))
            ctx.set(dut.drained_even, even)
            ctx.set(dut.drained_odd, odd)
            # the input
            if nxt < len(beats) and not offering:
                offering = rng.random() < valid_probability
            ctx.set(dut.input.valid, offering)
            if offering:
                ctx.set(dut.input.payload, beats[nxt][2])
            readies = [rng.random() < ready_probability for _ in range(C)]
            for c in range(C):
                ctx.set(getattr(dut, f"bus{c}").ready, readies[c])
            buses = [getattr(dut, f"bus{c}") for c in range(C)]
            sampled = await ctx.tick().sample(
                dut.input.ready, dut.started, *[b.valid for b in buses],
                *[b.payload for b in buses])
            in_ready, started = sampled[2], sampled[3]
            valids, payloads = sampled[4:4 + C], sampled[4 + C:]
            taken = offering and in_ready
            if offering:
                n, t, _ = beats[nxt]
                if t == 0:
                    b, k = n % B, n // B             # the loader's k-th fill of bank b
                    free = (odd if k % 2 else even) >> b & 1
                    assert not (in_ready and not free), (
                        f"inference {n}'s first beat was taken while bank {b} was not free "
                        f"(drains {drains[b]}, fill {k}, part-way {partway[b]})")
                    if not in_ready and not free:
                        log["refused"] += 1
            # `started` a cycle after an inference's first beat was taken (a register)
            assert started == first_taken_before, f"cycle {cycle}: started"
            if started:
                log["started"].append(cycle - 1)
            first_taken_before = bool(taken and beats[nxt][1] == 0)
            if taken:
                if beats[nxt][1] == 0:
                    log["taken_first"][beats[nxt][0]] = cycle
                nxt += 1
                offering = False
            for c in range(C):
                if valids[c] and readies[c]:
                    p = payloads[c]
                    if p.end:
                        item = ("end", int(p.slot))
                        n = sum(1 for it in got[c] if it[0] == "end")
                        assert n < n_inf, f"bus {c}: an end token too many"
                        ends[n] += 1
                        if ends[n] == C:                # bank filled: the reducers drain it
                            log["ended"][n] = cycle
                            first, rest = drain_delay(n)
                            pending.append((cycle + first, n % B, "partway"))
                            pending.append((cycle + first + rest, n % B, "drained"))
                    else:
                        item = (int(p.column), int(p.value), int(p.slot))
                    got[c].append(item)
            cycle += 1
        # nothing more comes out
        for c in range(C):
            ctx.set(getattr(dut, f"bus{c}").ready, 1)
        for _ in range(20):
            sampled = await ctx.tick().sample(*[getattr(dut, f"bus{c}").valid
                                                for c in range(C)], dut.started)
            assert not any(sampled[2:]), "the loader sent more than its inputs"

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return got, log


def _expected(geo, x):
    C, B, T, F = geo.cols, geo.banks[0], geo.beats, geo.in_features
    want = [[] for _ in range(C)]
    for n, row in enumerate(x):
        for c in range(C):
            for t in range(T):
                i = t * C + c
                if i < F and (row[i] != 0 or not geo.skip_zero_activations):
                    want[c].append((t, int(row[i]), n % B))
            want[c].append(("end", n % B))
    return want


@pytest.mark.parametrize("shapes, grid, banks, dense", [
    ([21, 16, 9], "3x2", 2, False),      # one padding lane in the last beat
    ([21, 12, 5], "4x4", 3, False),      # three padding lanes
    ([3, 8, 5], "4x4", 1, False),        # one beat per inference
    ([7, 6, 4], "2x1", 2, False),        # one bus
    ([9, 5], "2x2", 1, False),           # one layer: the only banks are layer 0's
    ([21, 16, 9], "3x2", 2, True),       # dense: zeros are sent too
    ([21, 12, 5], "4x4", 4, True),
])
def test_loader_puts_each_lane_on_its_bus(shapes, grid, banks, dense):
    program = _program(shapes, grid, dense)
    geo = geometry(program, HardwareOptions(banks=banks))
    assert geo.skip_zero_activations is (not dense)
    rng = np.random.default_rng(len(shapes) + banks + 10 * dense)
    x = _inputs(rng, 14, geo.in_features)
    got, log = _run(geo, x, rng, ready_probability=0.6, valid_probability=0.7,
                    drain_delay=lambda n: (int(rng.integers(0, 12)), int(rng.integers(1, 30))))
    want = _expected(geo, x)
    for c in range(geo.cols):
        assert got[c] == want[c], f"bus {c}"
    # consecutive inferences take the banks in turn
    for c in range(geo.cols):
        assert [it[1] for it in got[c] if it[0] == "end"] == [n % banks for n in range(len(x))]
    assert len(log["started"]) == len(x)
    assert log["started"] == [log["taken_first"][n] for n in range(len(x))]
    if dense:
        assert any(v == 0 for c in range(geo.cols) for it in got[c] if it[0] != "end"
                   for v in [it[1]])


@pytest.mark.parametrize("banks", [1, 2])
def test_loader_waits_for_a_free_bank(banks):
    """The reducers take long to drain: the loader must hold the next inference for a bank
    (input.ready low, nothing on the buses, no ``started``) until every reducer drained it,
    then go on at once."""
    program = _program([21, 16, 9], "3x2")
    geo = geometry(program, HardwareOptions(banks=banks))
    rng = np.random.default_rng(banks)
    x = _inputs(rng, 6, geo.in_features)
    hold = 150
    got, log = _run(geo, x, rng, drain_delay=lambda n: (hold - 40, 40))
    assert got == _expected(geo, x)
    for n in range(banks, len(x)):
        free = log["freed"][n % banks][n // banks - 1]
        assert free - log["ended"][n - banks] == hold
        # taken no earlier than the drain, and at once: the flag is registered, a cycle late
        # (nothing else holds it back: the buses are always ready)
        assert log["taken_first"][n] == free + 1, (n, log["taken_first"][n], free)
    if banks == 1:                    # offered all along, refused all along
        assert log["refused"] >= (len(x) - 1) * (hold - 1)
    if banks == 2:                    # the second inference needs no drain
        assert log["taken_first"][1] - log["taken_first"][0] < 3 * geo.beats


def test_loader_neither_flag_means_not_free():
    """Both drained flags low (the reducers part-way through a drain) is not free, whatever
    the loader's fill parity of that bank."""
    program = _program([7, 6, 4], "2x1")
    geo = geometry(program, HardwareOptions(banks=1))
    rng = np.random.default_rng(7)
    x = _inputs(rng, 4, geo.in_features)
    got, log = _run(geo, x, rng, drain_delay=lambda n: (1, 120))
    assert got == _expected(geo, x)
    for n in range(1, len(x)):
        assert log["taken_first"][n] == log["freed"][0][n - 1] + 1
        assert log["taken_first"][n] - log["ended"][n - 1] == 122
