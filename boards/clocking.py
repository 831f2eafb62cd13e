"""Clock and reset for a board top: a PLL from the board oscillator to the target clock where
the oscillator is slower, and a reset synchronizer that holds the design in reset until the
PLL has locked.

The PLLs are the families' (``boards/families/<family>.py``: iCE40 ``SB_PLL40_2_PAD``, ECP5
``EHXPLLL``, whose divider searches reproduce ``icepll`` and ``ecppll``); this module only asks
the board's family for one.
"""

from __future__ import annotations

from amaranth.hdl import ClockDomain, ClockSignal, Elaboratable, Module, ResetSignal, Signal
from amaranth.lib.cdc import ResetSynchronizer

__all__ = ["ClockReset"]


class ClockReset(Elaboratable):
    """Drives the ``sync`` domain (the accelerator) at ``target_hz`` and the ``link`` domain
    (the UART link) at the oscillator's frequency, and holds both in reset until the clock is
    stable. The domains themselves are defined by the board top.

    ``family``: the board's :class:`boards.families.Family`, whose PLL (if it has one)
    makes ``target_hz``. ``actual_hz`` is the accelerator's clock achieved, ``link_hz`` the
    link's.
    """

    def __init__(self, *, family, osc_hz: float, target_hz: float):
        self.family = family
        self.osc_hz = float(osc_hz)
        self.target_hz = float(target_hz)
        self.pll = None
        if abs(self.osc_hz - self.target_hz) > 1e3:
            self.pll = family.pll(self.osc_hz / 1e6, self.target_hz / 1e6)
        self.actual_hz = self.pll.f_out_mhz * 1e6 if self.pll else self.osc_hz
        self.link_hz = self.osc_hz

    def elaborate(self, platform):
        m = Module()
        locked = Signal()
        clk_name = platform.default_clk
        sync_clk, link_clk = Signal(), Signal()          # constrained, then drive the domains
        m.d.comb += [ClockSignal("sync").eq(sync_clk), ClockSignal("link").eq(link_clk)]
        if self.pll is None:
            clk_in = platform.request(clk_name, dir="i").i
            m.d.comb += [sync_clk.eq(clk_in), link_clk.eq(clk_in), locked.eq(1)]
        else:
            self.family.instantiate_pll(m, platform, self.pll, sync_clk=sync_clk,
                                        link_clk=link_clk, locked=locked)
        if self.pll is not None:
            platform.add_clock_constraint(sync_clk, self.actual_hz)
            platform.add_clock_constraint(link_clk, self.link_hz)
        # the accelerator's reset: synchronized in a domain of its own on the same clock, then
        # onto a global network where the family has one for it
        m.domains.sync_reset = ClockDomain("sync_reset", local=True)
        m.d.comb += ClockSignal("sync_reset").eq(sync_clk)
        m.submodules.reset_sync = ResetSynchronizer(~locked, domain="sync_reset")
        m.d.comb += ResetSignal("sync").eq(
            self.family.global_buffer(m, ResetSignal("sync_reset"), "sync_reset"))
        m.submodules.reset_link = ResetSynchronizer(~locked, domain="link")
        return m
