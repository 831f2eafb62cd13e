"""Weights from SPI flash at power-up: :class:`FlashBoot` reads a flash image
(:mod:`boards.link.flashimage`) with the standard READ command (0x03) and streams its weight
bytes into the same write path that LOAD frames use (:mod:`boards.link.protocol`).

:class:`SPIMaster` exchanges one byte at a time in SPI mode 0 (clock idle low, both sides
sample on the rising edge; the master takes ``cipo`` at the end of each high half, when the
flash has held it for half a period). Every pin it drives is a register.
"""

from amaranth.hdl import Cat, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from hw.weights import WEIGHT_BYTE

from . import flashimage

__all__ = ["FlashSignature", "BootStatus", "SPIMaster", "FlashBoot", "READ",
           "RELEASE_POWER_DOWN"]

#: The flash's pins, from the master's side (``cs`` high: selected; the board layer inverts).
FlashSignature = wiring.Signature({
    "sck": Out(1),
    "cs": Out(1),
    "copi": Out(1),
    "cipo": In(1),
})

#: How the boot went, from :class:`FlashBoot`'s side: ``done`` (finished; stays set), then
#: ``loaded`` (a whole, good image was streamed out) or ``error`` (the image was corrupt or
#: another design's) or neither (no image in the flash).
BootStatus = wiring.Signature({
    "done": Out(1),
    "loaded": Out(1),
    "error": Out(1),
})

#: READ (3-byte address, no dummy cycles) and Release Power-Down: every SPI NOR flash has both.
READ = 0x03
RELEASE_POWER_DOWN = 0xAB


class SPIMaster(wiring.Component):
    """Mode-0 SPI master, one byte exchanged for each byte taken.

    Parameters
    ----------
    divisor : int
        Clock cycles per half SCK period (1: SCK at half the clock).

    Members
    -------
    flash : Out(FlashSignature)
        The pins.
    select : In(1)
        Chip select (``flash.cs`` follows a cycle later); drop it only while ``idle``.
    i : In(stream.Signature(8))
        Bytes to send, MSB first; one is taken only when the last one's reply has been taken.
    o : Out(stream.Signature(8))
        The byte received during each exchange.
    idle : Out(1)
        No exchange in progress and no reply waiting.
    """

    def __init__(self, divisor: int = 1):
        if not isinstance(divisor, int) or divisor < 1:
            raise ValueError(f"divisor must be a whole number >= 1, not {divisor!r}")
        self.divisor = divisor
        super().__init__({
            "flash": Out(FlashSignature),
            "select": In(1),
            "i": In(stream.Signature(8)),
            "o": Out(stream.Signature(8)),
            "idle": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        pins = self.flash
        busy = Signal()
        bits = Signal(range(9))                     # bits left in this exchange
        shift = Signal(8)
        timer = Signal(range(self.divisor))
        m.d.sync += pins.cs.eq(self.select)
        m.d.comb += [self.i.ready.eq(~busy & ~self.o.valid),
                     self.idle.eq(~busy & ~self.o.valid), self.o.payload.eq(shift)]
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [shift.eq(self.i.payload), pins.copi.eq(self.i.payload[7]),
                         bits.eq(8), busy.eq(1), timer.eq(self.divisor - 1)]
        with m.Elif(busy & (timer != 0)):
            m.d.sync += timer.eq(timer - 1)
        with m.Elif(busy):
            m.d.sync += timer.eq(self.divisor - 1)
            with m.If(~pins.sck):
                m.d.sync += pins.sck.eq(1)          # the flash samples copi
            with m.Else():                          # the flash shifts its next bit out
                m.d.sync += [pins.sck.eq(0), shift.eq(Cat(pins.cipo, shift[:7])),
                             pins.copi.eq(shift[6]), bits.eq(bits - 1)]
                with m.If(bits == 1):
                    m.d.sync += [busy.eq(0), self.o.valid.eq(1)]
        return m


class FlashBoot(wiring.Component):
    """At reset: wake the flash (Release Power-Down), READ the flash image at ``offset``,
    check its header against this design, stream its image bytes out on ``weights``, check
    its CRC. Then ``done``, with ``loaded`` (a good image) or ``error`` (magic present, but
    another design's header or a bad CRC), or neither (no image: no magic).

    Parameters
    ----------
    design_id : int
        :func:`boards.link.protocol.design_id` of the program.
    weight_bytes : int
        Size of the design's weight image.
    offset : int
        Where the flash image starts in the flash (a 24-bit address).
    divisor : int
        Clock cycles per half SCK period.
    wake_cycles : int
        Cycles to wait after Release Power-Down (datasheets: 3 us at most).

    Members
    -------
    flash : Out(FlashSignature)
        The flash's pins.
    weights : Out(stream.Signature(WEIGHT_BYTE))
        The image bytes, ``first`` on the first; written before the CRC is known (``loaded``
        says whether to trust them).
    status : Out(BootStatus)
        ``done``, then ``loaded`` or ``error`` (or neither: no image).
    """

    def __init__(self, design_id: int, weight_bytes: int, offset: int, *, divisor: int = 1,
                 wake_cycles: int = 64):
        self.prefix = flashimage.expected_prefix(design_id, weight_bytes)
        if not isinstance(offset, int) or not 0 <= offset < 2 ** 24 - weight_bytes:
            raise ValueError(f"offset must be a 24-bit flash address with room for the "
                             f"image, not {offset!r}")
        if not isinstance(wake_cycles, int) or wake_cycles < 1:
            raise ValueError(f"wake_cycles must be a whole number >= 1, not {wake_cycles!r}")
        self.weight_bytes, self.offset = weight_bytes, offset
        self.divisor, self.wake_cycles = divisor, wake_cycles
        super().__init__({
            "flash": Out(FlashSignature),
            "weights": Out(stream.Signature(WEIGHT_BYTE)),
            "status": Out(BootStatus),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.spi = spi = SPIMaster(self.divisor)
        m.submodules.crc = crc = flashimage.CRC.create()
        wiring.connect(m, spi.flash, wiring.flipped(self.flash))
        byte = spi.o.payload
        wait = Signal(range(self.wake_cycles + 1), init=self.wake_cycles)
        command = Signal(32, init=(READ << 24) | self.offset)
        expect = Signal(8 * len(self.prefix), init=int.from_bytes(self.prefix, "little"))
        n = Signal(range(max(self.weight_bytes, flashimage.HEADER_BYTES) + 1))
        stored = Signal(32)                     # the header's CRC
        m.d.comb += [crc.data.eq(byte), self.weights.payload.data.eq(byte),
                     self.weights.payload.first.eq(n == 0)]

        def exchange(state, send, then):
            """Send ``send`` in ``state``; its reply is taken in ``then``."""
            with m.State(state):
                m.d.comb += [spi.select.eq(1), spi.i.valid.eq(1), spi.i.payload.eq(send)]
                with m.If(spi.i.ready):
                    m.next = then

        with m.FSM(name="flash_boot"):
            exchange("WAKE", RELEASE_POWER_DOWN, "WAKE_REPLY")
            with m.State("WAKE_REPLY"):
                m.d.comb += [spi.select.eq(1), spi.o.ready.eq(1)]
                with m.If(spi.o.valid):
                    m.next = "WAKE_WAIT"
            with m.State("WAKE_WAIT"):          # deselected: the flash wakes up
                m.d.sync += wait.eq(wait - 1)
                with m.If(wait == 0):
                    m.next = "COMMAND"
            exchange("COMMAND", command[24:], "COMMAND_REPLY")
            with m.State("COMMAND_REPLY"):      # READ, then the address, MSB first
                m.d.comb += [spi.select.eq(1), spi.o.ready.eq(1)]
                with m.If(spi.o.valid):
                    m.d.sync += [command.eq(command << 8), n.eq(n + 1)]
                    m.next = "COMMAND"
                    with m.If(n == 3):
                        m.d.sync += n.eq(0)
                        m.next = "HEADER"
            exchange("HEADER", 0, "HEADER_REPLY")
            with m.State("HEADER_REPLY"):
                m.d.comb += [spi.select.eq(1), spi.o.ready.eq(1), crc.start.eq(1)]
                with m.If(spi.o.valid):
                    m.d.sync += [n.eq(n + 1), expect.eq(expect >> 8),
                                 stored.eq(Cat(stored[8:], byte))]
                    m.next = "HEADER"
                    with m.If((n < flashimage.PREFIX_BYTES) & (byte != expect[:8])):
                        # without the magic there is no image; with it, a wrong header is
                        m.d.sync += self.status.error.eq(n >= len(flashimage.MAGIC))
                        m.next = "FINISH"
                    with m.Elif(n == flashimage.HEADER_BYTES - 1):
                        m.d.sync += n.eq(0)
                        m.next = "IMAGE"
            exchange("IMAGE", 0, "IMAGE_REPLY")
            with m.State("IMAGE_REPLY"):        # each byte out before the next is read
                m.d.comb += [spi.select.eq(1), self.weights.valid.eq(spi.o.valid),
                             spi.o.ready.eq(self.weights.ready),
                             crc.valid.eq(spi.o.valid & self.weights.ready)]
                with m.If(spi.o.valid & self.weights.ready):
                    m.d.sync += n.eq(n + 1)
                    m.next = "IMAGE"
                    with m.If(n == self.weight_bytes - 1):
                        m.next = "CHECK"
            with m.State("CHECK"):              # the CRC register has taken the last byte
                m.d.sync += [self.status.loaded.eq(crc.crc == stored),
                             self.status.error.eq(crc.crc != stored)]
                m.next = "FINISH"
            with m.State("FINISH"):
                m.d.comb += spi.select.eq(0)
                m.d.sync += self.status.done.eq(1)
        return m
