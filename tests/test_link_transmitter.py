"""The link's reply transmitter on its own, in Amaranth's simulator: each reply kind's bytes on
``tx`` (decoded by a :class:`~boards.link.uart.UARTRx`) are exactly the host's
:func:`~boards.link.protocol.encode_frame`."""

from dataclasses import replace

import pytest
from amaranth.hdl import Module
from amaranth.sim import Simulator

from boards.link import protocol as proto
from boards.link.transmitter import ReplyTransmitter
from boards.link.uart import UARTRx

DIVISOR = 4
INFO = proto.BoardInfo(784, 10, 8, 0xDEADBEEF, 60_000_000, proto.FLAG_UPLOADED)


def _send(kind, *, seq, code=0, count=0, loaded=0, outputs=b"", uploaded=True):
    """One reply request; returns the bytes that came out on ``tx`` and, for every cycle the
    line was low (a start or a zero bit), whether ``idle`` was low too."""
    dut = ReplyTransmitter(INFO, divisor=DIVISOR, uploaded=uploaded)
    m = Module()
    m.submodules.dut = dut
    m.submodules.rx = rx = UARTRx(DIVISOR)
    m.d.comb += rx.rx.eq(dut.tx)
    got, busy_while_sending = [], []

    async def request(ctx):
        for _ in range(3):
            await ctx.tick()
        assert ctx.get(dut.reply.idle)
        for port, value in ((dut.reply.kind, kind), (dut.reply.seq, seq),
                            (dut.reply.code, code), (dut.reply.count, count),
                            (dut.reply.loaded, loaded)):
            ctx.set(port, value)
        ctx.set(dut.reply.start, 1)
        await ctx.tick()
        ctx.set(dut.reply.start, 0)
        assert not ctx.get(dut.reply.idle)
        for _ in range(DIVISOR * 10 * 64):
            if ctx.get(dut.reply.idle):
                break
            await ctx.tick()
        else:
            raise AssertionError("the reply never ended")
        for _ in range(DIVISOR * 20):           # nothing more comes out
            await ctx.tick()

    async def results(ctx):                     # the accelerator's bytes, a gap between some
        for i, byte in enumerate(outputs):
            ctx.set(dut.output.payload, byte)
            ctx.set(dut.output.valid, 1)
            await ctx.tick().until(dut.output.ready)
            ctx.set(dut.output.valid, 0)
            for _ in range(i % 3):
                await ctx.tick()

    async def monitor(ctx):
        async for _, _, valid, data, error, line, idle in ctx.tick().sample(
                rx.data.valid, rx.data.payload, rx.framing_error, dut.tx, dut.reply.idle):
            assert not error
            if valid:
                got.append(data)
            if not line:
                busy_while_sending.append(not idle)

    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_testbench(request)
    sim.add_testbench(results, background=True)
    sim.add_process(monitor)
    sim.run()
    return bytes(got), busy_while_sending


def test_error_reply():
    got, busy = _send(proto.ERROR, seq=0x37, code=proto.ERR_CRC)
    assert got == proto.encode_frame(proto.SYNC_REPLY, proto.ERROR, 0x37, bytes([proto.ERR_CRC]))
    assert all(busy)


@pytest.mark.parametrize("uploaded, loaded", [(True, 1), (True, 0), (False, 0)])
def test_info_reply_flags_are_live(uploaded, loaded):
    got, busy = _send(proto.INFO_REPLY, seq=200, loaded=loaded, uploaded=uploaded)
    flags = (proto.FLAG_UPLOADED if uploaded else 0) | (proto.FLAG_LOADED if loaded else 0)
    expected = proto.encode_frame(proto.SYNC_REPLY, proto.INFO_REPLY, 200,
                                  proto.info_payload(replace(INFO, flags=flags)))
    assert got == expected
    assert proto.parse_info(got[proto.HEADER_BYTES:-2]).flags == flags
    assert all(busy)


def test_loaded_reply():
    count = 0x00012345
    got, _ = _send(proto.LOADED, seq=1, count=count, loaded=1)
    assert got == proto.encode_frame(
        proto.SYNC_REPLY, proto.LOADED, 1,
        proto.loaded_payload(count, proto.FLAG_UPLOADED | proto.FLAG_LOADED))


def test_result_reply_passes_the_outputs_through():
    payload = proto.result_payload([-128, -1, 0, 127, 5, 6, 7, 8, 9, 10], 123456)
    got, _ = _send(proto.RESULT, seq=255, outputs=payload)
    assert got == proto.encode_frame(proto.SYNC_REPLY, proto.RESULT, 255, payload)
