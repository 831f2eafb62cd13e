# amaranth: UnusedElaboratable=no
"""hw/packer.py LanePacker in Amaranth's simulator: a byte stream of vectors of ``length``
values into beats of ``lanes`` values, each vector zero-padded to whole beats."""

import numpy as np
import pytest
from amaranth.sim import Simulator

from hw.packer import LanePacker
from hw.simulation import input_beats


def _expected_beats(vectors, lanes):
    beats = []
    for v in vectors:
        beats += input_beats(v, lanes)
    return beats


def _run(dut, values, n_beats, rng, *, valid_probability, ready_probability):
    """Offer ``values`` on ``dut.i`` (random gaps), take ``n_beats`` beats from ``dut.o``
    (random back-pressure) and watch a while longer for extra beats. Also checks the stream
    rules on the way: an offered beat stays, unchanged, until it is taken."""
    got = []
    state = {"sent": False}

    async def driver(ctx):
        for v in values:
            while rng.random() > valid_probability:
                ctx.set(dut.i.valid, 0)
                # the payload is don't-care while not valid: garbage there must not leak
                ctx.set(dut.i.payload, int(rng.integers(-128, 128)))
                await ctx.tick()
            ctx.set(dut.i.payload, int(v))
            ctx.set(dut.i.valid, 1)
            await ctx.tick().until(dut.i.ready)
        ctx.set(dut.i.valid, 0)
        state["sent"] = True

    async def monitor(ctx):
        pending = None                     # a beat offered and not yet taken
        quiet = 0
        t = 0
        while len(got) < n_beats or not state["sent"] or quiet < 30:
            ready = rng.random() < ready_probability
            ctx.set(dut.o.ready, ready)
            _, _, valid, payload = await ctx.tick().sample(dut.o.valid, dut.o.payload)
            beat = [int(x) for x in payload] if valid else None
            if pending is not None:
                assert valid and beat == pending, "an offered beat changed or vanished"
            if valid and ready:
                got.append(beat)
                pending = None
            elif valid:
                pending = beat
            quiet = quiet + 1 if state["sent"] and not valid else 0
            t += 1
            assert t < 20 * (len(values) + 10) + 200, "the packer hangs"
        ctx.set(dut.o.ready, 0)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(driver, background=True)
    sim.add_testbench(monitor)
    sim.run()
    return got


def _vectors(length, count, rng):
    v = rng.integers(-128, 128, (count, length))
    # extremes: all -128, all 127, all -1, and vectors ending in a nonzero value
    if count > 4:
        v[1], v[2], v[3] = -128, 127, -1
    return v


@pytest.mark.parametrize("length", [1, 5, 8, 13])
@pytest.mark.parametrize("lanes", [1, 2, 3, 8])
def test_packer_packs_and_pads_vectors_into_beats(lanes, length):
    rng = np.random.default_rng(lanes * 100 + length)
    count = max(6, 400 // length)
    vectors = _vectors(length, count, rng)
    want = _expected_beats(vectors, lanes)
    assert len(want) == count * -(-length // lanes)
    dut = LanePacker(lanes, length)
    got = _run(dut, vectors.ravel(), len(want), rng, valid_probability=0.7,
               ready_probability=0.6)
    assert got == want


@pytest.mark.parametrize("lanes, length", [(3, 13), (8, 5), (1, 1), (2, 8)])
def test_packer_at_full_rate_and_under_heavy_back_pressure(lanes, length):
    rng = np.random.default_rng(lanes + length)
    vectors = _vectors(length, 40, rng)
    want = _expected_beats(vectors, lanes)
    for valid_p, ready_p in ((1.0, 1.0), (1.0, 0.1), (0.1, 1.0)):
        dut = LanePacker(lanes, length)
        got = _run(dut, vectors.ravel(), len(want), rng, valid_probability=valid_p,
                   ready_probability=ready_p)
        assert got == want, (valid_p, ready_p)


def test_packer_pads_with_zeros_after_a_full_beat_of_nonzeros():
    """The padding lanes of a short last beat are zero even when the beat before held
    nonzero values in those lanes."""
    lanes, length = 8, 10
    vectors = np.full((5, length), -1)
    vectors[:, 0] = 127
    want = _expected_beats(vectors, lanes)
    assert want[1] == [-1, -1, 0, 0, 0, 0, 0, 0]
    dut = LanePacker(lanes, length)
    got = _run(dut, vectors.ravel(), len(want), np.random.default_rng(0),
               valid_probability=0.8, ready_probability=0.5)
    assert got == want


def test_packer_checks_its_arguments():
    for lanes, length in ((0, 4), (4, 0), (2.0, 4), (4, "8")):
        with pytest.raises(ValueError):
            LanePacker(lanes, length)
