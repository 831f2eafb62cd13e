# amaranth: UnusedElaboratable=no
"""The output unit in Amaranth's simulator: the reducers' last-layer results, two buffers in
turn, streamed in model order."""

import numpy as np
import pytest
from amaranth.sim import Simulator
from models import calibration, float_model

from compiler.build import compile_model
from hw.images import geometry
from hw.options import HardwareOptions
from hw.output import OutputUnit

_PROGRAMS = {}


def _program(shapes, grid):
    key = (tuple(shapes), grid)
    if key not in _PROGRAMS:
        rows, cols = map(int, grid.split("x"))
        model = float_model(shapes, sparsity=0.5, seed=2)
        _PROGRAMS[key] = compile_model(model, calibration(shapes[0]), rows * cols, grid=grid)
    return _PROGRAMS[key]


def _run(program, values, rng, *, ready_probability, write_probability, flag_delay=0,
         garbage=True):
    """The reducers write ``values`` [N, out] (inference n into buffer n % 2, each reducer its
    own outputs in a random order, as soon as its buffer is free: its fill parity equals the
    unit's read parity), then flip their fill parities; the AND of the parities reaches the
    unit ``flag_delay`` cycles later. Returns (outputs, log)."""
    geo = geometry(program, HardwareOptions())
    dut = OutputUnit(program, geo)
    R, N, per = geo.rows, geo.out_features, geo.out_slots[-1]
    group, local = program.output_place()
    n_inf = len(values)
    got = []
    log = {"completed": [], "filled": {}, "last_out": {}, "idle": []}

    async def bench(ctx):
        fill = [[0, 0] for _ in range(R)]          # each reducer's fill parity per buffer
        job = [0] * R                              # inference each reducer writes next
        todo = [None] * R                          # its writes still to do
        flags = []                                 # (filled_even, filled_odd) per cycle
        parity = 0
        cycle = 0
        while len(got) < n_inf * N:
            assert cycle < 200 * n_inf * N + 2000, f"the output unit hung ({len(got)} out)"
            # the reducers
            for r in range(R):
                if todo[r] is None and job[r] < n_inf:
                    b = job[r] % 2
                    if fill[r][b] == (parity >> b & 1):      # buffer b is free
                        mine = [int(k) for k in np.flatnonzero(group == r)]
                        writes = [(b * per + int(local[i]), int(values[job[r]][i]))
                                  for i in mine]
                        if garbage:         # the same address twice: the last write counts
                            for i in mine[:1]:
                                writes.insert(0, (b * per + int(local[i]), 99))
                        todo[r] = writes
                res = getattr(dut, f"result{r}")
                if todo[r] is not None and todo[r] and rng.random() < write_probability:
                    addr, value = todo[r].pop(0)
                    ctx.set(res.valid, 1)
                    ctx.set(res.payload, {"addr": addr, "value": value})
                else:
                    ctx.set(res.valid, 0)
                    ctx.set(res.payload, {"addr": int(rng.integers(0, geo.out_depth)),
                                          "value": int(rng.integers(-128, 128))})
            even = sum(all(fill[r][b] == 0 for r in range(R)) << b for b in range(2))
            odd = sum(all(fill[r][b] == 1 for r in range(R)) << b for b in range(2))
            flags.append((even, odd))
            seen = flags[max(0, cycle - flag_delay)]
            ctx.set(dut.filled_even, seen[0])
            ctx.set(dut.filled_odd, seen[1])
            ready = rng.random() < ready_probability
            ctx.set(dut.output.ready, ready)
            _, _, valid, payload, completed, par, idle = await ctx.tick().sample(
                dut.output.valid, dut.output.payload, dut.completed, dut.parity, dut.idle)
            # a reducer is done once its last write went in (this edge)
            for r in range(R):
                if todo[r] is not None and not todo[r]:
                    b = job[r] % 2
                    fill[r][b] ^= 1
                    log["filled"].setdefault(job[r], []).append(cycle)
                    job[r] += 1
                    todo[r] = None
            if completed:
                n = len(log["completed"])
                assert n < n_inf, "completed once too often"
                b = n % 2
                # the flags the unit saw say buffer b is complete for this inference
                assert (seen[1] if (n // 2) % 2 == 0 else seen[0]) >> b & 1, (n, seen)
                log["completed"].append(cycle)
            if valid and ready:
                got.append(payload)
                if len(got) % N == 0:
                    log["last_out"][len(got) // N - 1] = cycle
            log["idle"].append(idle)
            if par != parity:
                log.setdefault("flips", []).append((cycle, par ^ parity))
            parity = par
            cycle += 1
        # nothing more: no completion, no output, and idle
        ctx.set(dut.output.ready, 1)
        for r in range(R):
            ctx.set(getattr(dut, f"result{r}").valid, 0)
        for _ in range(30):
            _, _, valid, completed, idle, par = await ctx.tick().sample(
                dut.output.valid, dut.completed, dut.idle, dut.parity)
            assert not valid and not completed and idle
        log["parity"] = par

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return np.array(got, dtype=np.int64).reshape(n_inf, N), log


def _check(program, values, log):
    n_inf = len(values)
    assert len(log["completed"]) == n_inf
    for n in range(n_inf):
        # complete only once every reducer wrote the inference
        assert log["completed"][n] > max(log["filled"][n])
        assert log["completed"][n] < log["last_out"][n]
        if n:
            assert log["completed"][n] > log["last_out"][n - 1] - program.model.out_features
        # idle: never while an inference is on its way out; at once after its last value
        assert not any(log["idle"][log["completed"][n] + 1:log["last_out"][n] + 1]), n
        assert log["idle"][log["last_out"][n] + 1] if log["last_out"][n] + 1 < len(
            log["idle"]) else True
    # each buffer's read parity: one flip per inference, of its buffer, once all its values
    # were read from the buffer (at least N cycles of reads), and by its last output
    N = program.model.out_features
    assert [bit for _, bit in log["flips"]] == [1 << (n % 2) for n in range(n_inf)]
    for n, (cycle, _) in enumerate(log["flips"]):
        assert log["completed"][n] + N <= cycle <= log["last_out"][n] + 1, (n, cycle)
    assert log["parity"] == ((n_inf + 1) // 2 % 2) | ((n_inf // 2 % 2) << 1)


@pytest.mark.parametrize("shapes, grid", [
    ([20, 16, 9], "3x2"),
    ([12, 8, 2], "4x2"),       # reducers without a last-layer output
    ([10, 7, 4], "1x1"),
    ([11, 9, 13], "2x1"),
])
def test_output_unit_streams_in_model_order(shapes, grid):
    program = _program(shapes, grid)
    rng = np.random.default_rng(shapes[0] * 100 + shapes[-1])
    values = rng.integers(-128, 128, (9, program.model.out_features))
    got, log = _run(program, values, rng, ready_probability=0.5, write_probability=0.6,
                    flag_delay=2)
    assert np.array_equal(got, values)
    _check(program, values, log)


def test_output_unit_two_inferences_back_to_back():
    """Both buffers written before any output is taken: the second waits for the first, and
    the output stream is exactly the two inferences, in order, once each."""
    program = _program([20, 16, 9], "3x2")
    rng = np.random.default_rng(4)
    values = rng.integers(-128, 128, (2, program.model.out_features))
    got, log = _run(program, values, rng, ready_probability=0.25, write_probability=1.0)
    assert np.array_equal(got, values)
    _check(program, values, log)
    # both were complete before the first output left: the second still completes later
    assert max(log["filled"][1]) < log["last_out"][0]
    assert log["completed"][1] > log["last_out"][0] - program.model.out_features


def test_output_unit_full_speed():
    """Output always ready: the model order straight from the memories, at about a value a
    cycle once streaming (four values in flight at most: four every five cycles)."""
    program = _program([11, 9, 13], "2x1")
    rng = np.random.default_rng(5)
    values = rng.integers(-128, 128, (6, program.model.out_features))
    got, log = _run(program, values, rng, ready_probability=1.0, write_probability=1.0,
                    garbage=False)
    assert np.array_equal(got, values)
    _check(program, values, log)
    N = program.model.out_features
    for n in range(len(values)):
        # completed, then the ROM, the buffer and the queue: N values a few cycles later
        assert log["last_out"][n] - log["completed"][n] <= -(-5 * N // 4) + 6
