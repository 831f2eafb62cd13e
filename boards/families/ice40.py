"""Lattice iCE40 (the iCEBreaker's UP5K; HX/LP parts through ``--platform``): how a board of
this family is built."""

from __future__ import annotations

import math
from dataclasses import dataclass

from hw.images import SPRAM_DEPTH
from hw.options import HardwareOptions
from hw.weights import UploadedWeightMemory

from .base import MemoryWithAttrs, NextpnrFamily, request_flash

__all__ = ["ICE40", "ICE40PLL", "ice40_pll"]

#: one iCE40 UltraPlus SPRAM: 16384 words (the depth hw/walker.py chunks weights to) of 16 bits
SPRAM_WIDTH = 16
SPRAM_BITS = SPRAM_DEPTH * SPRAM_WIDTH

# iCE40 logic cells pair a LUT with a flip-flop: cells ~ LUTs + 0.9 x FFs
_FF_PAIRING = 0.9


@dataclass(frozen=True)
class ICE40PLL:
    divr: int
    divf: int
    divq: int
    filter_range: int
    f_in_mhz: float
    f_out_mhz: float


def ice40_pll(f_in_mhz: float, f_out_mhz: float) -> ICE40PLL:
    """``SB_PLL40`` dividers (SIMPLE feedback) for the output closest to ``f_out_mhz``; the
    search reproduces ``icepll`` (Project IceStorm)."""
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


class ICE40Family(NextpnrFamily):
    name = "ice40"
    title = "iCE40"
    flow = "nextpnr-ice40"
    nextpnr = "nextpnr-ice40"
    # (the v2 array's block-RAM accumulate loop - a multiplexer, the 22-bit carry chain and
    # back - makes 52-54 MHz on the UP5K; v1 met 60; see docs/benchmarks.md section 0)
    default_clock_mhz = 48.0
    flow_tools = ("yosys", "nextpnr-ice40", "icepack")
    bitstream_suffix = ".bin"
    # iCE40 boards are programmed through their flash: always persistent
    flash_persist_args = ()
    resource_names = {
        "ICESTORM_LC": "logic cells (LUT4+FF)", "ICESTORM_RAM": "block RAM (4 kbit EBR)",
        "ICESTORM_DSP": "DSP (SB_MAC16)", "ICESTORM_SPRAM": "SPRAM (256 kbit)",
        "ICESTORM_PLL": "PLL", "SB_IO": "I/O", "SB_GB": "global buffers"}

    # 4 kbit EBR, one read port
    bram_configs = ((16, 256), (8, 512), (4, 1024), (2, 2048))
    bram_block_bits = 4096
    bram_dual_port = False
    bram_unit = "4 kbit EBR"
    # a 15 x 17 = 255-bit FIFO goes to an EBR, a 64 x 2 = 128-bit ROM to flip-flops
    small_bits = 128
    lutram_depth = 0              # no LUT RAM: its "LUT RAM" is flip-flops
    lutram_bits_per_lut = None
    dsp_tile = (16, 16, 2)        # SB_MAC16
    logic_model = {"pe_lut": (300, 0.0, 1.0, 0.0, 0.5), "pe_ff": (300, 0.0, 0.0, 0.0, 1.0),
                   "reducer_lut": (200, 1.0, 2.0, 10.0), "reducer_ff": (200, 1.0, 8.0, 0.0),
                   "fixed_lut": 900, "fixed_ff": 900}
    fmax_model = (53.0, 1.5)
    usable_luts = 0.92

    def claims(self, platform_cls) -> bool:
        from amaranth.vendor import LatticeICE40Platform
        return issubclass(platform_cls, LatticeICE40Platform)

    def default_options(self, program) -> HardwareOptions:
        """No LUT RAM and one read port an EBR: block-RAM accumulators, counted pointers, and
        the deep pipeline for the slow fabric."""
        return HardwareOptions(memory="block", pipeline="deep", accumulators="block",
                               pointers="counted")

    def map_memory(self, mem):
        """Uploaded weights into SPRAM: Yosys's ``ram_style`` "huge" (``synth_ice40 -spram``),
        under the name whose initial image the flow deletes (``boards.flow.DROP_UPLOADED_INIT``:
        SPRAM has none)."""
        if isinstance(mem, UploadedWeightMemory):
            return MemoryWithAttrs(mem, {"ram_style": "huge"}, name="uploaded_entries")
        return None

    def weights_in_spram(self, board, options) -> bool:
        """UltraPlus parts hold uploaded weights in SPRAM."""
        return options.weights == "uploaded" and board.spram_bits > 0

    def spram_blocks(self, spec) -> int:
        return (math.ceil(spec.width / SPRAM_WIDTH) * math.ceil(spec.depth / SPRAM_DEPTH)
                * spec.count)

    def spram_blocks_available(self, board) -> int:
        return board.spram_bits // SPRAM_BITS

    def logic_check(self, luts: int, ffs: int, board) -> tuple[int, str | None]:
        """Logic cells, what nextpnr reports as ICESTORM_LC: a LUT4 and a flip-flop each."""
        usable = int(board.luts * self.usable_luts)
        cells = round(luts + _FF_PAIRING * ffs)
        if cells > usable:
            return cells, (f"logic: about {cells} logic cells estimated ({luts} LUT4 + "
                           f"{ffs} flip-flops), {board.luts} available ({usable} usable)")
        return cells, None

    def pll(self, f_in_mhz: float, f_out_mhz: float) -> ICE40PLL:
        return ice40_pll(f_in_mhz, f_out_mhz)

    def connect_flash(self, m, platform, pins) -> None:
        """The flash's pins are ordinary I/O once the iCE40 is configured (amaranth-boards:
        ``spi_flash_1x``); ``wp`` and ``hold`` held inactive."""
        flash = request_flash(platform, "spi_flash_1x", self.title)
        m.d.comb += [flash.cs.o.eq(pins.cs), flash.clk.o.eq(pins.sck),
                     flash.copi.o.eq(pins.copi), pins.cipo.eq(flash.cipo.i)]
        for name in ("wp", "hold"):
            if hasattr(flash, name):
                m.d.comb += getattr(flash, name).o.eq(0)

    def instantiate_pll(self, m, platform, pll, *, sync_clk, link_clk, locked) -> None:
        """``SB_PLL40_2_PAD``: port A passes the oscillator through (the link), port B is the
        PLL's output."""
        from amaranth.hdl import Const, Instance

        pin = platform.request(platform.default_clk, dir="-")
        p = pll
        m.submodules.pll = Instance(
            "SB_PLL40_2_PAD",
            p_FEEDBACK_PATH="SIMPLE", p_PLLOUT_SELECT_PORTB="GENCLK",
            p_DIVR=p.divr, p_DIVF=p.divf, p_DIVQ=p.divq, p_FILTER_RANGE=p.filter_range,
            io_PACKAGEPIN=pin.io,
            i_RESETB=Const(1), i_BYPASS=Const(0),
            o_PLLOUTGLOBALA=link_clk, o_PLLOUTGLOBALB=sync_clk, o_LOCK=locked)

    def synth_options(self, board, options=None) -> str:
        """SB_MAC16 multipliers (about 2x the Fmax of LUTs); ABC's delay model of the actual
        device family (Yosys assumes HX; the UltraPlus is slower, and LUT mapping trades
        differently); and flip-flops passed through ABC (``-dff``), which maps across them.
        On the iCEBreaker's example build the last two took Fmax from 49-55 to 55-59 MHz over
        nextpnr seeds 1-3 (docs/benchmarks.md). Uploaded weights: SPRAM (``-spram``)."""
        device = board.device.upper()
        speed = ("u" if device.startswith("ICE40UP") else "lp" if device.startswith("ICE40LP")
                 else "hx")
        spram = " -spram" if options is not None and options.weights == "uploaded" else ""
        return f"-dsp -device {speed} -dff{spram}"


ICE40 = ICE40Family()

