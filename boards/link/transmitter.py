"""The link's reply side: :class:`ReplyTransmitter` frames one reply (RESULT, INFO_REPLY, LOADED
or ERROR, see :mod:`boards.link.protocol`) and sends it on the UART's ``tx`` line.

:data:`ReplySignature` is the request it answers to, as the receiver
(:class:`~boards.link.receiver.RequestReceiver`) drives it.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from . import protocol as proto
from .uart import UARTTx

__all__ = ["ReplySignature", "ReplyTransmitter"]


#: A reply request, from the requester's side (the transmitter takes it flipped, ``In``):
#:
#: - ``start`` (out, 1): a one-cycle strobe, only while ``idle``; ``kind`` and ``code`` are
#:   set in that same cycle (registers) and hold until ``idle`` again.
#: - ``kind`` (out, 8): :data:`~.protocol.RESULT`, :data:`~.protocol.INFO_REPLY`,
#:   :data:`~.protocol.LOADED`; anything else sends an :data:`~.protocol.ERROR`.
#: - ``seq`` (out, 8): echoed in the header (taken the cycle after ``start``).
#: - ``code`` (out, 8): an ERROR's code (taken once the header is out).
#: - ``count`` (out, 32): a LOADED reply's image byte count (taken once the header is out).
#: - ``loaded`` (out, 1): the flags' :data:`~.protocol.FLAG_LOADED` bit (taken with ``count``).
#: - ``boot_error`` (out, 1): the flags' :data:`~.protocol.FLAG_BOOT_ERROR` bit (likewise).
#: - ``idle`` (in, 1): nothing being sent, the last stop bit included.
ReplySignature = wiring.Signature({
    "start": Out(1),
    "kind": Out(8),
    "seq": Out(8),
    "code": Out(8),
    "count": Out(32),
    "loaded": Out(1),
    "boot_error": Out(1),
    "idle": In(1),
})


class ReplyTransmitter(wiring.Component):
    """Reply framer and UART transmitter: ``sync | kind | seq | length | payload | crc`` out
    on ``tx`` for each ``reply.start``.

    Every byte comes out of one shift register, loaded with the header, the INFO payload, the
    LOADED count or the error code, or straight from ``output`` (RESULT): no multiplexer
    indexed by a counter, and a two-entry FIFO with a registered output between all of it and
    the UART.

    Parameters
    ----------
    info : protocol.BoardInfo
        What an INFO_REPLY carries (its ``flags`` byte is sent live: ``uploaded``, then
        ``reply.loaded`` and ``reply.boot_error``); ``out_features`` sizes a RESULT.
    divisor : int
        Clock cycles per UART bit.
    uploaded : bool
        The design takes its weights over the link (the flags'
        :data:`~.protocol.FLAG_UPLOADED` bit).

    Members
    -------
    reply : In(ReplySignature)
        What to send (``start``, ``kind``, ``seq``, ``code``, ``count``, ``loaded``: inputs),
        and ``idle``, an output: no reply in progress.
    output : In(stream.Signature(8))
        A RESULT's payload: the inference's outputs, then its compute cycle count (4 bytes,
        little-endian); taken only while a RESULT is being sent.
    tx : Out(1)
        UART transmit line.
    """

    def __init__(self, info: proto.BoardInfo, *, divisor: int, uploaded: bool = False):
        if not isinstance(info, proto.BoardInfo):
            raise TypeError(f"info must be a protocol.BoardInfo, not {info!r}")
        self.info, self.divisor, self.uploaded = info, divisor, bool(uploaded)
        super().__init__({
            "reply": In(ReplySignature),
            "output": In(stream.Signature(8)),
            "tx": Out(1, init=1),
        })

    def elaborate(self, platform):
        m = Module()
        n_out = self.info.out_features
        req = self.reply
        m.submodules.uart_tx = utx = UARTTx(self.divisor)
        m.submodules.tx_crc = tx_crc = proto.CRC.create()
        m.d.comb += self.tx.eq(utx.tx)

        info_payload = proto.info_payload(self.info)
        widest = 8 * max(proto.HEADER_BYTES, len(info_payload), 4, proto.LOADED_BYTES)
        line = Signal(widest)
        left = Signal(range(widest // 8 + 1))          # bytes left in `line`
        outs_left = Signal(range(n_out + 5))
        flags = Cat(Const(int(self.uploaded), 1), req.loaded, req.boot_error, Const(0, 5))

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
                m.d.comb += [req.idle.eq(1), tx_crc.start.eq(1)]
                with m.If(req.start):
                    m.next = "START"
            with m.State("START"):              # kind was set with start: now it holds
                m.d.comb += tx_crc.start.eq(1)
                length = Mux(req.kind == proto.RESULT, n_out + 4,
                             Mux(req.kind == proto.INFO_REPLY, len(info_payload),
                                 Mux(req.kind == proto.LOADED, proto.LOADED_BYTES, 1)))
                load(Const(proto.SYNC_REPLY, 8), req.kind, req.seq, length[:8], length[8:16])
                m.d.sync += first.eq(1)
                m.next = "HEADER"
            with m.State("HEADER"):
                m.d.comb += [out.valid.eq(1), out.payload.eq(line[:8]),
                             tx_crc.valid.eq(accepted & ~first)]
                with m.If(accepted):
                    m.d.sync += [line.eq(line >> 8), left.eq(left - 1), first.eq(0)]
                    with m.If(left == 1):
                        with m.Switch(req.kind):
                            with m.Case(proto.RESULT):
                                m.d.sync += outs_left.eq(n_out + 4)
                                m.next = "OUTPUTS"
                            with m.Case(proto.INFO_REPLY):     # the flags byte is live
                                load(*[Const(b, 8) for b in info_payload[:-1]], flags)
                                m.next = "BYTES"
                            with m.Case(proto.LOADED):
                                load(*[req.count[8 * i:8 * i + 8] for i in range(4)], flags)
                                m.next = "BYTES"
                            with m.Default():
                                load(req.code)
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
        return m
