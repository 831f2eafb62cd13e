"""The accelerator behind a UART: :class:`UartLink` speaks :mod:`boards.protocol` and
:class:`LinkedAccelerator` joins it to a :class:`~hw.top.SparseAccelerator`.

A request's inputs are buffered and fed to the accelerator only after the frame's CRC checked
out, so a corrupted or shortened frame can never produce a result: it produces an ERROR frame.
"""

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import memory, stream, wiring
from amaranth.lib.crc import catalog
from amaranth.lib.wiring import In, Out

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

    Members
    -------
    rx : In(1)
        UART receive line.
    tx : Out(1)
        UART transmit line.
    input : Out(stream.Signature(signed(8)))
        One inference's inputs, to the accelerator.
    output : In(stream.Signature(signed(8)))
        The inference's outputs, from the accelerator.
    cycles : In(32)
        The accelerator's compute cycles of the last inference.
    busy : Out(1)
        A request is being received or answered.
    errors : Out(8)
        Count of ERROR frames sent (wraps).
    """

    def __init__(self, info: proto.BoardInfo, *, divisor: int, timeout_cycles: int):
        if not isinstance(info, proto.BoardInfo):
            raise TypeError(f"info must be a protocol.BoardInfo, not {info!r}")
        if not isinstance(timeout_cycles, int) or timeout_cycles < 12 * divisor:
            raise ValueError(f"timeout_cycles must be an integer of at least 12 bit times "
                             f"({12 * divisor}), not {timeout_cycles!r}")
        self.info, self.divisor, self.timeout_cycles = info, divisor, timeout_cycles
        super().__init__({
            "rx": In(1, init=1),
            "tx": Out(1, init=1),
            "input": Out(stream.Signature(signed(8))),
            "output": In(stream.Signature(signed(8))),
            "cycles": In(32),
            "busy": Out(1),
            "errors": Out(8),
        })

    def elaborate(self, platform):
        m = Module()
        info = self.info
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

        def fail(code, then):
            m.d.sync += tx_code.eq(code)
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
                full = Cat(length[:8], byte)
                with m.If(got):
                    m.d.sync += [length[8:].eq(byte), index.eq(0)]
                    with m.If((kind == proto.INFER) & (full == n_in) & (n_in > 0)):
                        m.next = "PAYLOAD"
                    with m.Elif(((kind == proto.INFER) | (kind == proto.INFO)) & (full == 0)
                                & ((kind == proto.INFO) | (n_in == 0))):
                        m.next = "CRC0"
                    with m.Elif((kind == proto.INFER) | (kind == proto.INFO)):
                        fail(proto.ERR_LENGTH, "DRAIN")
                    with m.Else():
                        fail(proto.ERR_TYPE, "DRAIN")
                guard()
            with m.State("PAYLOAD"):
                m.d.comb += [in_frame.eq(1), rx_crc.valid.eq(got),
                             buf_wp.addr.eq(index), buf_wp.data.eq(byte), buf_wp.en.eq(got)]
                with m.If(got):
                    m.d.sync += index.eq(index + 1)
                    with m.If(index == n_in - 1):
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
                    m.next = "CHECK"
                guard()
            with m.State("CHECK"):              # the CRC register has taken the last byte
                with m.If(~rx_crc.match_detected):
                    fail(proto.ERR_CRC, "HUNT")
                with m.Elif(tx_idle):
                    m.d.comb += tx_start.eq(1)
                    m.d.sync += [tx_kind.eq(Mux(kind == proto.INFER, proto.RESULT,
                                                proto.INFO_REPLY)), index.eq(0)]
                    m.next = "FEED" if n_in else "WAIT_TX"
                    if n_in:
                        with m.If(kind == proto.INFO):
                            m.next = "WAIT_TX"
            with m.State("FEED"):               # buffered inputs -> accelerator
                m.d.comb += [buf_rp.addr.eq(index), buf_rp.en.eq(1)]
                m.next = "FEED_BEAT"
            with m.State("FEED_BEAT"):
                m.d.comb += [self.input.valid.eq(1), self.input.payload.eq(buf_rp.data),
                             buf_rp.en.eq(0)]
                with m.If(self.input.ready):
                    m.d.sync += index.eq(index + 1)
                    m.next = "WAIT_TX"
                    with m.If(index != n_in - 1):
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
        reply_len = Mux(tx_kind == proto.RESULT, n_out + 4,
                        Mux(tx_kind == proto.INFO_REPLY, proto.INFO_BYTES, 1))
        header = Array([Const(proto.SYNC_REPLY, 8), tx_kind, seq, reply_len[:8], reply_len[8:16]])
        info_bytes = Array([Const(b, 8) for b in proto.info_payload(info)])
        cycle_bytes = Array([self.cycles[8 * i:8 * i + 8] for i in range(4)])
        pos = Signal(range(max(n_out + 4, proto.INFO_BYTES, proto.HEADER_BYTES) + 1))
        out = utx.data
        accepted = out.valid & out.ready
        m.d.comb += [tx_crc.data.eq(out.payload)]
        with m.FSM(name="tx_frame"):
            with m.State("IDLE"):
                m.d.comb += [tx_idle.eq(1), tx_crc.start.eq(1)]
                with m.If(tx_start):
                    m.d.sync += pos.eq(0)
                    m.next = "HEADER"
            with m.State("HEADER"):
                m.d.comb += [out.valid.eq(1), out.payload.eq(header[pos]),
                             tx_crc.valid.eq(accepted & (pos != 0))]
                with m.If(accepted):
                    m.d.sync += pos.eq(pos + 1)
                    with m.If(pos == proto.HEADER_BYTES - 1):
                        m.d.sync += pos.eq(0)
                        m.next = "PAYLOAD"
            with m.State("PAYLOAD"):
                last = Signal()
                with m.Switch(tx_kind):
                    with m.Case(proto.RESULT):
                        with m.If(pos < n_out):      # outputs pass straight through
                            m.d.comb += [out.valid.eq(self.output.valid),
                                         out.payload.eq(self.output.payload),
                                         self.output.ready.eq(out.ready)]
                        with m.Else():
                            m.d.comb += [out.valid.eq(1), out.payload.eq(cycle_bytes[(pos - n_out)[:2]])]
                        m.d.comb += last.eq(pos == n_out + 3)
                    with m.Case(proto.INFO_REPLY):
                        m.d.comb += [out.valid.eq(1), out.payload.eq(info_bytes[pos]),
                                     last.eq(pos == proto.INFO_BYTES - 1)]
                    with m.Default():
                        m.d.comb += [out.valid.eq(1), out.payload.eq(tx_code), last.eq(1)]
                m.d.comb += tx_crc.valid.eq(accepted)
                with m.If(accepted):
                    m.d.sync += pos.eq(pos + 1)
                    with m.If(last):
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
                with m.If(utx.idle):
                    m.next = "IDLE"

        m.d.comb += self.busy.eq(~tx_idle)
        return m


class LinkedAccelerator(wiring.Component):
    """A :class:`~hw.top.SparseAccelerator` for ``program`` behind a :class:`UartLink`: what
    the board top instantiates, and what the cocotb UART bench simulates.

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

    def __init__(self, program, *, clock_hz: int, baud: int, timeout_s: float = 0.02,
                 options=None, timeout_cycles: int | None = None):
        from .uart import uart_divisor

        self.program, self.options = program, options
        self.clock_hz, self.baud = int(clock_hz), baud
        self.divisor = uart_divisor(clock_hz, baud)
        self.timeout_cycles = (timeout_cycles if timeout_cycles is not None
                               else max(12 * self.divisor, int(timeout_s * clock_hz)))
        self.info = proto.BoardInfo(program.model.in_features, program.model.out_features,
                                    program.pes, proto.design_id(program), self.clock_hz)
        super().__init__({"rx": In(1, init=1), "tx": Out(1, init=1), "busy": Out(1),
                          "errors": Out(8)})

    def elaborate(self, platform):
        from hw.top import SparseAccelerator

        m = Module()
        m.submodules.core = core = SparseAccelerator(self.program, self.options)
        m.submodules.link = link = UartLink(self.info, divisor=self.divisor,
                                            timeout_cycles=self.timeout_cycles)
        wiring.connect(m, link.input, core.input)
        wiring.connect(m, core.output, link.output)
        m.d.comb += [
            link.rx.eq(self.rx), self.tx.eq(link.tx), link.cycles.eq(core.cycles),
            self.busy.eq(core.busy | link.busy), self.errors.eq(link.errors),
        ]
        return m
