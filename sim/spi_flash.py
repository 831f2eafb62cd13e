"""A SPI NOR flash for simulations: the behaviour of the pins in mode 0, edge by edge, with no
simulator in it. The Amaranth test of :class:`boards.link.flashboot.FlashBoot` and the cocotb
UART bench (:mod:`sim.uart_bench`) both drive it, each from its own clock.

It knows READ (0x03, 3-byte address) and Release Power-Down (0xAB); anything else is ignored
until the chip is deselected. Bytes past ``data`` read as erased (0xFF). ``asleep``: the chip
starts in deep power-down, as some FPGAs leave it after configuration, and answers nothing
(its output floats high) until woken.
"""

from __future__ import annotations

__all__ = ["SPIFlashModel"]


class SPIFlashModel:
    def __init__(self, data: bytes, *, asleep: bool = False):
        self.data = bytearray(data)
        self.asleep = asleep
        self.selected = False
        self.cipo = 1
        self._bits = 0              # rising edges since select
        self._shift = 0             # the command and address bits taken
        self.reads = []             # (address) of every READ, for the tests
        self.commands = []          # every command byte seen

    def select(self):
        self.selected, self._bits, self._shift = True, 0, 0

    def deselect(self):
        if self.selected and self._bits >= 8 and self.commands and \
                self.commands[-1] == 0xAB:
            self.asleep = False
        self.selected, self.cipo = False, 1

    def rise(self, copi: int):
        """SCK rising while selected: the flash samples ``copi``."""
        if not self.selected:
            return
        if self._bits < 32:
            self._shift = (self._shift << 1) | (int(copi) & 1)
        self._bits += 1
        if self._bits == 8:
            self.commands.append(self._shift & 0xFF)
        if self._bits == 32 and self._command == 0x03 and not self.asleep:
            self.reads.append(self._shift & 0xFFFFFF)

    def fall(self) -> int:
        """SCK falling while selected: the flash drives its next bit; returns ``cipo``."""
        if self.selected and self._bits >= 32 and self._command == 0x03 and not self.asleep:
            at = self._bits - 32
            address = (self._shift & 0xFFFFFF) + at // 8
            byte = self.data[address] if address < len(self.data) else 0xFF
            self.cipo = (byte >> (7 - at % 8)) & 1
        else:
            self.cipo = 1
        return self.cipo

    @property
    def _command(self) -> int:
        return self.commands[-1] if self.commands and self._bits >= 8 else -1
