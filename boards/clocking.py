"""Clock and reset for a board top: a PLL from the board oscillator to the target clock where
the oscillator is slower (iCE40 ``SB_PLL40_PAD``, ECP5 ``EHXPLLL``), and a reset synchronizer
that holds the design in reset until the PLL has locked.

The divider searches reproduce ``icepll`` and ``ecppll`` (Project IceStorm / Trellis), whose
answers the tests compare against.
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth.hdl import ClockSignal, Const, Elaboratable, Instance, Module, Signal
from amaranth.lib.cdc import ResetSynchronizer

__all__ = ["ICE40PLL", "ECP5PLL", "ice40_pll", "ecp5_pll", "ClockReset"]


@dataclass(frozen=True)
class ICE40PLL:
    divr: int
    divf: int
    divq: int
    filter_range: int
    f_in_mhz: float
    f_out_mhz: float


@dataclass(frozen=True)
class ECP5PLL:
    clki_div: int
    clkfb_div: int
    clkop_div: int
    clkop_cphase: int
    f_in_mhz: float
    f_out_mhz: float


def ice40_pll(f_in_mhz: float, f_out_mhz: float) -> ICE40PLL:
    """``SB_PLL40`` dividers (SIMPLE feedback) for the output closest to ``f_out_mhz``."""
    if not 16 <= f_out_mhz <= 275:
        raise ValueError(f"an iCE40 PLL makes 16..275 MHz, not {f_out_mhz} MHz")
    best = None
    for divr in range(16):
        f_pfd = f_in_mhz / (divr + 1)
        if not 10 <= f_pfd <= 133:
            continue
        for divf in range(128):
            f_vco = f_pfd * (divf + 1)
            if not 533 <= f_vco <= 1066:
                continue
            for divq in range(1, 7):
                f_out = f_vco / 2 ** divq
                error = abs(f_out - f_out_mhz)
                if best is None or error < best[0]:
                    best = (error, divr, divf, divq, f_pfd, f_out)
    if best is None:
        raise ValueError(f"no iCE40 PLL setting turns {f_in_mhz} MHz into {f_out_mhz} MHz")
    _, divr, divf, divq, f_pfd, f_out = best
    filter_range = next(i + 1 for i, limit in enumerate((17, 26, 44, 66, 101, 1e9))
                        if f_pfd < limit)
    return ICE40PLL(divr, divf, divq, filter_range, f_in_mhz, f_out)


def ecp5_pll(f_in_mhz: float, f_out_mhz: float) -> ECP5PLL:
    """``EHXPLLL`` dividers for the output closest to ``f_out_mhz`` (VCO nearest 600 MHz on a
    tie, as ``ecppll`` chooses)."""
    best = None
    for clki_div in range(1, 129):
        f_pfd = f_in_mhz / clki_div
        if not 3.125 <= f_pfd <= 400:
            continue
        for clkfb_div in range(1, 81):
            for clkop_div in range(1, 129):
                f_vco = f_pfd * clkfb_div * clkop_div
                if not 400 <= f_vco <= 800:
                    continue
                f_out = f_vco / clkop_div
                key = (abs(f_out - f_out_mhz), abs(f_vco - 600))
                if best is None or key < best[0]:
                    best = (key, clki_div, clkfb_div, clkop_div, f_out)
    if best is None:
        raise ValueError(f"no ECP5 PLL setting turns {f_in_mhz} MHz into {f_out_mhz} MHz")
    _, clki_div, clkfb_div, clkop_div, f_out = best
    return ECP5PLL(clki_div, clkfb_div, clkop_div, max(0, clkop_div // 2 - 1), f_in_mhz,
                   f_out)


class ClockReset(Elaboratable):
    """Drives the ``sync`` domain (the accelerator) at ``target_hz`` and the ``link`` domain
    (the UART link) at the oscillator's frequency, and holds both in reset until the clock is
    stable. The domains themselves are defined by the board top.

    ``actual_hz`` is the accelerator's clock achieved, ``link_hz`` the link's.
    """

    def __init__(self, *, family: str, osc_hz: float, target_hz: float):
        self.family = family
        self.osc_hz = float(osc_hz)
        self.target_hz = float(target_hz)
        self.pll = None
        if family == "ice40" and abs(self.osc_hz - self.target_hz) > 1e3:
            self.pll = ice40_pll(self.osc_hz / 1e6, self.target_hz / 1e6)
        elif family == "ecp5" and abs(self.osc_hz - self.target_hz) > 1e3:
            self.pll = ecp5_pll(self.osc_hz / 1e6, self.target_hz / 1e6)
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
        elif isinstance(self.pll, ICE40PLL):
            # port A passes the oscillator through (the link), port B is the PLL's output
            pin = platform.request(clk_name, dir="-")
            p = self.pll
            m.submodules.pll = Instance(
                "SB_PLL40_2_PAD",
                p_FEEDBACK_PATH="SIMPLE", p_PLLOUT_SELECT_PORTB="GENCLK",
                p_DIVR=p.divr, p_DIVF=p.divf, p_DIVQ=p.divq, p_FILTER_RANGE=p.filter_range,
                io_PACKAGEPIN=pin.io,
                i_RESETB=Const(1), i_BYPASS=Const(0),
                o_PLLOUTGLOBALA=link_clk, o_PLLOUTGLOBALB=sync_clk, o_LOCK=locked)
        else:
            clk_in = platform.request(clk_name, dir="i").i
            p = self.pll
            clkop = Signal()
            m.submodules.pll = Instance(
                "EHXPLLL",
                a_FREQUENCY_PIN_CLKI=f"{p.f_in_mhz:g}", a_FREQUENCY_PIN_CLKOP=f"{p.f_out_mhz:g}",
                a_ICP_CURRENT="12", a_LPF_RESISTOR="8", a_MFG_ENABLE_FILTEROPAMP="1",
                a_MFG_GMCREF_SEL="2",
                p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED",
                p_DPHASE_SOURCE="DISABLED", p_OUTDIVIDER_MUXA="DIVA", p_OUTDIVIDER_MUXB="DIVB",
                p_OUTDIVIDER_MUXC="DIVC", p_OUTDIVIDER_MUXD="DIVD",
                p_CLKI_DIV=p.clki_div, p_CLKOP_ENABLE="ENABLED", p_CLKOP_DIV=p.clkop_div,
                p_CLKOP_CPHASE=p.clkop_cphase, p_CLKOP_FPHASE=0, p_FEEDBK_PATH="CLKOP",
                p_CLKFB_DIV=p.clkfb_div,
                i_RST=0, i_STDBY=0, i_CLKI=clk_in, i_CLKFB=clkop, i_PHASESEL0=0,
                i_PHASESEL1=0, i_PHASEDIR=1, i_PHASESTEP=1, i_PHASELOADREG=1,
                i_PLLWAKESYNC=0, i_ENCLKOP=0,
                o_CLKOP=clkop, o_LOCK=locked)
            m.d.comb += [sync_clk.eq(clkop), link_clk.eq(clk_in)]
        if self.pll is not None:
            platform.add_clock_constraint(sync_clk, self.actual_hz)
            platform.add_clock_constraint(link_clk, self.link_hz)
        m.submodules.reset_sync = ResetSynchronizer(~locked, domain="sync")
        m.submodules.reset_link = ResetSynchronizer(~locked, domain="link")
        return m
