"""Lattice ECP5 (the ULX3S boards): how a board of this family is built."""

from __future__ import annotations

from dataclasses import dataclass

from hw.options import HardwareOptions

from .base import NextpnrFamily, request_flash

__all__ = ["ECP5", "ECP5PLL", "ecp5_pll"]


@dataclass(frozen=True)
class ECP5PLL:
    clki_div: int
    clkfb_div: int
    clkop_div: int
    clkop_cphase: int
    f_in_mhz: float
    f_out_mhz: float


def ecp5_pll(f_in_mhz: float, f_out_mhz: float) -> ECP5PLL:
    """``EHXPLLL`` dividers for the output closest to ``f_out_mhz`` (VCO nearest 600 MHz on a
    tie, as ``ecppll`` (Project Trellis) chooses)."""
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


class ECP5Family(NextpnrFamily):
    name = "ecp5"
    title = "ECP5"
    flow = "nextpnr-ecp5"
    nextpnr = "nextpnr-ecp5"
    default_clock_mhz = 100.0
    flow_tools = ("yosys", "nextpnr-ecp5", "ecppack")
    bitstream_suffix = ".bit"
    resource_names = {
        "TRELLIS_COMB": "LUT4", "TRELLIS_FF": "flip-flops",
        "TRELLIS_RAMW": "LUT RAM write ports", "DP16KD": "block RAM (18 kbit DP16KD)",
        "MULT18X18D": "DSP (MULT18X18D)", "EHXPLLL": "PLL", "TRELLIS_IO": "I/O",
        "DCCA": "clock buffers"}

    # DP16KD, true dual port
    bram_configs = ((36, 512), (18, 1024), (9, 2048), (4, 4096), (2, 8192), (1, 16384))
    bram_block_bits = 18432
    bram_dual_port = True
    bram_unit = "18 kbit DP16KD"
    small_bits = 1024
    lutram_depth = 64
    lutram_bits_per_lut = 16      # DPR16X4: 16 x 4 in two slices' LUTs
    dsp_tile = (18, 18, 1)        # MULT18X18D; Yosys gives even a one-bit remainder a MULT18
    logic_model = {"pe_lut": (250, 2.0, 1.0, 1.2, 0.1), "pe_ff": (250, 0.0, 0.0, 0.0, 0.3),
                   "reducer_lut": (300, 1.0, 3.0, 12.0), "reducer_ff": (150, 1.0, 8.0, 0.0),
                   "fixed_lut": 1800, "fixed_ff": 1200}
    #: placed ULX3S builds of the digits MLP in the default style, seed 1 (docs/benchmarks.md,
    #: section 4: P = 1 short pipeline, P >= 8 deep; router2 at P = 32)
    fmax_points = {1: 104.98, 8: 126.01, 16: 102.97, 32: 80.26}
    #: placed / estimated over five ULX3S builds (digits P = 8, 16, 32; LeNet-300-100 P = 64 with
    #: LUT-RAM and with block-RAM accumulators): LUTs 1.47 / 1.87 / 1.70 / 1.58 / 1.47,
    #: flip-flops 1.24 / 1.36 / 1.37 / 1.11 / 1.30 (docs/benchmarks.md, section 4)
    placed_factors = (1.60, 1.25)
    usable_luts = 0.95

    def claims(self, platform_cls) -> bool:
        from amaranth.vendor import LatticeECP5Platform
        return issubclass(platform_cls, LatticeECP5Platform)

    #: the deep pipeline from this many PEs up (docs/benchmarks.md, section 0: it meets the
    #: clock at P = 8 and 16 where the short one does not, and misses it at P = 1)
    deep_from_pes = 8

    def default_options(self, program) -> HardwareOptions:
        """The base's styles (block RAM, LUT-RAM accumulators), with the deep pipeline from
        :attr:`deep_from_pes` PEs up."""
        return HardwareOptions(pipeline="deep" if program.pes >= self.deep_from_pes
                               else "short")

    #: nextpnr's router2 from this many PEs up: router1 did not converge at P = 32 or 64
    #: (hundreds of thousands of overused wires after 40 minutes), router2 routed P = 32
    router2_from_pes = 32

    def nextpnr_options(self, program) -> str:
        return "--router router2" if program.pes >= self.router2_from_pes else ""

    def pll(self, f_in_mhz: float, f_out_mhz: float) -> ECP5PLL:
        return ecp5_pll(f_in_mhz, f_out_mhz)

    def connect_flash(self, m, platform, pins) -> None:
        """The flash's clock is the dedicated MCLK pin, reached after configuration only
        through the ``USRMCLK`` primitive (amaranth-boards' ``spi_flash`` has no ``clk``);
        ``wp`` and ``hold`` held inactive."""
        from amaranth.hdl import Instance

        flash = request_flash(platform, "spi_flash", self.title)
        m.submodules.usrmclk = Instance("USRMCLK", i_USRMCLKI=pins.sck, i_USRMCLKTS=0)
        m.d.comb += [flash.cs.o.eq(pins.cs), flash.copi.o.eq(pins.copi),
                     pins.cipo.eq(flash.cipo.i)]
        for name in ("wp", "hold"):
            if hasattr(flash, name):
                m.d.comb += getattr(flash, name).o.eq(0)

    def instantiate_pll(self, m, platform, pll, *, sync_clk, link_clk, locked) -> None:
        """``EHXPLLL`` from the oscillator pin; the link runs on the oscillator."""
        from amaranth.hdl import Instance, Signal

        clk_in = platform.request(platform.default_clk, dir="i").i
        p = pll
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

    def map_multiplier(self, mul):
        """A ``MULT18X18D`` with its input registers (A and B) and its output register on,
        which hold the multiplier's operand and product registers inside the DSP tile: the
        fabric copies were placed beside the logic, and the hops to and from the DSP rows set
        the P = 32 clock. None (fabric registers, Yosys's mapping) when an operand does not fit
        one tile: signed up to 18 bits, unsigned up to 17."""
        from amaranth.hdl import ClockSignal, Instance, Module, Signal, signed

        def fits(shape):
            return shape.width <= (18 if shape.signed else 17)

        if not (fits(mul.a_shape) and fits(mul.b_shape)):
            return None
        m = Module()
        a, b, p = Signal(signed(18)), Signal(signed(18)), Signal(signed(36))
        # sign- or zero-extended by the operand's own shape; the tile multiplies signed
        m.d.comb += [a.eq(mul.a), b.eq(mul.b), mul.p.eq(p[:len(mul.p)])]
        ports = {f"i_A{i}": a[i] for i in range(18)}
        ports.update({f"i_B{i}": b[i] for i in range(18)})
        ports.update({f"i_C{i}": 0 for i in range(18)})
        ports.update({f"o_P{i}": p[i] for i in range(36)})
        m.submodules.dsp = Instance(
            "MULT18X18D",
            p_REG_INPUTA_CLK="CLK0", p_REG_INPUTA_CE="CE0", p_REG_INPUTA_RST="RST0",
            p_REG_INPUTB_CLK="CLK0", p_REG_INPUTB_CE="CE0", p_REG_INPUTB_RST="RST0",
            p_REG_OUTPUT_CLK="CLK0", p_REG_OUTPUT_CE="CE0", p_REG_OUTPUT_RST="RST0",
            p_GSR="DISABLED", p_RESETMODE="SYNC",
            i_SIGNEDA=1, i_SIGNEDB=1, i_SOURCEA=0, i_SOURCEB=0,
            i_CLK0=ClockSignal("sync"), i_CE0=1, i_RST0=0,
            **ports)
        return m

    def global_buffer(self, m, signal, name: str):
        """A ``DCCA`` onto one of the primary clock networks, which reach every slice's LSR
        mux too: nextpnr promotes only clocks by itself, and the reset, routed through the
        general fabric to twenty thousand flip-flops at P = 32, was the critical path."""
        from amaranth.hdl import Instance, Signal

        out = Signal(name=f"{name}_global")
        m.submodules[f"{name}_dcca"] = Instance("DCCA", i_CLKI=signal, i_CE=1, o_CLKO=out)
        return out


ECP5 = ECP5Family()
