"""The link's request side: :class:`RequestReceiver` takes frames off the UART's ``rx`` line,
checks them (see :mod:`boards.link.protocol`) and asks for the reply
(:data:`~boards.link.transmitter.ReplySignature`).

A request's inputs are buffered and fed to the accelerator only after the frame's CRC checked
out, so a corrupted or shortened frame never produces a result, only an ERROR reply. LOAD
frames' image bytes go straight to the accelerator's weight memories and are counted.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import memory, stream, wiring
from amaranth.lib.wiring import In, Out

from hw.weights import WEIGHT_BYTE

from . import protocol as proto
from .flashboot import BootStatus
from .transmitter import ReplySignature
from .uart import UARTRx

__all__ = ["RequestReceiver"]


class RequestReceiver(wiring.Component):
    """Request framer: frames in on ``rx``, inputs out on ``input`` (INFER), image bytes out on
    ``weights`` (LOAD), one reply request on ``reply`` for every frame it could frame.

    Parameters
    ----------
    info : protocol.BoardInfo
        ``in_features`` sizes an INFER frame.
    divisor : int
        Clock cycles per UART bit.
    timeout_cycles : int
        Quiet line inside a frame for this long means a byte was lost.
    weight_bytes : int
        Size of the weight image the design takes over the link; 0: weights in the bitstream.
    flash_boot : bool
        The weights are read from flash first: the receiver waits for ``boot`` and takes its
        verdict as the image's state (requires ``weight_bytes``).

    Members
    -------
    rx : In(1)
        UART receive line.
    boot : In(BootStatus)
        Flash boot only: how the :class:`~boards.link.flashboot.FlashBoot` went; the line is
        ignored until ``done``.
    input : Out(stream.Signature(signed(8)))
        One inference's inputs, to the accelerator (after the frame's CRC checked out).
    reply : Out(ReplySignature)
        To the :class:`~boards.link.transmitter.ReplyTransmitter`: ``start`` with ``kind``
        (RESULT, INFO_REPLY, LOADED or ERROR), ``seq``, ``code`` (an ERROR's), ``count`` and
        ``loaded`` (image bytes held, a whole image held); ``idle`` in: the line is free. The
        receiver ignores the line until a RESULT, INFO_REPLY or LOADED reply is out.
    errors : Out(8)
        Count of ERROR replies asked for (wraps).
    weights : Out(stream.Signature(WEIGHT_BYTE))
        Uploaded weights only: LOAD frames' image bytes, to the accelerator (a byte that finds
        it not ready is an error).
    """

    def __init__(self, info: proto.BoardInfo, *, divisor: int, timeout_cycles: int,
                 weight_bytes: int = 0, flash_boot: bool = False):
        if not isinstance(info, proto.BoardInfo):
            raise TypeError(f"info must be a protocol.BoardInfo, not {info!r}")
        if flash_boot and not weight_bytes:
            raise ValueError("flash_boot needs uploaded weights (weight_bytes > 0)")
        self.info, self.divisor, self.timeout_cycles = info, divisor, timeout_cycles
        self.weight_bytes, self.flash_boot = weight_bytes, bool(flash_boot)
        upload = {"weights": Out(stream.Signature(WEIGHT_BYTE))} if weight_bytes else {}
        if flash_boot:
            upload["boot"] = In(BootStatus)
        super().__init__({
            "rx": In(1, init=1),
            "input": Out(stream.Signature(signed(8))),
            "reply": Out(ReplySignature),
            "errors": Out(8),
            **upload,
        })

    def elaborate(self, platform):
        m = Module()
        fsm = _FrameStates(self, m)
        with m.FSM(name="rx_frame"):
            if self.flash_boot:
                fsm.boot()                      # the first state: where the FSM starts
            fsm.header()
            fsm.decide()
            fsm.payload()
            if fsm.uploaded:
                fsm.upload()
            fsm.check()
            fsm.answer()
        return m


class _FrameStates:
    """Builds :class:`RequestReceiver`'s frame FSM into ``m``: the registers and submodules it
    shares, then one method per group of states (called inside ``m.FSM``, in this order)."""

    def __init__(self, link: RequestReceiver, m: Module):
        self.link, self.m = link, m
        info = link.info
        self.total = total = link.weight_bytes
        self.uploaded = total > 0
        self.n_in = n_in = info.in_features
        m.submodules.uart_rx = self.urx = urx = UARTRx(link.divisor)
        m.submodules.rx_crc = self.rx_crc = rx_crc = \
            proto.CRC.create()
        m.d.comb += urx.rx.eq(link.rx)

        m.submodules.inputs = buf = memory.Memory(shape=8, depth=max(2, n_in), init=[])
        self.buf_wp = buf.write_port()
        self.buf_rp = buf.read_port()

        self.byte = byte = urx.data.payload
        self.got = got = urx.data.valid
        self.kind = Signal(8)
        self.seq = Signal(8)
        self.length = Signal(16)
        self.index = Signal(range(max(2, n_in) + 1))
        self.index_last = Signal()             # index == n_in - 1, kept as a register
        self.crc_good = Signal()
        # a quiet line: counts down from the timeout; `timed_out` is a register, so the frame
        # logic never waits for a wide comparison
        timeout = link.timeout_cycles
        quiet = Signal(range(timeout + 1), init=timeout)
        self.timed_out = timed_out = Signal()
        with m.If(got | urx.framing_error):
            m.d.sync += [quiet.eq(timeout), timed_out.eq(0)]
        with m.Elif(quiet != 0):
            m.d.sync += quiet.eq(quiet - 1)
        with m.Else():
            m.d.sync += timed_out.eq(1)

        # what the transmitter is asked to send
        self.tx_start = Signal()
        self.tx_kind = Signal(8)
        self.tx_code = Signal(8)
        self.tx_idle = link.reply.idle
        m.d.comb += [rx_crc.data.eq(byte)]

        # uploaded weights: image bytes the accelerator holds, whether they are a whole image
        # (`loaded`), whether an error spoiled the image since its offset-0 chunk (`spoiled`)
        self.count = Signal(range(total + 1))
        self.loaded = Signal()
        self.boot_error = Signal()             # the flash's image was corrupt: not loaded
        self.spoiled = Signal()
        self.offset = Signal(32)
        self.offset_bytes = Signal(range(proto.LOAD_OFFSET_BYTES))
        self.first_byte = Signal()             # the next image byte starts an image
        self.data_left = Signal(16)
        self.data_last = Signal()              # data_left == 1, as a register
        self.is_load = self.kind == proto.LOAD
        self.in_frame = Signal()
        reply = link.reply
        m.d.comb += [reply.start.eq(self.tx_start), reply.kind.eq(self.tx_kind),
                     reply.seq.eq(self.seq), reply.code.eq(self.tx_code),
                     reply.count.eq(self.count), reply.loaded.eq(self.loaded),
                     reply.boot_error.eq(self.boot_error)]

    def fail(self, code, then, *, spoils=True):
        m = self.m
        m.d.sync += self.tx_code.eq(code)
        if self.uploaded and spoils:
            with m.If(self.is_load):           # whatever it wrote is suspect now
                m.d.sync += [self.spoiled.eq(1), self.loaded.eq(0)]
        m.next = "ERROR_" + then

    def guard(self):
        # inside a frame, a byte with a bad stop bit or a quiet line ends it with an error
        m = self.m
        with m.If(self.urx.framing_error):
            self.fail(proto.ERR_FRAMING, "DRAIN")
        with m.Elif(self.timed_out & ~self.got):
            self.fail(proto.ERR_TIMEOUT, "HUNT")

    def boot(self):
        """Flash boot: the line is ignored until the flash image has been read; its verdict
        is the image's state, as if it had been uploaded."""
        m, status = self.m, self.link.boot
        with m.State("BOOT"):
            with m.If(status.done):
                m.d.sync += [self.loaded.eq(status.loaded), self.boot_error.eq(status.error),
                             self.count.eq(Mux(status.loaded, self.total, 0))]
                m.next = "HUNT"

    def header(self):
        m, got, byte, rx_crc = self.m, self.got, self.byte, self.rx_crc
        with m.State("HUNT"):
            m.d.comb += rx_crc.start.eq(1)
            with m.If(got & (byte == proto.SYNC_REQUEST)):
                m.d.sync += self.kind.eq(0)    # no stale type judges this frame's errors
                m.next = "TYPE"
        for state, target, nxt in (("TYPE", self.kind, "SEQ"), ("SEQ", self.seq, "LEN0"),
                                   ("LEN0", self.length[:8], "LEN1")):
            with m.State(state):
                m.d.comb += [self.in_frame.eq(1), rx_crc.valid.eq(got)]
                with m.If(got):
                    m.d.sync += target.eq(byte)
                    m.next = nxt
                self.guard()
        with m.State("LEN1"):
            m.d.comb += [self.in_frame.eq(1), rx_crc.valid.eq(got)]
            with m.If(got):
                m.d.sync += [self.length[8:].eq(byte), self.index.eq(0),
                             self.index_last.eq(self.n_in == 1)]
                m.next = "DECIDE"
            self.guard()

    def decide(self):
        m, kind, length, n_in, uploaded = self.m, self.kind, self.length, self.n_in, self.uploaded
        is_load = self.is_load
        with m.State("DECIDE"):                 # the header is in registers: judge it
            m.d.comb += [self.in_frame.eq(1)]
            infer, ask = kind == proto.INFER, kind == proto.INFO
            with m.If(infer & Const(uploaded) & ~self.loaded):
                self.fail(Mux(self.boot_error, proto.ERR_BOOT_IMAGE, proto.ERR_NOT_LOADED),
                          "DRAIN")
            with m.Elif(is_load & Const(uploaded) & (length > proto.LOAD_OFFSET_BYTES)):
                if uploaded:                    # (a design without uploads has no such state)
                    m.d.sync += [self.offset_bytes.eq(0),
                                 self.data_left.eq(length - proto.LOAD_OFFSET_BYTES),
                                 self.data_last.eq(length == proto.LOAD_OFFSET_BYTES + 1)]
                    m.next = "OFFSET"
            with m.Elif(is_load & Const(uploaded)):
                self.fail(proto.ERR_LENGTH, "DRAIN")
            with m.Elif(infer & (length == n_in) & (n_in > 0)):
                m.next = "PAYLOAD"
            with m.Elif((infer | ask) & (length == 0) & (ask | (n_in == 0))):
                m.next = "CRC0"
            with m.Elif(infer | ask):
                self.fail(proto.ERR_LENGTH, "DRAIN")
            with m.Else():
                self.fail(proto.ERR_TYPE, "DRAIN")

    def payload(self):
        m, got, index, wp = self.m, self.got, self.index, self.buf_wp
        with m.State("PAYLOAD"):
            m.d.comb += [self.in_frame.eq(1), self.rx_crc.valid.eq(got),
                         wp.addr.eq(index), wp.data.eq(self.byte), wp.en.eq(got)]
            with m.If(got):
                m.d.sync += [index.eq(index + 1), self.index_last.eq(index == self.n_in - 2)]
                with m.If(self.index_last):
                    m.next = "CRC0"
            self.guard()

    def upload(self):
        m, got, byte, count, weights = self.m, self.got, self.byte, self.count, self.link.weights
        offset, offset_bytes, data_left = self.offset, self.offset_bytes, self.data_left
        with m.State("OFFSET"):
            m.d.comb += [self.in_frame.eq(1), self.rx_crc.valid.eq(got)]
            with m.If(got):
                m.d.sync += [offset.eq(Cat(offset[8:], byte)),
                             offset_bytes.eq(offset_bytes + 1)]
                with m.If(offset_bytes == proto.LOAD_OFFSET_BYTES - 1):
                    m.next = "PLACE"
            self.guard()
        with m.State("PLACE"):                  # offset 0 starts an image, others continue it
            m.d.comb += self.in_frame.eq(1)
            restart = offset == 0
            base = Mux(restart, 0, count)
            # refused before a byte is written: the image stays as it was
            with m.If(~restart & ((offset != count) | self.spoiled)):
                self.fail(proto.ERR_ORDER, "DRAIN", spoils=False)
            with m.Elif(base + data_left > self.total):
                self.fail(proto.ERR_LENGTH, "DRAIN", spoils=False)
            with m.Else():
                with m.If(restart):
                    m.d.sync += [count.eq(0), self.spoiled.eq(0), self.loaded.eq(0),
                                 self.boot_error.eq(0), self.first_byte.eq(1)]
                m.next = "LOAD_DATA"
        with m.State("LOAD_DATA"):              # image bytes go straight to the accelerator
            m.d.comb += [self.in_frame.eq(1), self.rx_crc.valid.eq(got),
                         weights.valid.eq(got),
                         weights.payload.data.eq(byte),
                         weights.payload.first.eq(self.first_byte)]
            with m.If(got):
                with m.If(~weights.ready):
                    self.fail(proto.ERR_OVERRUN, "DRAIN")
                with m.Else():
                    m.d.sync += [count.eq(count + 1), self.first_byte.eq(0),
                                 data_left.eq(data_left - 1),
                                 self.data_last.eq(data_left == 2)]
                    with m.If(self.data_last):
                        m.next = "CRC0"
            self.guard()

    def check(self):
        """The CRC's two bytes, then the verdict: an ERROR, or the reply and (INFER) the
        inputs."""
        m, got, rx_crc, n_in = self.m, self.got, self.rx_crc, self.n_in
        for state, nxt in (("CRC0", "CRC1"), ("CRC1", "CRC_SETTLE")):
            with m.State(state):
                m.d.comb += [self.in_frame.eq(1), rx_crc.valid.eq(got)]
                with m.If(got):
                    m.next = nxt
                self.guard()
        with m.State("CRC_SETTLE"):             # the CRC register has taken the last byte
            m.d.sync += self.crc_good.eq(rx_crc.match_detected)
            m.next = "CHECK"
        with m.State("CHECK"):
            with m.If(~self.crc_good):
                self.fail(proto.ERR_CRC, "HUNT")
            with m.Elif(self.tx_idle):
                m.d.comb += self.tx_start.eq(1)
                m.d.sync += [self.tx_kind.eq(Mux(self.kind == proto.INFER, proto.RESULT,
                                                 Mux(self.is_load, proto.LOADED,
                                                     proto.INFO_REPLY))),
                             self.index.eq(0), self.index_last.eq(n_in == 1)]
                m.next = "FEED" if n_in else "WAIT_TX"
                with m.If(self.kind != proto.INFER):
                    m.next = "WAIT_TX"
                if self.uploaded:
                    with m.If(self.is_load):    # a whole image, every frame of it good
                        m.d.sync += self.loaded.eq((self.count == self.total) & ~self.spoiled)

    def answer(self):
        """Inputs to the accelerator, the wait for the reply, errors, and the skipped rest of
        a frame."""
        m, rp, index, inputs = self.m, self.buf_rp, self.index, self.link.input
        with m.State("FEED"):                   # buffered inputs -> accelerator
            m.d.comb += [rp.addr.eq(index), rp.en.eq(1)]
            m.next = "FEED_BEAT"
        with m.State("FEED_BEAT"):
            m.d.comb += [inputs.valid.eq(1), inputs.payload.eq(rp.data), rp.en.eq(0)]
            with m.If(inputs.ready):
                m.d.sync += [index.eq(index + 1), self.index_last.eq(index == self.n_in - 2)]
                m.next = "WAIT_TX"
                with m.If(~self.index_last):
                    m.next = "FEED"
        with m.State("WAIT_TX"):                # ignore the line until the reply is out
            with m.If(self.tx_idle):
                m.next = "HUNT"
        for then in ("HUNT", "DRAIN"):
            with m.State("ERROR_" + then):
                with m.If(self.tx_idle):
                    m.d.comb += self.tx_start.eq(1)
                    m.d.sync += [self.tx_kind.eq(proto.ERROR),
                                 self.link.errors.eq(self.link.errors + 1)]
                    m.next = then
        with m.State("DRAIN"):                  # skip the rest of a frame we cannot parse
            with m.If(self.timed_out & ~self.got):
                m.next = "HUNT"
