"""The accelerator behind a UART: :class:`UartLink` speaks :mod:`boards.link.protocol` and
:class:`LinkedAccelerator` joins it to a :class:`~hw.top.SparseAccelerator`.

A request's inputs are buffered and fed to the accelerator only after the frame's CRC checked
out, so a corrupted or shortened frame can never produce a result: it produces an ERROR frame.
A design with uploaded weights takes LOAD frames' bytes straight into its weight memories and
counts them; it computes only once a whole image arrived in order through good frames (see
:mod:`boards.link.protocol`). A design that boots from flash (``options.flash_boot``) first
streams the flash image into the same memories (:mod:`boards.link.flashboot`), and takes no
request before that is done. The two halves of the protocol engine are
:mod:`boards.link.receiver` and :mod:`boards.link.transmitter`.
"""

from amaranth.hdl import Cat, DomainRenamer, Module, Mux, Signal, signed
from amaranth.lib import stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.fifo import AsyncFIFO
from amaranth.lib.wiring import In, Out

from hw.images import geometry, weight_image
from hw.options import HardwareOptions
from hw.packer import LanePacker
from hw.top import SparseAccelerator
from hw.weights import WEIGHT_BYTE

from . import protocol as proto
from .flashboot import FlashBoot, FlashSignature
from .receiver import RequestReceiver
from .transmitter import ReplyTransmitter
from .uart import uart_divisor

__all__ = ["UartLink", "LinkedAccelerator"]


class UartLink(wiring.Component):
    """Protocol engine: frames in on ``rx``, inputs out on ``input``, outputs in on ``output``,
    replies out on ``tx``. A :class:`~boards.link.receiver.RequestReceiver` asks a
    :class:`~boards.link.transmitter.ReplyTransmitter` for each reply.

    Parameters
    ----------
    info : protocol.BoardInfo
        Shapes and identity reported to the host (``in_features`` and ``out_features`` also size
        the frames).
    divisor : int
        Clock cycles per UART bit.
    timeout_cycles : int
        Quiet line inside a frame for this long means a byte was lost.
    weight_bytes : int
        Size of the weight image the design takes over the link; 0: weights in the bitstream.
    flash_offset : int or None
        Where the flash image lies in the board's SPI flash: the weights are read from there
        at reset, before any request (None: no flash boot).
    wake_cycles : int
        Flash boot: cycles between the flash's wake-up command and its READ.

    Members
    -------
    rx : In(1)
        UART receive line.
    tx : Out(1)
        UART transmit line.
    flash : Out(flashboot.FlashSignature)
        Flash boot only: the SPI flash's pins.
    input : Out(stream.Signature(signed(8)))
        One inference's inputs, to the accelerator.
    output : In(stream.Signature(8))
        The inference's outputs, then its compute cycle count (4 bytes, little-endian).
    busy : Out(1)
        Booting, or a request is being received or answered.
    errors : Out(8)
        Count of ERROR frames sent (wraps).
    weights : Out(stream.Signature(WEIGHT_BYTE))
        Uploaded weights only: the flash image's bytes at boot, then LOAD frames' image bytes,
        to the accelerator (a LOAD byte that finds it not ready is an error).
    """

    def __init__(self, info: proto.BoardInfo, *, divisor: int, timeout_cycles: int,
                 weight_bytes: int = 0, flash_offset: int | None = None,
                 wake_cycles: int = 64):
        if not isinstance(info, proto.BoardInfo):
            raise TypeError(f"info must be a protocol.BoardInfo, not {info!r}")
        if not isinstance(timeout_cycles, int) or timeout_cycles < 12 * divisor:
            raise ValueError(f"timeout_cycles must be an integer of at least 12 bit times "
                             f"({12 * divisor}), not {timeout_cycles!r}")
        if not isinstance(weight_bytes, int) or not 0 <= weight_bytes < 2 ** 32:
            raise ValueError(f"weight_bytes must be an integer in 0..2**32-1, not "
                             f"{weight_bytes!r}")
        self.info, self.divisor, self.timeout_cycles = info, divisor, timeout_cycles
        if flash_offset is not None and not weight_bytes:
            raise ValueError("a flash boot needs uploaded weights (weight_bytes > 0)")
        self.weight_bytes, self.flash_offset = weight_bytes, flash_offset
        upload = {"weights": Out(stream.Signature(WEIGHT_BYTE))} if weight_bytes else {}
        if flash_offset is not None:
            self.boot = FlashBoot(info.design_id, weight_bytes, flash_offset,
                                  wake_cycles=wake_cycles)      # checks its arguments now
            upload["flash"] = Out(FlashSignature)
        super().__init__({
            "rx": In(1, init=1),
            "tx": Out(1, init=1),
            "input": Out(stream.Signature(signed(8))),
            "output": In(stream.Signature(8)),
            "busy": Out(1),
            "errors": Out(8),
            **upload,
        })

    def elaborate(self, platform):
        m = Module()
        flash_boot = self.flash_offset is not None
        m.submodules.receiver = receiver = RequestReceiver(
            self.info, divisor=self.divisor, timeout_cycles=self.timeout_cycles,
            weight_bytes=self.weight_bytes, flash_boot=flash_boot)
        m.submodules.transmitter = transmitter = ReplyTransmitter(
            self.info, divisor=self.divisor, uploaded=self.weight_bytes > 0)
        wiring.connect(m, receiver.reply, transmitter.reply)
        wiring.connect(m, receiver.input, wiring.flipped(self.input))
        wiring.connect(m, wiring.flipped(self.output), transmitter.output)
        if flash_boot:
            m.submodules.boot = boot = self.boot
            wiring.connect(m, boot.flash, wiring.flipped(self.flash))
            wiring.connect(m, boot.status, receiver.boot)
            # the flash's bytes first; the receiver sends none before the boot is done
            source = [boot.weights, receiver.weights]
            done = boot.status.done
            m.d.comb += [self.weights.valid.eq(Mux(done, source[1].valid, source[0].valid)),
                         self.weights.payload.eq(Mux(done, source[1].payload,
                                                     source[0].payload)),
                         source[0].ready.eq(~done & self.weights.ready),
                         source[1].ready.eq(done & self.weights.ready)]
        elif self.weight_bytes:
            wiring.connect(m, receiver.weights, wiring.flipped(self.weights))
        booting = ~boot.status.done if flash_boot else 0
        m.d.comb += [receiver.rx.eq(self.rx), self.tx.eq(transmitter.tx),
                     self.errors.eq(receiver.errors),
                     self.busy.eq(~transmitter.reply.idle | booting)]
        return m


def _byte_register(m, name, i_valid, i_payload, o_ready):
    """A register between two byte streams that takes a byte only when it is empty: its
    ``valid`` and ``ready`` are registers (one byte every other cycle at most). Returns
    ``(o_valid, o_payload, i_ready)``."""
    full = Signal(name=f"{name}_full")
    data = Signal(8, name=f"{name}_data")
    with m.If(full):
        with m.If(o_ready):
            m.d.sync += full.eq(0)
    with m.Elif(i_valid):
        m.d.sync += [data.eq(i_payload), full.eq(1)]
    return full, data, ~full


class _ByteCrossing(wiring.Component):
    """One byte at a time from the ``link`` domain into ``sync``, by a toggle handshake: the
    sender holds the byte and flips ``req``; the receiver, seeing ``req`` (two flip-flops
    later) differ from the last one it took, registers the byte and flips ``ack`` back. Every
    signal the receiving side acts on is a register, one LUT from the next: no gray-code
    pointer arithmetic in the fast domain (an asynchronous FIFO's read side was the
    iCEBreaker's worst path at 56 MHz). About six link cycles a byte, far above a UART's rate.
    """

    def __init__(self, width: int):
        self.width = width
        super().__init__({
            "i": In(stream.Signature(width)),       # link domain
            "o": Out(stream.Signature(width)),      # sync domain
        })

    def elaborate(self, platform):
        m = Module()
        held = Signal(self.width)                   # link domain, stable while req != ack
        req, ack = Signal(), Signal()
        req_s, ack_l = Signal(), Signal()
        m.submodules.req_sync = FFSynchronizer(req, req_s, o_domain="sync")
        m.submodules.ack_sync = FFSynchronizer(ack, ack_l, o_domain="link")
        m.d.comb += self.i.ready.eq(req == ack_l)
        with m.If(self.i.valid & self.i.ready):
            m.d.link += [held.eq(self.i.payload), req.eq(~req)]
        full = Signal()
        data = Signal(self.width)
        with m.If(full):
            with m.If(self.o.ready):
                m.d.sync += full.eq(0)
        with m.Elif(req_s != ack):
            m.d.sync += [data.eq(held), full.eq(1), ack.eq(req_s)]
        m.d.comb += [self.o.valid.eq(full), self.o.payload.eq(data)]
        return m


class ResultBytes(wiring.Component):
    """The accelerator's outputs, then its cycle count as four bytes (little-endian): one
    stream, so the whole result crosses to the link's clock through one FIFO."""

    def __init__(self, out_features: int):
        self.out_features = out_features
        super().__init__({
            "i": In(stream.Signature(signed(8))),
            "cycles": In(32),
            "o": Out(stream.Signature(8)),
        })

    def elaborate(self, platform):
        m = Module()
        count = Signal(range(self.out_features + 1))
        last = Signal(init=self.out_features == 1)   # count == out_features - 1
        tail = Signal(range(5))                      # cycle-count bytes left to send
        outputs = Signal(init=1)                     # tail == 0
        held = Signal(32)
        with m.If(outputs):
            m.d.comb += [self.o.valid.eq(self.i.valid), self.o.payload.eq(self.i.payload),
                         self.i.ready.eq(self.o.ready)]
            with m.If(self.i.valid & self.o.ready):
                m.d.sync += [count.eq(count + 1), last.eq(count == self.out_features - 2)]
                with m.If(last):
                    # the cycle count is stable once outputs stream
                    m.d.sync += [count.eq(0), last.eq(self.out_features == 1), tail.eq(4),
                                 outputs.eq(0), held.eq(self.cycles)]
        with m.Else():
            m.d.comb += [self.o.valid.eq(1), self.o.payload.eq(held[:8])]
            with m.If(self.o.ready):
                m.d.sync += [held.eq(held >> 8), tail.eq(tail - 1), outputs.eq(tail == 1)]
        return m


class LinkedAccelerator(wiring.Component):
    """A :class:`~hw.top.SparseAccelerator` for ``program`` behind a :class:`UartLink`: what
    the board top instantiates, and what the cocotb UART bench simulates.

    The accelerator runs in ``sync`` at ``clock_hz``; the link in its own ``link`` domain at
    ``link_hz`` (the board's oscillator: slow, so the protocol logic never limits Fmax), with
    asynchronous FIFOs between them.

    Members
    -------
    rx : In(1)
        UART receive line.
    tx : Out(1)
        UART transmit line.
    busy : Out(1)
        Booting, computing or talking.
    errors : Out(8)
        ERROR frames sent (wraps).
    flash : Out(flashboot.FlashSignature)
        ``options.flash_boot`` only: the board's SPI flash, where the weights are read from
        at ``flash_offset`` at reset (link domain).
    """

    def __init__(self, program, *, clock_hz: int, baud: int, link_hz: int | None = None,
                 timeout_s: float = 0.02, options=None, timeout_cycles: int | None = None,
                 flash_offset: int | None = None):
        self.program, self.options = program, options
        self.clock_hz, self.baud = int(clock_hz), baud
        self.link_hz = int(link_hz or clock_hz)
        self.divisor = uart_divisor(self.link_hz, baud)
        self.timeout_cycles = (timeout_cycles if timeout_cycles is not None
                               else max(12 * self.divisor, int(timeout_s * self.link_hz)))
        geo = geometry(program, options or HardwareOptions())
        self.weight_bytes = (len(weight_image(program, geo)) if geo.weights == "uploaded"
                             else 0)
        self.info = proto.BoardInfo(program.model.in_features, program.model.out_features,
                                    program.pes, proto.design_id(program), self.clock_hz,
                                    proto.FLAG_UPLOADED if self.weight_bytes else 0)
        self.flash_boot = bool(options is not None and options.flash_boot)
        if self.flash_boot and flash_offset is None:
            raise ValueError("options.flash_boot needs the board's flash_offset")
        self.flash_offset = flash_offset if self.flash_boot else None
        # Release Power-Down takes at most 3 us (tRES1); wait 10
        self.wake_cycles = max(1, -(-self.link_hz * 10 // 1_000_000))
        flash = {"flash": Out(FlashSignature)} if self.flash_boot else {}
        super().__init__({"rx": In(1, init=1), "tx": Out(1, init=1), "busy": Out(1),
                          "errors": Out(8), **flash})

    def elaborate(self, platform):
        m = Module()
        m.submodules.core = core = SparseAccelerator(self.program, self.options)
        # the link's bytes into the core's input beats (one lane per bus)
        m.submodules.packer = packer = LanePacker(core.geo.cols, self.program.model.in_features)
        wiring.connect(m, packer.o, core.input)
        m.submodules.link = link = DomainRenamer("link")(
            UartLink(self.info, divisor=self.divisor, timeout_cycles=self.timeout_cycles,
                     weight_bytes=self.weight_bytes, flash_offset=self.flash_offset,
                     wake_cycles=self.wake_cycles))
        if self.flash_boot:                     # the flash is read in the link's domain
            wiring.connect(m, link.flash, wiring.flipped(self.flash))
        m.submodules.result = result = ResultBytes(self.program.model.out_features)
        # Bytes cross between the accelerator and the FIFOs through registers that take a
        # byte only when empty (a byte every other cycle, far above the UART's rate): every
        # handshake signal the accelerator sees is a register, and the FIFOs' flag logic ends
        # in a register too.
        out_valid, out_data, out_ready = _byte_register(
            m, "from_core", core.output.valid, core.output.payload, result.i.ready)
        m.d.comb += [core.output.ready.eq(out_ready),
                     result.i.valid.eq(out_valid), result.i.payload.eq(out_data)]
        m.d.comb += result.cycles.eq(core.cycles)
        # to the core: a byte, whether it is a weight-image byte, and whether it starts one
        m.submodules.to_core = to_core = _ByteCrossing(10)
        # to the link: two entries (bytes pass every ~90 us at 115200 baud; two-bit pointers
        # keep the core side's flag and address logic to a LUT level or two)
        m.submodules.to_link = to_link = AsyncFIFO(width=8, depth=2, r_domain="link",
                                                   w_domain="sync")
        res_valid, res_data, res_ready = _byte_register(
            m, "to_link", result.o.valid, result.o.payload, to_link.w_rdy)
        m.d.comb += [to_link.w_data.eq(res_data), to_link.w_en.eq(res_valid),
                     result.o.ready.eq(res_ready)]
        uploaded = self.weight_bytes > 0
        taker_ready = Signal()
        in_valid, in_data = to_core.o.valid, to_core.o.payload
        is_weight = in_data[8]
        m.d.comb += [packer.i.valid.eq(in_valid & ~is_weight),
                     packer.i.payload.eq(in_data[:8]), to_core.o.ready.eq(taker_ready),
                     taker_ready.eq(packer.i.ready)]
        if uploaded:
            m.d.comb += [core.weights.valid.eq(in_valid & is_weight),
                         core.weights.payload.data.eq(in_data[:8]),
                         core.weights.payload.first.eq(in_data[9]),
                         taker_ready.eq(Mux(is_weight, core.weights.ready, packer.i.ready)),
                         to_core.i.payload.eq(Mux(link.weights.valid,
                                                  Cat(link.weights.payload.data, 1,
                                                      link.weights.payload.first),
                                                  Cat(link.input.payload, 0, 0))),
                         to_core.i.valid.eq(link.input.valid | link.weights.valid),
                         link.weights.ready.eq(to_core.i.ready)]
        else:
            # an input is int8: widened as it is, a negative one would sign-extend into the
            # weight and first-byte flags above it
            m.d.comb += [to_core.i.payload.eq(Cat(link.input.payload, 0, 0)),
                         to_core.i.valid.eq(link.input.valid)]
        m.d.comb += [
            link.input.ready.eq(to_core.i.ready),
            link.output.payload.eq(to_link.r_data), link.output.valid.eq(to_link.r_rdy),
            to_link.r_en.eq(link.output.ready),
            link.rx.eq(self.rx), self.tx.eq(link.tx),
            self.busy.eq(core.busy | link.busy), self.errors.eq(link.errors),
        ]
        return m
