"""The link's request receiver on its own, in Amaranth's simulator: frames sent through a
:class:`~boards.link.uart.UARTTx` onto its ``rx`` line, seeded random good and faulty ones; a
good INFER gives exactly its inputs and a RESULT reply, every fault an ERROR reply with its
code and no inputs at all."""

import numpy as np
import pytest
from amaranth.hdl import Module
from amaranth.sim import Simulator

from boards.link import protocol as proto
from boards.link.receiver import RequestReceiver
from boards.link.uart import UARTTx

DIVISOR = 4
TIMEOUT = 80                      # link cycles of quiet line inside a frame
IN_FEATURES = 5
INFO = proto.BoardInfo(IN_FEATURES, 3, 2, 0x1234, 50_000_000)


def _run(frames):
    """Send each byte string of ``frames`` (a quiet gap of a few timeouts after each); returns
    the replies asked for, as (kind, seq, code), and every input byte given out."""
    dut = RequestReceiver(INFO, divisor=DIVISOR, timeout_cycles=TIMEOUT)
    m = Module()
    m.submodules.dut = dut
    m.submodules.tx = tx = UARTTx(DIVISOR)
    m.d.comb += dut.rx.eq(tx.tx)
    replies, inputs = [], []

    async def send(ctx):
        for frame in frames:
            for byte in frame:
                ctx.set(tx.data.payload, byte)
                ctx.set(tx.data.valid, 1)
                await ctx.tick().until(tx.data.ready)
                ctx.set(tx.data.valid, 0)
            for _ in range(DIVISOR * 10 + 3 * TIMEOUT):
                await ctx.tick()

    async def transmitter(ctx):          # what ReplyTransmitter does with a request: busy a while
        ctx.set(dut.reply.idle, 1)
        ctx.set(dut.input.ready, 1)
        busy, started = 0, False
        async for _, _, start, kind, seq, code, valid, data in ctx.tick().sample(
                dut.reply.start, dut.reply.kind, dut.reply.seq, dut.reply.code,
                dut.input.valid, dut.input.payload):
            if valid:
                inputs.append(data)
            if started:                  # the request's fields hold from the cycle after start
                replies.append((kind, seq, code if kind == proto.ERROR else 0))
            started = bool(start)
            if start:
                busy = 30
            busy = max(0, busy - 1)
            ctx.set(dut.reply.idle, busy == 0)

    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_testbench(send)
    sim.add_process(transmitter)
    sim.run_until(1e-8 * (sum(len(f) for f in frames) * DIVISOR * 11
                          + len(frames) * (DIVISOR * 10 + 3 * TIMEOUT + 200)))
    return replies, [b - 256 if b > 127 else b for b in inputs]


def _request(kind, seq, payload=b""):
    return proto.encode_frame(proto.SYNC_REQUEST, kind, seq, payload)


@pytest.mark.parametrize("frame, reply, gives", [
    (_request(proto.INFER, 7, bytes([1, 2, 0xFF, 0x80, 0x7F])), (proto.RESULT, 7, 0),
     [1, 2, -1, -128, 127]),
    (_request(proto.INFO, 9), (proto.INFO_REPLY, 9, 0), []),
    (_request(proto.INFER, 3, b"\x01\x02"), (proto.ERROR, 3, proto.ERR_LENGTH), []),
    (_request(0x44, 4, b""), (proto.ERROR, 4, proto.ERR_TYPE), []),
    (_request(proto.LOAD, 5, b"\x00" * 6), (proto.ERROR, 5, proto.ERR_TYPE), []),
    (_request(proto.INFER, 6, bytes(5))[:-1] + b"\x00", (proto.ERROR, 6, proto.ERR_CRC), []),
    (_request(proto.INFER, 8, bytes(5))[:9], (proto.ERROR, 8, proto.ERR_TIMEOUT), []),
    (b"\x00\x13\x37" + _request(proto.INFO, 2), (proto.INFO_REPLY, 2, 0), []),
])
def test_each_kind_of_frame(frame, reply, gives):
    replies, inputs = _run([frame])
    assert replies == [reply]
    assert inputs == gives


def test_random_frames_good_and_bad():
    """Seeded random inputs, a third of the frames with one bit flipped somewhere after the
    sync byte: every good one's inputs arrive in order, no bad one's do, each gets its reply."""
    rng = np.random.default_rng(11)
    frames, want_replies, want_inputs = [], [], []
    for n in range(60):
        x = rng.integers(-128, 128, IN_FEATURES)
        frame = bytearray(_request(proto.INFER, n, bytes(int(v) & 0xFF for v in x)))
        if n % 3 == 1:
            at = int(rng.integers(1, len(frame)))
            frame[at] ^= 1 << int(rng.integers(8))
            if at == 2:                               # the seq byte itself
                want_replies.append((proto.ERROR, frame[2], proto.ERR_CRC))
            elif at in (3, 4):                        # the length: refused for it
                want_replies.append((proto.ERROR, n, proto.ERR_LENGTH))
            elif at == 1:                             # the type: INFER no more
                kind = frame[1]
                code = (proto.ERR_LENGTH if kind == proto.INFO else proto.ERR_TYPE)
                want_replies.append((proto.ERROR, n, code))
            else:
                want_replies.append((proto.ERROR, n, proto.ERR_CRC))
        else:
            want_replies.append((proto.RESULT, n, 0))
            want_inputs.extend(int(v) for v in x)
        frames.append(bytes(frame))
    replies, inputs = _run(frames)
    assert replies == want_replies
    assert np.array_equal(inputs, want_inputs)
