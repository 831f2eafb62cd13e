"""cocotb bench for the accelerator behind its UART link (``sparsemac_link``).

A :class:`UartLinkBench` owns the clock, a cocotbext-uart source on ``rx`` and sink on ``tx``,
and speaks :mod:`boards.link.protocol`. The cases: good frames (outputs bit-exact against the
reference model), a corrupted CRC, a dropped byte, a wrong length, an unknown type, a UART
framing error, garbage between frames, and the INFO request. After every fault the next good
frame must be answered correctly, and no fault may ever produce a RESULT. A design with uploaded
weights (``image`` in the parameters) gets them first; ``uploaded_weights`` checks the upload
itself: no result before a whole good image, a spoiled image (corrupted, dropped or
out-of-order chunk) refused until a new one, then bit-exact results.

``SPARSEMAC_UART_BENCH`` names an .npz with ``inputs``, ``expected`` (int), ``info`` (the
BoardInfo fields), ``baud``, ``period_ns`` (the accelerator's clock), ``link_period_ns`` (the
link's) and ``timeout_cycles`` (link cycles).
"""

import os

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, Timer, with_timeout
from cocotbext.uart import UartSink, UartSource

from boards.link import protocol as proto

__all__ = ["UartLinkBench"]


def _params():
    with np.load(os.environ["SPARSEMAC_UART_BENCH"], allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


class UartLinkBench:
    """Clock, UART driver (``rx``) and monitor (``tx``) of one ``sparsemac_link``."""

    def __init__(self, dut, params):
        self.dut = dut
        self.p = params
        self.core_period_ns = int(params["period_ns"])
        self.period_ns = int(params["link_period_ns"])      # timeouts count link cycles
        self.baud = int(params["baud"])
        self.bit_ns = 1e9 / self.baud
        self.timeout_cycles = int(params["timeout_cycles"])
        info = [int(v) for v in params["info"]]
        self.info = proto.BoardInfo(*info)
        Clock(dut.clk, self.core_period_ns, unit="ns").start()
        Clock(dut.link_clk, self.period_ns, unit="ns").start()
        dut.rx.value = 1
        self.source = UartSource(dut.rx, baud=self.baud, bits=8, stop_bits=1)
        self.sink = UartSink(dut.tx, baud=self.baud, bits=8, stop_bits=1)
        self.decoder = proto.FrameDecoder(proto.SYNC_REPLY)
        self.image = bytes(params["image"].tobytes()) if "image" in params else b""

    async def reset(self):
        self.dut.rst.value = 1
        self.dut.link_rst.value = 1
        await ClockCycles(self.dut.link_clk, 5)
        self.dut.rst.value = 0
        self.dut.link_rst.value = 0
        await ClockCycles(self.dut.link_clk, 5)

    async def send(self, data: bytes):
        await self.source.write(data)
        await self.source.wait()

    async def reply(self, *, max_bytes=None) -> proto.Frame:
        """The next good reply frame (fails the test after a generous timeout)."""
        n_bytes = max_bytes or (proto.HEADER_BYTES + self.info.out_features + 6)
        budget_ns = (n_bytes + 4) * 10 * self.bit_ns + 4 * self.timeout_cycles * self.period_ns

        async def collect():
            while True:
                data = await self.sink.read(1)
                frames = self.decoder.feed(bytes(data))
                if frames:
                    assert len(frames) == 1, f"several frames at once: {frames}"
                    return frames[0]

        return await with_timeout(collect(), int(budget_ns + 200_000), "ns")

    async def quiet(self, bit_times: float = 20):
        await Timer(int(bit_times * self.bit_ns), "ns")
        assert self.sink.empty(), f"unexpected bytes from the board: {bytes(self.sink.read_nowait())}"

    def request(self, kind, seq, payload=b"") -> bytes:
        return proto.encode_frame(proto.SYNC_REQUEST, kind, seq, payload)

    def infer_request(self, x, seq) -> bytes:
        """An INFER frame for the int8 input vector ``x``."""
        return self.request(proto.INFER, seq, bytes(int(v) & 0xFF for v in x))

    async def wait_timeouts(self, n: float):
        """``n`` link timeouts of quiet line: the board drops any half-received frame."""
        await Timer(int(n * self.timeout_cycles * self.period_ns), "ns")

    def load_request(self, offset, chunk, seq) -> bytes:
        return self.request(proto.LOAD, seq, proto.load_payload(offset, chunk))

    async def load(self, offset, chunk, seq):
        """One LOAD chunk; returns (bytes held, flags) from the LOADED reply."""
        await self.send(self.load_request(offset, chunk, seq))
        frame = await self.reply()
        assert frame.kind == proto.LOADED, f"expected LOADED, got {frame}"
        assert frame.seq == seq
        return proto.parse_loaded(frame.payload)

    async def upload(self, chunk=256, seq=100):
        """The whole weight image, in order; the board must then say it holds it."""
        held, flags = 0, 0
        for n, offset in enumerate(range(0, len(self.image), chunk)):
            held, flags = await self.load(offset, self.image[offset:offset + chunk],
                                          (seq + n) % 256)
            assert held == min(offset + chunk, len(self.image))
        assert flags == proto.FLAG_UPLOADED | proto.FLAG_LOADED, f"flags {flags:#x} after upload"

    async def infer(self, x, seq):
        await self.send(self.infer_request(x, seq))
        frame = await self.reply()
        assert frame.kind == proto.RESULT, f"expected a RESULT, got {frame}"
        assert frame.seq == seq, f"reply seq {frame.seq}, request seq {seq}"
        return proto.parse_result(frame.payload, self.info.out_features)

    async def expect_error(self, code, seq=None):
        frame = await self.reply()
        assert frame.kind == proto.ERROR, f"expected an ERROR frame, got {frame}"
        assert frame.payload == bytes([code]), \
            f"expected error {code} ({proto.ERRORS[code]}), got {frame.payload!r}"
        if seq is not None:
            assert frame.seq == seq, f"error frame seq {frame.seq}, expected {seq}"
        return frame

    async def check_good(self, n, seq):
        outputs, cycles = await self.infer(self.p["inputs"][n], seq)
        expected = self.p["expected"][n]
        assert np.array_equal(np.array(outputs), expected), \
            f"inference {n}: board {outputs}, reference {list(expected)}"
        assert cycles > 0
        return cycles


async def _bench(dut, *, upload=True):
    bench = UartLinkBench(dut, _params())
    await bench.reset()
    if bench.image and upload:
        await bench.upload()
    return bench


@cocotb.test()
async def info_request(dut):
    """INFO reports the shapes, PE count, design id and clock the host must match."""
    bench = await _bench(dut)
    await bench.send(bench.request(proto.INFO, 7))
    frame = await bench.reply()
    assert frame.kind == proto.INFO_REPLY and frame.seq == 7
    assert proto.parse_info(frame.payload) == bench.info


@cocotb.test()
async def good_frames(dut):
    """Every input gives the reference model's outputs, bit for bit, and its own seq back."""
    bench = await _bench(dut)
    cycles = []
    for n in range(len(bench.p["inputs"])):
        cycles.append(await bench.check_good(n, seq=(200 + n) % 256))
    dut._log.info("cycles per inference: %s", cycles)


@cocotb.test()
async def corrupted_crc(dut):
    """A flipped bit anywhere in a frame is a bad-CRC error, never a result."""
    bench = await _bench(dut)
    x = bench.p["inputs"][0]
    for position in (proto.HEADER_BYTES + 3, -1, 2):     # a payload byte, the CRC, the seq
        frame = bytearray(bench.infer_request(x, 11))
        frame[position] ^= 0x10
        await bench.send(bytes(frame))
        await bench.expect_error(proto.ERR_CRC)
        await bench.check_good(1, seq=12)


@cocotb.test()
async def dropped_byte(dut):
    """A frame missing a byte times out with an error; the next frame is answered."""
    bench = await _bench(dut)
    x = bench.p["inputs"][0]
    frame = bytearray(bench.infer_request(x, 21))
    del frame[proto.HEADER_BYTES + 5]
    await bench.send(bytes(frame))
    await bench.expect_error(proto.ERR_TIMEOUT, seq=21)
    await bench.check_good(2, seq=22)
    # the sync byte lost: the rest is noise; no reply at all may come, and no result
    frame = bytearray(bench.infer_request(x, 23))
    await bench.send(bytes(frame[1:]))
    await bench.wait_timeouts(3)
    for reply in bench.decoder.feed(bytes(bench.sink.read_nowait())):
        assert reply.kind == proto.ERROR, f"noise produced {reply}"
    await bench.check_good(0, seq=24)


@cocotb.test()
async def bad_length_and_type(dut):
    """Wrong length or unknown type: an error, the rest of the frame ignored, then recovery."""
    bench = await _bench(dut)
    await bench.send(bench.request(proto.INFER, 31, b"\x01\x02\x03"))
    await bench.expect_error(proto.ERR_LENGTH, seq=31)
    await bench.wait_timeouts(2)   # the board drains
    await bench.send(bench.request(0x33, 32, b"\x00" * 4))
    await bench.expect_error(proto.ERR_TYPE, seq=32)
    await bench.wait_timeouts(2)
    await bench.check_good(0, seq=33)


@cocotb.test()
async def framing_error(dut):
    """A byte with a low stop bit (a break, or the wrong baud rate) inside a frame."""
    bench = await _bench(dut)
    x = bench.p["inputs"][1]
    await bench.send(bench.infer_request(x, 41)[:9])
    bench.dut.rx.value = 0                   # hold the line low for two byte times
    await Timer(int(20 * bench.bit_ns), "ns")
    bench.dut.rx.value = 1
    await bench.expect_error(proto.ERR_FRAMING, seq=41)
    await bench.wait_timeouts(2)
    await bench.check_good(1, seq=42)


@cocotb.test()
async def garbage_between_frames(dut):
    """Bytes outside frames are skipped while hunting for the sync byte."""
    bench = await _bench(dut)
    await bench.send(b"\x00\xff\x13\x37")
    await bench.check_good(2, seq=51)


@cocotb.test()
async def uploaded_weights(dut):
    """Uploaded weights: refused before, spoiled by any bad chunk, right after a good image."""
    bench = await _bench(dut, upload=False)
    assert bench.image, "this bench's design takes its weights in the bitstream"
    # the fault cases work on the image's first bytes (a full upload takes long to simulate)
    image, half = bench.image, min(16, len(bench.image) // 2)

    async def flags():
        await bench.send(bench.request(proto.INFO, 1))
        frame = await bench.reply()
        return proto.parse_info(frame.payload).flags

    assert await flags() == proto.FLAG_UPLOADED
    await bench.send(bench.infer_request(bench.p["inputs"][0], 2))
    await bench.expect_error(proto.ERR_NOT_LOADED, seq=2)
    await bench.wait_timeouts(2)

    # a corrupted byte in the middle chunk: an error; the image cannot be continued, and
    # gives no result
    await bench.load(0, image[:half], 3)
    bad = bytearray(bench.load_request(half, image[half:half + 8], 4))
    bad[proto.HEADER_BYTES + 6] ^= 0x04
    await bench.send(bytes(bad))
    await bench.expect_error(proto.ERR_CRC, seq=4)
    for offset in (half, half + 8):
        await bench.send(bench.load_request(offset, image[offset:offset + 8], 5))
        await bench.expect_error(proto.ERR_ORDER, seq=5)
        await bench.wait_timeouts(2)
    await bench.send(bench.infer_request(bench.p["inputs"][0], 6))
    await bench.expect_error(proto.ERR_NOT_LOADED, seq=6)
    await bench.wait_timeouts(2)

    # a byte dropped inside a chunk: a timeout, and the image stays spoiled
    await bench.load(0, image[:half], 11)
    short = bytearray(bench.load_request(half, image[half:half + 12], 12))
    del short[proto.HEADER_BYTES + 7]
    await bench.send(bytes(short))
    await bench.expect_error(proto.ERR_TIMEOUT, seq=12)
    assert await flags() == proto.FLAG_UPLOADED

    # a good image; then a chunk that does not continue it and one past its end are refused
    # before they write anything, so the image stays; results bit-exact against the reference
    await bench.upload()
    assert await flags() == proto.FLAG_UPLOADED | proto.FLAG_LOADED
    await bench.send(bench.load_request(half + 2, image[half + 2:half + 9], 8))
    await bench.expect_error(proto.ERR_ORDER, seq=8)
    await bench.wait_timeouts(2)
    await bench.send(bench.load_request(len(image), b"\x00", 10))
    await bench.expect_error(proto.ERR_LENGTH, seq=10)
    await bench.wait_timeouts(2)
    assert await flags() == proto.FLAG_UPLOADED | proto.FLAG_LOADED
    for n in range(len(bench.p["inputs"])):
        await bench.check_good(n, seq=(60 + n) % 256)
