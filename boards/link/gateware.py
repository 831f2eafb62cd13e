"""The accelerator behind a UART: :class:`UartLink` speaks :mod:`boards.link.protocol` and
:class:`LinkedAccelerator` joins it to a :class:`~hw.top.SparseAccelerator`.

A request's inputs are buffered and fed to the accelerator only after the frame's CRC checked
out, so a corrupted or shortened frame can never produce a result: it produces an ERROR frame.
A design with uploaded weights takes LOAD frames' bytes straight into its weight memories and
counts them; it computes only once a whole image arrived in order through good frames (see
:mod:`boards.link.protocol`).
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import memory, stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.crc import catalog
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from hw.packer import LanePacker
from hw.weights import WEIGHT_BYTE

from . import protocol as proto
from .uart import UARTRx, UARTTx

__all__ = ["UartLink", "LinkedAccelerator"]


def _crc16():
    return catalog.CRC16_IBM_3740(data_width=8).create()


class UartLink(wiring.Component):
    """Protocol engine: frames in on ``rx``, inputs out on ``input``, outputs in on ``output``,
    replies out on ``tx``.

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

    Members
    -------
    rx : In(1)
        UART receive line.
    tx : Out(1)
        UART transmit line.
    input : Out(stream.Signature(signed(8)))
        One inference's inputs, to the accelerator.
    output : In(stream.Signature(8))
        The inference's outputs, then its compute cycle count (4 bytes, little-endian).
    busy : Out(1)
        A request is being received or answered.
    errors : Out(8)
        Count of ERROR frames sent (wraps).
    weights : Out(stream.Signature(WEIGHT_BYTE))
        Uploaded weights only: LOAD frames' image bytes, to the accelerator (a byte that finds
        it not ready is an error).
    """

    def __init__(self, info: proto.BoardInfo, *, divisor: int, timeout_cycles: int,
                 weight_bytes: int = 0):
        if not isinstance(info, proto.BoardInfo):
            raise TypeError(f"info must be a protocol.BoardInfo, not {info!r}")
        if not isinstance(timeout_cycles, int) or timeout_cycles < 12 * divisor:
            raise ValueError(f"timeout_cycles must be an integer of at least 12 bit times "
                             f"({12 * divisor}), not {timeout_cycles!r}")
        if not isinstance(weight_bytes, int) or not 0 <= weight_bytes < 2 ** 32:
            raise ValueError(f"weight_bytes must be an integer in 0..2**32-1, not "
                             f"{weight_bytes!r}")
        self.info, self.divisor, self.timeout_cycles = info, divisor, timeout_cycles
        self.weight_bytes = weight_bytes
        upload = {"weights": Out(stream.Signature(WEIGHT_BYTE))} if weight_bytes else {}
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
        info = self.info
        total = self.weight_bytes
        uploaded = total > 0
        n_in, n_out = info.in_features, info.out_features
        m.submodules.uart_rx = urx = UARTRx(self.divisor)
        m.submodules.uart_tx = utx = UARTTx(self.divisor)
        m.submodules.rx_crc = rx_crc = _crc16()
        m.submodules.tx_crc = tx_crc = _crc16()
        m.d.comb += [urx.rx.eq(self.rx), self.tx.eq(utx.tx)]

        m.submodules.inputs = buf = memory.Memory(shape=8, depth=max(2, n_in), init=[])
        buf_wp = buf.write_port()
        buf_rp = buf.read_port()

        byte = urx.data.payload
        got = urx.data.valid
        kind = Signal(8)
        seq = Signal(8)
        length = Signal(16)
        index = Signal(range(max(2, n_in) + 1))
        index_last = Signal()                  # index == n_in - 1, kept as a register
        crc_good = Signal()
        # a quiet line: counts down from the timeout; `timed_out` is a register, so the frame
        # logic never waits for a wide comparison
        quiet = Signal(range(self.timeout_cycles + 1), init=self.timeout_cycles)
        timed_out = Signal()
        with m.If(got | urx.framing_error):
            m.d.sync += [quiet.eq(self.timeout_cycles), timed_out.eq(0)]
        with m.Elif(quiet != 0):
            m.d.sync += quiet.eq(quiet - 1)
        with m.Else():
            m.d.sync += timed_out.eq(1)

        # what the transmitter is asked to send
        tx_start = Signal()
        tx_kind = Signal(8)
        tx_code = Signal(8)
        tx_idle = Signal()
        m.d.comb += [rx_crc.data.eq(byte)]

        # uploaded weights: image bytes the accelerator holds, whether they are a whole image
        # (`loaded`), whether an error spoiled the image since its offset-0 chunk (`spoiled`)
        count = Signal(range(total + 1))
        loaded = Signal()
        spoiled = Signal()
        offset = Signal(32)
        offset_bytes = Signal(range(proto.LOAD_OFFSET_BYTES))
        first_byte = Signal()                  # the next image byte starts an image
        data_left = Signal(16)
        data_last = Signal()                   # data_left == 1, as a register
        flags = Cat(Const(int(uploaded), 1), loaded, Const(0, 6))
        is_load = kind == proto.LOAD

        def fail(code, then, *, spoils=True):
            m.d.sync += tx_code.eq(code)
            if uploaded and spoils:
                with m.If(is_load):            # whatever it wrote is suspect now
                    m.d.sync += [spoiled.eq(1), loaded.eq(0)]
            m.next = "ERROR_" + then

        in_frame = Signal()

        def guard():
            # inside a frame, a byte with a bad stop bit or a quiet line ends it with an error
            with m.If(urx.framing_error):
                fail(proto.ERR_FRAMING, "DRAIN")
            with m.Elif(timed_out & ~got):
                fail(proto.ERR_TIMEOUT, "HUNT")
        with m.FSM(name="rx_frame"):
            with m.State("HUNT"):
                m.d.comb += rx_crc.start.eq(1)
                with m.If(got & (byte == proto.SYNC_REQUEST)):
                    m.d.sync += kind.eq(0)     # no stale type judges this frame's errors
                    m.next = "TYPE"
            for state, target, nxt in (("TYPE", kind, "SEQ"), ("SEQ", seq, "LEN0"),
                                       ("LEN0", length[:8], "LEN1")):
                with m.State(state):
                    m.d.comb += [in_frame.eq(1), rx_crc.valid.eq(got)]
                    with m.If(got):
                        m.d.sync += target.eq(byte)
                        m.next = nxt
                    guard()
            with m.State("LEN1"):
                m.d.comb += [in_frame.eq(1), rx_crc.valid.eq(got)]
                with m.If(got):
                    m.d.sync += [length[8:].eq(byte), index.eq(0), index_last.eq(n_in == 1)]
                    m.next = "DECIDE"
                guard()
            with m.State("DECIDE"):             # the header is in registers: judge it
                m.d.comb += [in_frame.eq(1)]
                infer, ask = kind == proto.INFER, kind == proto.INFO
                with m.If(infer & Const(uploaded) & ~loaded):
                    fail(proto.ERR_NOT_LOADED, "DRAIN")
                with m.Elif(is_load & Const(uploaded) & (length > proto.LOAD_OFFSET_BYTES)):
                    if uploaded:                # (a design without uploads has no such state)
                        m.d.sync += [offset_bytes.eq(0),
                                     data_left.eq(length - proto.LOAD_OFFSET_BYTES),
                                     data_last.eq(length == proto.LOAD_OFFSET_BYTES + 1)]
                        m.next = "OFFSET"
                with m.Elif(is_load & Const(uploaded)):
                    fail(proto.ERR_LENGTH, "DRAIN")
                with m.Elif(infer & (length == n_in) & (n_in > 0)):
                    m.next = "PAYLOAD"
                with m.Elif((infer | ask) & (length == 0) & (ask | (n_in == 0))):
                    m.next = "CRC0"
                with m.Elif(infer | ask):
                    fail(proto.ERR_LENGTH, "DRAIN")
                with m.Else():
                    fail(proto.ERR_TYPE, "DRAIN")
            with m.State("PAYLOAD"):
                m.d.comb += [in_frame.eq(1), rx_crc.valid.eq(got),
                             buf_wp.addr.eq(index), buf_wp.data.eq(byte), buf_wp.en.eq(got)]
                with m.If(got):
                    m.d.sync += [index.eq(index + 1), index_last.eq(index == n_in - 2)]
                    with m.If(index_last):
                        m.next = "CRC0"
                guard()
            if uploaded:
                with m.State("OFFSET"):
                    m.d.comb += [in_frame.eq(1), rx_crc.valid.eq(got)]
                    with m.If(got):
                        m.d.sync += [offset.eq(Cat(offset[8:], byte)),
                                     offset_bytes.eq(offset_bytes + 1)]
                        with m.If(offset_bytes == proto.LOAD_OFFSET_BYTES - 1):
                            m.next = "PLACE"
                    guard()
                with m.State("PLACE"):              # offset 0 starts an image, others continue it
                    m.d.comb += in_frame.eq(1)
                    restart = offset == 0
                    base = Mux(restart, 0, count)
                    # refused before a byte is written: the image stays as it was
                    with m.If(~restart & ((offset != count) | spoiled)):
                        fail(proto.ERR_ORDER, "DRAIN", spoils=False)
                    with m.Elif(base + data_left > total):
                        fail(proto.ERR_LENGTH, "DRAIN", spoils=False)
                    with m.Else():
                        with m.If(restart):
                            m.d.sync += [count.eq(0), spoiled.eq(0), loaded.eq(0),
                                         first_byte.eq(1)]
                        m.next = "LOAD_DATA"
                with m.State("LOAD_DATA"):      # image bytes go straight to the accelerator
                    m.d.comb += [in_frame.eq(1), rx_crc.valid.eq(got),
                                 self.weights.valid.eq(got),
                                 self.weights.payload.data.eq(byte),
                                 self.weights.payload.first.eq(first_byte)]
                    with m.If(got):
                        with m.If(~self.weights.ready):
                            fail(proto.ERR_OVERRUN, "DRAIN")
                        with m.Else():
                            m.d.sync += [count.eq(count + 1), first_byte.eq(0),
                                         data_left.eq(data_left - 1),
                                         data_last.eq(data_left == 2)]
                            with m.If(data_last):
                                m.next = "CRC0"
                    guard()
            with m.State("CRC0"):
                m.d.comb += [in_frame.eq(1), rx_crc.valid.eq(got)]
                with m.If(got):
                    m.next = "CRC1"
                guard()
            with m.State("CRC1"):
                m.d.comb += [in_frame.eq(1), rx_crc.valid.eq(got)]
                with m.If(got):
                    m.next = "CRC_SETTLE"
                guard()
            with m.State("CRC_SETTLE"):         # the CRC register has taken the last byte
                m.d.sync += crc_good.eq(rx_crc.match_detected)
                m.next = "CHECK"
            with m.State("CHECK"):
                with m.If(~crc_good):
                    fail(proto.ERR_CRC, "HUNT")
                with m.Elif(tx_idle):
                    m.d.comb += tx_start.eq(1)
                    m.d.sync += [tx_kind.eq(Mux(kind == proto.INFER, proto.RESULT,
                                                Mux(is_load, proto.LOADED,
                                                    proto.INFO_REPLY))),
                                 index.eq(0), index_last.eq(n_in == 1)]
                    m.next = "FEED" if n_in else "WAIT_TX"
                    with m.If(kind != proto.INFER):
                        m.next = "WAIT_TX"
                    if uploaded:
                        with m.If(is_load):     # a whole image, every frame of it good
                            m.d.sync += loaded.eq((count == total) & ~spoiled)
            with m.State("FEED"):               # buffered inputs -> accelerator
                m.d.comb += [buf_rp.addr.eq(index), buf_rp.en.eq(1)]
                m.next = "FEED_BEAT"
            with m.State("FEED_BEAT"):
                m.d.comb += [self.input.valid.eq(1), self.input.payload.eq(buf_rp.data),
                             buf_rp.en.eq(0)]
                with m.If(self.input.ready):
                    m.d.sync += [index.eq(index + 1), index_last.eq(index == n_in - 2)]
                    m.next = "WAIT_TX"
                    with m.If(~index_last):
                        m.next = "FEED"
            with m.State("WAIT_TX"):            # ignore the line until the reply is out
                with m.If(tx_idle):
                    m.next = "HUNT"
            for then in ("HUNT", "DRAIN"):
                with m.State("ERROR_" + then):
                    with m.If(tx_idle):
                        m.d.comb += tx_start.eq(1)
                        m.d.sync += [tx_kind.eq(proto.ERROR), self.errors.eq(self.errors + 1)]
                        m.next = then
            with m.State("DRAIN"):              # skip the rest of a frame we cannot parse
                with m.If(timed_out & ~got):
                    m.next = "HUNT"

        # ---- transmitter ------------------------------------------------------------------
        # Every byte comes out of one shift register (`line`), loaded with the header, the
        # INFO payload, the cycle count or the error code, or straight from the accelerator's
        # output stream: no multiplexer indexed by a counter, and a two-entry FIFO with a
        # registered output between all of it and the UART.
        info_payload = proto.info_payload(info)
        widest = 8 * max(proto.HEADER_BYTES, len(info_payload), 4, proto.LOADED_BYTES)
        line = Signal(widest)
        left = Signal(range(widest // 8 + 1))          # bytes left in `line`
        outs_left = Signal(range(n_out + 5))

        def load(*byte_values):
            """`line` <- these bytes, first byte in the low bits."""
            m.d.sync += [line.eq(Cat(*byte_values)), left.eq(len(byte_values))]

        m.submodules.tx_fifo = tx_fifo = SyncFIFOBuffered(width=8, depth=2)
        out = stream.Signature(8).create()
        m.d.comb += [
            tx_fifo.w_data.eq(out.payload), tx_fifo.w_en.eq(out.valid),
            out.ready.eq(tx_fifo.w_rdy),
            utx.data.payload.eq(tx_fifo.r_data), utx.data.valid.eq(tx_fifo.r_rdy),
            tx_fifo.r_en.eq(utx.data.ready),
        ]
        accepted = out.valid & out.ready
        m.d.comb += [tx_crc.data.eq(out.payload)]
        first = Signal()                               # the sync byte is outside the CRC
        with m.FSM(name="tx_frame"):
            with m.State("IDLE"):
                m.d.comb += [tx_idle.eq(1), tx_crc.start.eq(1)]
                with m.If(tx_start):
                    m.next = "START"
            with m.State("START"):              # tx_kind was set with tx_start: now it holds
                m.d.comb += tx_crc.start.eq(1)
                length = Mux(tx_kind == proto.RESULT, n_out + 4,
                             Mux(tx_kind == proto.INFO_REPLY, len(info_payload),
                                 Mux(tx_kind == proto.LOADED, proto.LOADED_BYTES, 1)))
                load(Const(proto.SYNC_REPLY, 8), tx_kind, seq, length[:8], length[8:16])
                m.d.sync += first.eq(1)
                m.next = "HEADER"
            with m.State("HEADER"):
                m.d.comb += [out.valid.eq(1), out.payload.eq(line[:8]),
                             tx_crc.valid.eq(accepted & ~first)]
                with m.If(accepted):
                    m.d.sync += [line.eq(line >> 8), left.eq(left - 1), first.eq(0)]
                    with m.If(left == 1):
                        with m.Switch(tx_kind):
                            with m.Case(proto.RESULT):
                                m.d.sync += outs_left.eq(n_out + 4)
                                m.next = "OUTPUTS"
                            with m.Case(proto.INFO_REPLY):     # the flags byte is live
                                load(*[Const(b, 8) for b in info_payload[:-1]], flags)
                                m.next = "BYTES"
                            with m.Case(proto.LOADED):
                                load(*[Cat(count, Const(0, 32))[8 * i:8 * i + 8]
                                       for i in range(4)], flags)
                                m.next = "BYTES"
                            with m.Default():
                                load(tx_code)
                                m.next = "BYTES"
            with m.State("OUTPUTS"):                # results and cycle count pass through
                m.d.comb += [out.valid.eq(self.output.valid), out.payload.eq(self.output.payload),
                             self.output.ready.eq(out.ready), tx_crc.valid.eq(accepted)]
                with m.If(accepted):
                    m.d.sync += outs_left.eq(outs_left - 1)
                    with m.If(outs_left == 1):
                        m.next = "CRC_HIGH"
            with m.State("BYTES"):                  # whatever `line` holds, then the CRC
                m.d.comb += [out.valid.eq(1), out.payload.eq(line[:8]),
                             tx_crc.valid.eq(accepted)]
                with m.If(accepted):
                    m.d.sync += [line.eq(line >> 8), left.eq(left - 1)]
                    with m.If(left == 1):
                        m.next = "CRC_HIGH"
            with m.State("CRC_HIGH"):
                m.d.comb += [out.valid.eq(1), out.payload.eq(tx_crc.crc[8:])]
                with m.If(accepted):
                    m.next = "CRC_LOW"
            with m.State("CRC_LOW"):
                m.d.comb += [out.valid.eq(1), out.payload.eq(tx_crc.crc[:8])]
                with m.If(accepted):
                    m.next = "DRAIN"
            with m.State("DRAIN"):              # the last byte leaves the shift register
                with m.If(utx.idle & ~tx_fifo.r_rdy & (tx_fifo.level == 0)):
                    m.next = "IDLE"

        m.d.comb += self.busy.eq(~tx_idle)
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
        Computing or talking.
    errors : Out(8)
        ERROR frames sent (wraps).
    """

    def __init__(self, program, *, clock_hz: int, baud: int, link_hz: int | None = None,
                 timeout_s: float = 0.02, options=None, timeout_cycles: int | None = None):
        from .uart import uart_divisor

        self.program, self.options = program, options
        self.clock_hz, self.baud = int(clock_hz), baud
        self.link_hz = int(link_hz or clock_hz)
        self.divisor = uart_divisor(self.link_hz, baud)
        self.timeout_cycles = (timeout_cycles if timeout_cycles is not None
                               else max(12 * self.divisor, int(timeout_s * self.link_hz)))
        from hw.images import geometry, weight_image
        from hw.options import HardwareOptions

        geo = geometry(program, options or HardwareOptions())
        self.weight_bytes = (len(weight_image(program, geo)) if geo.weights == "uploaded"
                             else 0)
        self.info = proto.BoardInfo(program.model.in_features, program.model.out_features,
                                    program.pes, proto.design_id(program), self.clock_hz,
                                    proto.FLAG_UPLOADED if self.weight_bytes else 0)
        super().__init__({"rx": In(1, init=1), "tx": Out(1, init=1), "busy": Out(1),
                          "errors": Out(8)})

    def elaborate(self, platform):
        from amaranth.hdl import DomainRenamer
        from amaranth.lib.fifo import AsyncFIFO

        from hw.top import SparseAccelerator

        m = Module()
        m.submodules.core = core = SparseAccelerator(self.program, self.options)
        # the link's bytes into the core's input beats (one lane per bus)
        m.submodules.packer = packer = LanePacker(core.geo.cols, self.program.model.in_features)
        wiring.connect(m, packer.o, core.input)
        m.submodules.link = link = DomainRenamer("link")(
            UartLink(self.info, divisor=self.divisor, timeout_cycles=self.timeout_cycles,
                     weight_bytes=self.weight_bytes))
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
                                                  link.input.payload)),
                         to_core.i.valid.eq(link.input.valid | link.weights.valid),
                         link.weights.ready.eq(to_core.i.ready)]
        else:
            m.d.comb += [to_core.i.payload.eq(link.input.payload),
                         to_core.i.valid.eq(link.input.valid)]
        m.d.comb += [
            link.input.ready.eq(to_core.i.ready),
            link.output.payload.eq(to_link.r_data), link.output.valid.eq(to_link.r_rdy),
            to_link.r_en.eq(link.output.ready),
            link.rx.eq(self.rx), self.tx.eq(link.tx),
            self.busy.eq(core.busy | link.busy), self.errors.eq(link.errors),
        ]
        return m
