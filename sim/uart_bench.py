"""cocotb bench for the accelerator behind its UART link (``sparsemac_link``).

A :class:`UartLinkBench` owns the clock, a cocotbext-uart source on ``rx`` and sink on ``tx``,
and drives them with the host's own client (:class:`boards.link.client.LinkClient`, through
:class:`CocotbTransport`): what ``python -m compiler run`` does to a board is what the
simulated board gets. Faults are raw frames on the same line. The cases: good frames (outputs
bit-exact against the reference model), a corrupted CRC, a dropped byte, a wrong length, an
unknown type, a UART framing error, garbage between frames, and the INFO request. After every
fault the next good frame must be answered correctly, and no fault may ever produce a RESULT.
A design with uploaded weights (``image`` in the parameters) gets them first;
``uploaded_weights`` checks the upload itself: no result before a whole good image, a spoiled
image (corrupted, dropped or out-of-order chunk) refused until a new one, then bit-exact
results. A design that boots from flash (``flash`` in the parameters: the flash image, and
``flash_offset``) has a SPI flash model (:class:`sim.spi_flash.SPIFlashModel`) on its flash
pins: ``flash_boot`` checks results bit-exact after the boot with no LOAD sent,
``flash_boot_corrupt`` an image with a bad CRC (the flag, the error, recovery by upload) and
``flash_boot_erased`` an empty flash (no image, no error).

``SPARSEMAC_UART_BENCH`` names an .npz with ``inputs``, ``expected`` (int), ``info`` (the
BoardInfo fields), ``baud``, ``period_ns`` (the accelerator's clock), ``link_period_ns`` (the
link's) and ``timeout_cycles`` (link cycles).
"""

import os

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge, Timer
from cocotbext.uart import UartSink, UartSource

from boards.link import protocol as proto
from boards.link.client import LinkClient, drive_async
from sim.spi_flash import SPIFlashModel

__all__ = ["UartLinkBench", "CocotbTransport"]

#: what the simulated board may take beyond the bytes' own time to answer (compute, clock
#: crossings), in simulated seconds
REPLY_SLACK_S = 200e-6


def _params():
    with np.load(os.environ["SPARSEMAC_UART_BENCH"], allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


class CocotbTransport:
    """The host client's transport (:func:`~boards.link.client.drive_async`) on a simulated
    UART: bytes out through a cocotbext-uart source, in through a sink, in simulated time."""

    def __init__(self, source: UartSource, sink: UartSink):
        self.source, self.sink = source, sink

    async def send(self, data: bytes) -> None:
        self.sink.clear()                     # as a host port's reset_input_buffer()
        await self.source.write(data)
        await self.source.wait()

    async def receive(self, max_bytes: int, timeout_s: float) -> bytes:
        await self.sink.wait(max(1, int(timeout_s * 1e9)), "ns")
        return bytes(self.sink.read_nowait(min(max_bytes, self.sink.count())))

    async def pause(self, seconds: float) -> None:
        await Timer(max(1, int(seconds * 1e9)), "ns")


class UartLinkBench:
    """Clock, UART driver (``rx``) and monitor (``tx``) of one ``sparsemac_link``; good
    requests through the host client (no retries: a fault must show), faults as raw bytes."""

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
        self.transport = CocotbTransport(self.source, self.sink)
        self.client = LinkClient(baud=self.baud, retries=0, reply_slack_s=REPLY_SLACK_S,
                                 board_timeout_s=self.timeout_cycles * self.period_ns * 1e-9)
        self.image = bytes(params["image"].tobytes()) if "image" in params else b""
        self.flash = None
        if "flash" in params:
            dut.flash__cipo.value = 1
            self.flash = SPIFlashModel(b"\xff" * int(params["flash_offset"])
                                       + bytes(params["flash"].tobytes()), asleep=True)

    async def serve_flash(self):
        """The flash model on the pins, sampled between the link clock's edges (the master's
        outputs change on rising edges) until the boot's READ is over."""
        dut, flash = self.dut, self.flash
        sck = cs = 0
        while True:
            await FallingEdge(dut.link_clk)
            new_cs, new_sck = int(dut.flash__cs.value), int(dut.flash__sck.value)
            if new_cs and not cs:
                flash.select()
            elif cs and not new_cs:
                flash.deselect()
                if flash.reads:
                    return
            elif new_cs and new_sck and not sck:
                flash.rise(int(dut.flash__copi.value))
            elif new_cs and sck and not new_sck:
                dut.flash__cipo.value = flash.fall()
            sck, cs = new_sck, new_cs

    async def boot(self, limit_us=20_000):
        """Reset with the flash model on the pins; wait until the board has read it."""
        serving = cocotb.start_soon(self.serve_flash())
        await self.reset()
        waited = 0
        while int(self.dut.busy.value) or not serving.done():
            await Timer(10, "us")
            waited += 10
            assert waited < limit_us, "the flash boot did not finish"
        self.dut._log.info("flash boot: %d us", waited)

    async def run(self, operation):
        """One of the client's operations, on this bench's UART."""
        return await drive_async(operation, self.transport)

    async def reset(self):
        self.dut.rst.value = 1
        self.dut.link_rst.value = 1
        await ClockCycles(self.dut.link_clk, 5)
        self.dut.rst.value = 0
        self.dut.link_rst.value = 0
        await ClockCycles(self.dut.link_clk, 5)

    async def send(self, data: bytes):
        """Raw bytes on the line, whatever they are."""
        await self.source.write(data)
        await self.source.wait()

    async def reply(self, seq=None) -> proto.Frame:
        """The next good reply frame (with sequence number ``seq``, unless None)."""
        reply = await self.run(self.client.collect(seq, self.info.out_features + 4))
        assert reply.frame is not None, f"no reply from the board: {reply.failure}"
        return reply.frame

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

    async def load(self, offset, chunk):
        """One LOAD chunk through the client; returns (bytes held, flags)."""
        return proto.parse_loaded(await self.run(self.client.request(
            proto.LOAD, proto.load_payload(offset, chunk), proto.LOADED, proto.LOADED_BYTES)))

    async def flags(self) -> int:
        return (await self.run(self.client.get_info())).flags

    async def upload(self, chunk=256):
        """The whole weight image, through the client; the board must then hold it."""
        sent = await self.run(self.client.upload(self.image, chunk=chunk))
        assert sent == len(self.image)
        assert await self.flags() == proto.FLAG_UPLOADED | proto.FLAG_LOADED

    async def expect_error(self, code, seq=None):
        frame = await self.reply(seq)
        assert frame.kind == proto.ERROR, f"expected an ERROR frame, got {frame}"
        assert frame.payload == bytes([code]), \
            f"expected error {code} ({proto.ERRORS[code]}), got {frame.payload!r}"
        return frame

    async def check_good(self, n):
        """Inference ``n`` through the client: bit-exact against the reference model."""
        outputs, cycles = await self.run(self.client.infer(self.p["inputs"][n]))
        expected = self.p["expected"][n]
        assert np.array_equal(np.array(outputs), expected), \
            f"inference {n}: board {outputs}, reference {list(expected)}"
        assert cycles > 0
        return cycles


async def _bench(dut, *, upload=True):
    bench = UartLinkBench(dut, _params())
    if bench.flash is not None:
        await bench.boot()
    else:
        await bench.reset()
    if bench.image and upload and bench.flash is None:
        await bench.upload()
    return bench


@cocotb.test()
async def info_request(dut):
    """INFO reports the shapes, PE count, design id and clock the host must match."""
    bench = await _bench(dut)
    assert await bench.run(bench.client.get_info()) == bench.info
    await bench.send(bench.request(proto.INFO, 7))          # and echoes any seq
    frame = await bench.reply()
    assert frame.kind == proto.INFO_REPLY and frame.seq == 7


@cocotb.test()
async def good_frames(dut):
    """Every input gives the reference model's outputs, bit for bit, and its own seq back."""
    bench = await _bench(dut)
    cycles = []
    for n in range(len(bench.p["inputs"])):
        cycles.append(await bench.check_good(n))
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
        await bench.check_good(1)


@cocotb.test()
async def dropped_byte(dut):
    """A frame missing a byte times out with an error; the next frame is answered."""
    bench = await _bench(dut)
    x = bench.p["inputs"][0]
    frame = bytearray(bench.infer_request(x, 21))
    del frame[proto.HEADER_BYTES + 5]
    await bench.send(bytes(frame))
    await bench.expect_error(proto.ERR_TIMEOUT, seq=21)
    await bench.check_good(2)
    # the sync byte lost: the rest is noise; no reply at all may come, and no result
    frame = bytearray(bench.infer_request(x, 23))
    await bench.send(bytes(frame[1:]))
    await bench.wait_timeouts(3)
    for reply in proto.FrameDecoder(proto.SYNC_REPLY).feed(bytes(bench.sink.read_nowait())):
        assert reply.kind == proto.ERROR, f"noise produced {reply}"
    await bench.check_good(0)


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
    await bench.check_good(0)


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
    await bench.check_good(1)


@cocotb.test()
async def garbage_between_frames(dut):
    """Bytes outside frames are skipped while hunting for the sync byte."""
    bench = await _bench(dut)
    await bench.send(b"\x00\xff\x13\x37")
    await bench.check_good(2)


@cocotb.test()
async def uploaded_weights(dut):
    """Uploaded weights: refused before, spoiled by any bad chunk, right after a good image."""
    bench = await _bench(dut, upload=False)
    assert bench.image, "this bench's design takes its weights in the bitstream"
    # the fault cases work on the image's first bytes (a full upload takes long to simulate)
    image, half = bench.image, min(16, len(bench.image) // 2)
    flags = bench.flags
    assert await flags() == proto.FLAG_UPLOADED
    await bench.send(bench.infer_request(bench.p["inputs"][0], 2))
    await bench.expect_error(proto.ERR_NOT_LOADED, seq=2)
    await bench.wait_timeouts(2)

    # a corrupted byte in the middle chunk: an error; the image cannot be continued, and
    # gives no result
    await bench.load(0, image[:half])
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
    await bench.load(0, image[:half])
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
        await bench.check_good(n)


@cocotb.test()
async def flash_boot(dut):
    """Weights from flash: loaded at power-up, results bit-exact, no LOAD ever sent."""
    bench = await _bench(dut)
    assert bench.flash is not None, "this bench's design does not boot from flash"
    assert bench.flash.reads == [int(bench.p["flash_offset"])]
    assert bench.flash.commands[0] == 0xAB, "the flash was not woken"
    assert await bench.flags() == proto.FLAG_UPLOADED | proto.FLAG_LOADED
    for n in range(len(bench.p["inputs"])):
        await bench.check_good(n)


@cocotb.test()
async def flash_boot_corrupt(dut):
    """A flash image with a bad CRC: flagged, INFER refused with its own error; a LOAD over
    the UART then recovers (a LOAD at offset 0 starts a new image and clears the flag; the
    whole upload is ``uploaded_weights``'s, and slow to simulate)."""
    bench = UartLinkBench(dut, _params())
    at = (int(bench.p["flash_offset"]) + len(bench.flash.data)) // 2
    bench.flash.data[at] ^= 0x01                 # one bit of the image
    await bench.boot()
    assert await bench.flags() == proto.FLAG_UPLOADED | proto.FLAG_BOOT_ERROR
    await bench.send(bench.infer_request(bench.p["inputs"][0], 3))
    await bench.expect_error(proto.ERR_BOOT_IMAGE, seq=3)
    await bench.wait_timeouts(2)
    await bench.load(0, bench.image[:16])
    assert await bench.flags() == proto.FLAG_UPLOADED


@cocotb.test()
async def flash_boot_erased(dut):
    """An erased flash is no image, not a corrupt one: INFER asks for an upload."""
    bench = UartLinkBench(dut, _params())
    del bench.flash.data[int(bench.p["flash_offset"]):]
    await bench.boot()
    assert await bench.flags() == proto.FLAG_UPLOADED
    await bench.send(bench.infer_request(bench.p["inputs"][0], 5))
    await bench.expect_error(proto.ERR_NOT_LOADED, seq=5)
