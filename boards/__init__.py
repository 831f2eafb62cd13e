"""The board table: our board name -> amaranth-boards platform, toolchain, clock target,
resources and programmer. Everything board-specific is looked up here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from compiler.errors import InputError

__all__ = ["Board", "BOARDS", "get_board", "board_names"]


@dataclass(frozen=True)
class Board:
    name: str
    platform: str          # "module:Class" of the amaranth-boards platform
    family: str            # "ice40" | "ecp5" | "xc7"
    device: str
    flow: str              # "nextpnr-ice40" | "nextpnr-ecp5" | "xilinx" (Vivado / openXC7)
    clock_mhz: float       # the clock the accelerator is built for
    luts: int              # LUT4 (iCE40, ECP5) or LUT6 (7-series)
    ffs: int
    dsps: int              # SB_MAC16 / MULT18X18D / DSP48E1
    bram_bits: int
    spram_bits: int
    programmer: str        # openFPGALoader arguments
    description: str

    def as_dict(self) -> dict:
        return asdict(self)


BOARDS = {b.name: b for b in [
    Board("icebreaker", "amaranth_boards.icebreaker:ICEBreakerPlatform", "ice40", "iCE40UP5K",
          "nextpnr-ice40", 60.0, luts=5280, ffs=5280, dsps=8, bram_bits=30 * 4096,
          spram_bits=4 * 262144, programmer="-b ice40_generic",
          description="1BitSquared iCEBreaker (Lattice iCE40UP5K)"),
    Board("ulx3s_12f", "amaranth_boards.ulx3s:ULX3S_12F_Platform", "ecp5", "LFE5U-12F",
          "nextpnr-ecp5", 100.0, luts=12288, ffs=12288, dsps=28, bram_bits=32 * 18432,
          spram_bits=0, programmer="-b ulx3s", description="Radiona ULX3S, ECP5-12F"),
    Board("ulx3s_25f", "amaranth_boards.ulx3s:ULX3S_25F_Platform", "ecp5", "LFE5U-25F",
          "nextpnr-ecp5", 100.0, luts=24288, ffs=24288, dsps=28, bram_bits=56 * 18432,
          spram_bits=0, programmer="-b ulx3s", description="Radiona ULX3S, ECP5-25F"),
    Board("ulx3s_45f", "amaranth_boards.ulx3s:ULX3S_45F_Platform", "ecp5", "LFE5U-45F",
          "nextpnr-ecp5", 100.0, luts=43848, ffs=43848, dsps=72, bram_bits=108 * 18432,
          spram_bits=0, programmer="-b ulx3s", description="Radiona ULX3S, ECP5-45F"),
    Board("ulx3s_85f", "amaranth_boards.ulx3s:ULX3S_85F_Platform", "ecp5", "LFE5U-85F",
          "nextpnr-ecp5", 100.0, luts=83640, ffs=83640, dsps=156, bram_bits=208 * 18432,
          spram_bits=0, programmer="-b ulx3s", description="Radiona ULX3S, ECP5-85F"),
    Board("arty_a7_35", "amaranth_boards.arty_a7:ArtyA7_35Platform", "xc7", "XC7A35T",
          "xilinx", 100.0, luts=20800, ffs=41600, dsps=90, bram_bits=50 * 36864,
          spram_bits=0, programmer="-b arty_a7_35t",
          description="Digilent Arty A7-35T (Xilinx Artix-7 XC7A35T)"),
    Board("arty_a7_100", "amaranth_boards.arty_a7:ArtyA7_100Platform", "xc7", "XC7A100T",
          "xilinx", 100.0, luts=63400, ffs=126800, dsps=240, bram_bits=135 * 36864,
          spram_bits=0, programmer="-b arty_a7_100t",
          description="Digilent Arty A7-100T (Xilinx Artix-7 XC7A100T)"),
]}

_ALIASES = {"ulx3s": "ulx3s_85f", "arty_a7": "arty_a7_35"}


def board_names() -> list[str]:
    return sorted([*BOARDS, *_ALIASES])


def get_board(name: str) -> Board:
    """The board called ``name`` (aliases: ``ulx3s`` = ``ulx3s_85f``, ``arty_a7`` =
    ``arty_a7_35``)."""
    key = _ALIASES.get(name, name)
    if key not in BOARDS:
        raise InputError(f"unknown board {name!r}; known boards: {', '.join(board_names())}")
    return BOARDS[key]
