# amaranth: UnusedElaboratable=no
"""hw/weights.py WeightLoader in Amaranth's simulator: the uploaded weight image
(:func:`hw.images.weight_image`), a byte a beat with random gaps, must come out as the writes
that fill every PE's entry memory with exactly :func:`hw.images.pack_entries`; ``first``
restarts a load wherever it comes, and bytes past the image's end write nothing."""

import functools

import numpy as np
import pytest
from amaranth.sim import Simulator
from models import calibration, float_model

from compiler.build import compile_model
from hw.images import entry_bytes, entry_layout, geometry, pack_entries, weight_image
from hw.options import HardwareOptions
from hw.weights import WeightLoader


@functools.lru_cache(maxsize=None)
def _program(kind: str):
    if kind == "sparse":         # 2x2, 11-bit entries: two bytes each
        model = float_model([20, 16, 9], sparsity=0.6, seed=1, zero_cols=[(0, 3)])
        return compile_model(model, calibration(20), 4)
    if kind == "wide":           # 20-bit entries: three bytes, four padding bits in the last
        model = float_model([20, 16, 9], sparsity=0.6, seed=1)
        return compile_model(model, calibration(20), 4, index_bits=12)
    if kind == "holes":          # 4x1, the last two PEs without an entry (one padding word)
        model = float_model([6, 2, 1], sparsity=0.5, seed=4)
        return compile_model(model, calibration(6), 4, grid="4x1")
    if kind == "empty":          # every weight zero: every PE one padding word, PE 0 too
        model = float_model([6, 8, 4], sparsity=0.5, seed=4,
                            zero_rows=[(0, r) for r in range(8)] + [(1, r) for r in range(4)])
        return compile_model(model, calibration(6), 4)
    if kind == "tall":           # 4x2: eight PEs
        model = float_model([16, 22, 12, 6], sparsity=0.5, seed=5)
        return compile_model(model, calibration(16), 8, grid="4x2")
    raise KeyError(kind)


KINDS = ["sparse", "wide", "holes", "empty", "tall"]


def _geometry(kind):
    program = _program(kind)
    return program, geometry(program, HardwareOptions(weights="uploaded"))


def _image_writes(program, geo):
    """The writes the image must produce, in order: (pe, addr, word)."""
    return [(pe, addr, word) for pe in range(geo.pes)
            for addr, word in enumerate(pack_entries(program, pe, geo))]


def _load(geo, streams, rng):
    """Offer each stream of (byte, first) beats in turn, each beat after a random number of
    idle cycles (a random rate per stream). Returns, per stream, the writes (pe, addr, data)
    its bytes completed, and the bench's counts. Checks every cycle: one PE a write, and a
    byte taken exactly when nothing is written."""
    dut = WeightLoader(geo)
    writes = [[] for _ in streams]
    ends = np.cumsum([len(beats) for beats in streams])
    stats = {"taken": [0] * len(streams), "refused": 0}

    async def driver(ctx):
        for n, beats in enumerate(streams):
            rate = float(rng.choice([1.0, 0.7, 0.3]))
            for byte, first in beats:
                while rng.random() > rate:
                    ctx.set(dut.weights.valid, 0)
                    await ctx.tick()
                ctx.set(dut.weights.payload, {"data": int(byte), "first": int(first)})
                ctx.set(dut.weights.valid, 1)
                while True:
                    _, _, ready = await ctx.tick().sample(dut.weights.ready)
                    if ready:
                        break
                    stats["refused"] += 1
                stats["taken"][n] += 1
            ctx.set(dut.weights.valid, 0)
        for _ in range(4):
            await ctx.tick()

    async def monitor(ctx):
        taken = 0                       # bytes taken before this cycle
        async for _, _, en, addr, data, valid, ready in ctx.tick().sample(
                dut.en, dut.addr, dut.data, dut.weights.valid, dut.weights.ready):
            if en:
                assert en & (en - 1) == 0, f"en {en:b}: one PE a write"
                assert taken, "a write before any byte"
                # the write of the word the last byte taken completed
                stream = int(np.searchsorted(ends, taken - 1, side="right"))
                writes[stream].append((en.bit_length() - 1, addr, data))
            assert ready == (not en), "a byte is taken exactly when nothing is written"
            taken += valid and ready

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(driver)
    sim.add_testbench(monitor, background=True)
    sim.run()
    return writes, stats


def _beats(data: bytes, first=True):
    return [(b, first and k == 0) for k, b in enumerate(data)]


def _memories(geo, writes):
    """What every PE's entry memory holds after ``writes`` (None: never written)."""
    mems = [[None] * d for d in geo.entry_depth]
    for pe, addr, data in writes:
        assert addr < geo.entry_depth[pe], f"PE {pe}: address {addr} past its memory"
        mems[pe][addr] = data
    return mems


def _check_memories(program, geo, writes):
    mems = _memories(geo, writes)
    for pe in range(geo.pes):
        assert None not in mems[pe], f"PE {pe}: words never written"
        assert np.array_equal(np.array(mems[pe]), np.array(pack_entries(program, pe, geo))), pe


def _check_sequence(got, want):
    got, want = np.array(got, dtype=np.int64), np.array(want, dtype=np.int64)
    assert got.shape == want.shape, f"{len(got)} writes, expected {len(want)}"
    assert np.array_equal(got, want), f"first difference at write " \
        f"{int(np.flatnonzero((got != want).any(axis=1))[0])}"


@pytest.mark.parametrize("kind", KINDS)
def test_the_image_fills_every_pes_memory(kind):
    program, geo = _geometry(kind)
    image = weight_image(program, geo)
    want = _image_writes(program, geo)
    assert len(image) == len(want) * entry_bytes(geo)
    rng = np.random.default_rng(len(image))
    writes, stats = _load(geo, [_beats(image)], rng)
    assert stats["taken"] == [len(image)]
    # in order: PE 0 from address 0, then PE 1, ... one write per word
    _check_sequence(writes[0], want)
    _check_memories(program, geo, writes[0])
    assert stats["refused"] > 0, "a write's cycle must hold a byte back"


def test_padding_bits_of_the_last_byte_are_not_written():
    """20-bit entries in three bytes: whatever the top four bits say, the words are the
    image's."""
    program, geo = _geometry("wide")
    size, width = entry_bytes(geo), entry_layout(geo).size
    assert 8 * size - width == 4
    rng = np.random.default_rng(3)
    image = bytearray(weight_image(program, geo))
    for k in range(size - 1, len(image), size):
        image[k] |= int(rng.integers(1, 16)) << 4
    writes, _ = _load(geo, [_beats(bytes(image))], rng)
    _check_sequence(writes[0], _image_writes(program, geo))


@pytest.mark.parametrize("kind", ["sparse", "wide", "holes", "tall"])
def test_first_restarts_a_load_midway(kind):
    """Part of an image (cut anywhere: inside a word, at a PE's boundary), then the whole
    image: the second load starts from PE 0, address 0, and the part written before is the
    image's beginning. Garbage with ``first`` before it changes nothing either."""
    program, geo = _geometry(kind)
    image = weight_image(program, geo)
    size = entry_bytes(geo)
    want = _image_writes(program, geo)
    rng = np.random.default_rng(sum(image) + len(image))
    depth0 = geo.entry_depth[0]
    cuts = [int(rng.integers(1, len(image))), size * depth0, size * depth0 + 1, size - 1]
    for cut in cuts:
        garbage = bytes(rng.integers(0, 256, int(rng.integers(1, 3 * size + 2)),
                                     dtype=np.uint8))
        streams = [_beats(image[:cut]), _beats(garbage), _beats(image)]
        writes, stats = _load(geo, streams, rng)
        assert stats["taken"] == [cut, len(garbage), len(image)]
        _check_sequence(writes[0], want[:cut // size])
        # the garbage's whole words go to PE 0 (and on) from address 0
        assert [(pe, a) for pe, a, _ in writes[1]] == [(pe, a) for pe, a, _ in
                                                       want[:len(garbage) // size]]
        _check_sequence(writes[2], want)
        _check_memories(program, geo, writes[0] + writes[1] + writes[2])


@pytest.mark.parametrize("kind", ["sparse", "holes", "empty"])
def test_bytes_past_the_end_are_dropped(kind):
    """Bytes after a whole image (and before any ``first``: the loader starts complete) are
    taken and write nothing; a new image with ``first`` loads again."""
    program, geo = _geometry(kind)
    image = weight_image(program, geo)
    want = _image_writes(program, geo)
    rng = np.random.default_rng(7)

    def junk(n):
        return [(int(b), 0) for b in rng.integers(0, 256, n)]

    streams = [junk(11), _beats(image), junk(5 * entry_bytes(geo) + 3), _beats(image),
               junk(4)]
    writes, stats = _load(geo, streams, rng)
    assert stats["taken"] == [len(s) for s in streams]
    assert writes[0] == [] and writes[2] == [] and writes[4] == []
    _check_sequence(writes[1], want)
    _check_sequence(writes[3], want)
    _check_memories(program, geo, writes[1])
