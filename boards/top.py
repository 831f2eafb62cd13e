"""The board top: clock and reset, the accelerator behind its UART link, and status LEDs."""

from __future__ import annotations

from pathlib import Path

from amaranth.build import ResourceError
from amaranth.hdl import ClockDomain, Elaboratable, Module

from .clocking import ClockReset
from .link.gateware import LinkedAccelerator

__all__ = ["BoardTop", "DEFAULT_BAUD", "link_verilog", "LINK_TOPLEVEL"]

#: The UART rate unless ``--baud`` says otherwise (every supported board's USB bridge does it).
DEFAULT_BAUD = 115200
LINK_TOPLEVEL = "sparsemac_link"


class BoardTop(Elaboratable):
    """Everything that goes into a bitstream for ``board``.

    Parameters
    ----------
    program : SparseProgram
        The compiled model.
    board : boards.Board
        Where it runs; ``board.clock_mhz`` is the clock target.
    baud : int
        UART rate.
    options : hw.options.HardwareOptions
        The gateware's options (resolved by the build's plan).
    """

    def __init__(self, program, board, *, options, baud: int = DEFAULT_BAUD):
        self.program, self.board, self.baud = program, board, baud
        self.clocking = ClockReset(family=board.family, osc_hz=board.osc_hz,
                                   target_hz=board.clock_mhz * 1e6)
        self.clock_hz = self.clocking.actual_hz
        # checks the baud rate now, before any tool runs
        self.linked = LinkedAccelerator(
            program, clock_hz=self.clock_hz, link_hz=self.clocking.link_hz, baud=baud,
            options=options, flash_offset=board.flash_offset)

    def elaborate(self, platform):
        m = Module()
        m.domains.sync = ClockDomain("sync")
        m.domains.link = ClockDomain("link")
        m.submodules.clocking = self.clocking
        m.submodules.linked = linked = self.linked
        uart = platform.request("uart", 0)
        m.d.comb += [linked.rx.eq(uart.rx.i), uart.tx.o.eq(linked.tx)]
        if linked.flash_boot:                   # the pins are the family's business (ECP5:
            self.board.family.connect_flash(m, platform, linked.flash)      # USRMCLK)
        for n, signal in enumerate([linked.busy, linked.errors[0]]):
            try:
                led = platform.request("led", n)
            except ResourceError:
                break
            m.d.comb += led.o.eq(signal)
        return m


def link_verilog(program, path, *, clock_hz: int, baud: int, link_hz: int | None = None,
                 timeout_cycles: int | None = None, options=None,
                 flash_offset: int | None = None) -> Path:
    """Verilog of the accelerator behind its UART link (no clocking, no pins), top module
    :data:`LINK_TOPLEVEL`: what the cocotb UART bench simulates (``options.flash_boot``: with
    the flash pins ``flash__sck``, ``flash__cs``, ``flash__copi``, ``flash__cipo``)."""
    from amaranth.back import verilog

    top = LinkedAccelerator(program, clock_hz=clock_hz, link_hz=link_hz, baud=baud,
                            timeout_cycles=timeout_cycles, options=options,
                            flash_offset=flash_offset)
    path = Path(path)
    path.write_text(verilog.convert(top, name=LINK_TOPLEVEL, emit_src=False))
    return path
