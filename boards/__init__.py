"""The board table: our board name -> amaranth-boards platform, FPGA family, clock target,
resources and programmer. Everything board-specific is looked up here; everything
family-specific (resource models, synthesis and place and route, PLLs, default gateware
styles, report parsing, flashing) is the family object's: ``boards/families/<family>.py``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, fields, replace

from core.errors import InputError

from .families import ECP5, FAMILIES, GOWIN, ICE40, XC7, Family, family_of_platform

__all__ = ["Board", "BOARDS", "DEVICES", "get_board", "board_names", "board_from_platform",
           "flash_boards"]


@dataclass(frozen=True)
class Board:
    name: str
    platform: str          # "module:Class" of the amaranth-boards platform
    family: Family         # ICE40 | ECP5 | XC7 | GOWIN (boards.families): how the board is built
    device: str
    clock_mhz: float       # the clock the accelerator is built for
    luts: int              # LUT4 (iCE40, ECP5, Gowin) or LUT6 (7-series)
    ffs: int
    dsps: int              # SB_MAC16 / MULT18X18D / DSP48E1 / Gowin MULT18X18
    bram_bits: int
    spram_bits: int
    programmer: str        # openFPGALoader arguments
    description: str
    # where ``--boot-from-flash`` keeps the weights in the board's SPI flash: past the largest
    # (uncompressed) bitstream of the device, on a 64 KiB erase-block boundary; None: the
    # board's flash is not wired for it (its family's ``connect_flash`` does the pins)
    flash_offset: int | None = None

    @property
    def flow(self) -> str:
        """What builds the bitstream: "nextpnr-ice40", "nextpnr-ecp5", "xilinx" (Vivado /
        openXC7)."""
        return self.family.flow

    def as_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["family"] = self.family.name
        return out

    def platform_class(self):
        """The amaranth-boards platform class."""
        return _load_platform(self.platform)

    def create_platform(self):
        """An instance of the platform, in the flavour the family's flow reads."""
        return self.family.create_platform(self.platform_class())

    @property
    def osc_hz(self) -> float:
        """The frequency of the platform's default clock (the board oscillator)."""
        platform = self.platform_class()()
        return platform.default_clk_frequency


BOARDS = {b.name: b for b in [
    Board("icebreaker", "amaranth_boards.icebreaker:ICEBreakerPlatform", ICE40, "iCE40UP5K",
          48.0, luts=5280, ffs=5280, dsps=8, bram_bits=30 * 4096,
          spram_bits=4 * 262144, programmer="-b ice40_generic",
          description="1BitSquared iCEBreaker (Lattice iCE40UP5K)",
          flash_offset=0x100000),          # bitstream 104 kB; a 16 MiB W25Q128 flash
    Board("ulx3s_12f", "amaranth_boards.ulx3s:ULX3S_12F_Platform", ECP5, "LFE5U-12F",
          100.0, luts=12288, ffs=12288, dsps=28, bram_bits=32 * 18432,
          spram_bits=0, programmer="-b ulx3s", description="Radiona ULX3S, ECP5-12F",
          flash_offset=0x100000),            # bitstream < 600 kB
    Board("ulx3s_25f", "amaranth_boards.ulx3s:ULX3S_25F_Platform", ECP5, "LFE5U-25F",
          100.0, luts=24288, ffs=24288, dsps=28, bram_bits=56 * 18432,
          spram_bits=0, programmer="-b ulx3s", description="Radiona ULX3S, ECP5-25F",
          flash_offset=0x100000),            # bitstream < 600 kB
    Board("ulx3s_45f", "amaranth_boards.ulx3s:ULX3S_45F_Platform", ECP5, "LFE5U-45F",
          100.0, luts=43848, ffs=43848, dsps=72, bram_bits=108 * 18432,
          spram_bits=0, programmer="-b ulx3s", description="Radiona ULX3S, ECP5-45F",
          flash_offset=0x200000),            # bitstream < 1.2 MB
    Board("ulx3s_85f", "amaranth_boards.ulx3s:ULX3S_85F_Platform", ECP5, "LFE5U-85F",
          100.0, luts=83640, ffs=83640, dsps=156, bram_bits=208 * 18432,
          spram_bits=0, programmer="-b ulx3s", description="Radiona ULX3S, ECP5-85F",
          flash_offset=0x300000),            # bitstream < 2.3 MB; flash 4-16 MiB
    Board("arty_a7_35", "amaranth_boards.arty_a7:ArtyA7_35Platform", XC7, "XC7A35T",
          100.0, luts=20800, ffs=41600, dsps=90, bram_bits=50 * 36864,
          spram_bits=0, programmer="-b arty_a7_35t",
          description="Digilent Arty A7-35T (Xilinx Artix-7 XC7A35T)"),
    Board("arty_a7_100", "amaranth_boards.arty_a7:ArtyA7_100Platform", XC7, "XC7A100T",
          100.0, luts=63400, ffs=126800, dsps=240, bram_bits=135 * 36864,
          spram_bits=0, programmer="-b arty_a7_100t",
          description="Digilent Arty A7-100T (Xilinx Artix-7 XC7A100T)"),
    # Gowin: LUT4, DFF, 18 kbit BSRAM, 18 x 18 multipliers per the GW1N / GW2A datasheets
    Board("tang_nano_9k", "amaranth_boards.tang_nano_9k:TangNano9kPlatform", GOWIN,
          "GW1NR-9C", 81.0, luts=8640, ffs=6480, dsps=20, bram_bits=26 * 18432,
          spram_bits=0, programmer="-b tangnano9k",
          description="Sipeed Tang Nano 9K (Gowin GW1NR-LV9)"),
    Board("tang_primer_20k", "amaranth_boards.tang_primer_20k:TangPrimer20kDockPlatform",
          GOWIN, "GW2A-18C", 108.0, luts=20736, ffs=15552, dsps=48, bram_bits=46 * 18432,
          spram_bits=0, programmer="-b tangprimer20k",
          description="Sipeed Tang Primer 20K on its Dock (Gowin GW2A-LV18)"),
]}

_ALIASES = {"ulx3s": "ulx3s_85f", "arty_a7": "arty_a7_35"}


#: Resources of the devices that amaranth-boards platforms use, for ``--platform``:
#: (luts, ffs, dsps, bram_bits, spram_bits). LUT4 on Lattice and Gowin, LUT6 on 7-series.
DEVICES = {
    "iCE40UP5K": (5280, 5280, 8, 30 * 4096, 4 * 262144),
    "iCE40UP3K": (2800, 2800, 4, 20 * 4096, 0),
    "iCE40HX8K": (7680, 7680, 0, 32 * 4096, 0),
    "iCE40HX4K": (3520, 3520, 0, 20 * 4096, 0),
    "iCE40HX1K": (1280, 1280, 0, 16 * 4096, 0),
    "iCE40LP8K": (7680, 7680, 0, 32 * 4096, 0),
    "iCE40LP1K": (1280, 1280, 0, 16 * 4096, 0),
    "LFE5U-12F": (12288, 12288, 28, 32 * 18432, 0),
    "LFE5U-25F": (24288, 24288, 28, 56 * 18432, 0),
    "LFE5U-45F": (43848, 43848, 72, 108 * 18432, 0),
    "LFE5U-85F": (83640, 83640, 156, 208 * 18432, 0),
    "LFE5UM-25F": (24288, 24288, 28, 56 * 18432, 0),
    "LFE5UM-45F": (43848, 43848, 72, 108 * 18432, 0),
    "LFE5UM-85F": (83640, 83640, 156, 208 * 18432, 0),
    "LFE5UM5G-25F": (24288, 24288, 28, 56 * 18432, 0),
    "LFE5UM5G-45F": (43848, 43848, 72, 108 * 18432, 0),
    "LFE5UM5G-85F": (83640, 83640, 156, 208 * 18432, 0),
    "xc7a35t": (20800, 41600, 90, 50 * 36864, 0),
    "xc7a50t": (32600, 65200, 120, 75 * 36864, 0),
    "xc7a100t": (63400, 126800, 240, 135 * 36864, 0),
    "xc7a200t": (134600, 269200, 740, 365 * 36864, 0),
    "GW1NR-9": (8640, 6480, 20, 26 * 18432, 0),
    "GW1N-9": (8640, 6480, 20, 26 * 18432, 0),
    "GW1N-4": (4608, 3456, 16, 10 * 18432, 0),
    "GW1NR-4": (4608, 3456, 16, 10 * 18432, 0),
    "GW2A-18": (20736, 15552, 48, 46 * 18432, 0),
    "GW2AR-18": (20736, 15552, 48, 46 * 18432, 0),
}

def _load_platform(spec: str):
    module_name, _, class_name = spec.partition(":")
    if not module_name or not class_name:
        raise InputError(f"--platform wants module:Class (e.g. "
                         f"amaranth_boards.icebreaker:ICEBreakerPlatform), not {spec!r}")
    try:
        module = importlib.import_module(module_name)
        cls = getattr(module, class_name)
    except (ImportError, AttributeError) as e:
        raise InputError(f"cannot load platform {spec!r}: {e}; name an amaranth-boards "
                         f"platform such as amaranth_boards.ulx3s:ULX3S_85F_Platform") from None
    return cls


def board_from_platform(spec: str) -> Board:
    """A :class:`Board` for any Amaranth platform class ``module:Class``."""
    cls = _load_platform(spec)
    for known in BOARDS.values():
        if known.platform == spec:
            return known
    if not isinstance(cls, type):
        raise InputError(f"--platform {spec!r} names a {type(cls).__name__}, not a platform "
                         f"class; name an amaranth-boards platform such as "
                         f"amaranth_boards.ulx3s:ULX3S_85F_Platform")
    family = family_of_platform(cls)
    if family is None:
        *others, last = [f.title for f in FAMILIES.values()]
        raise InputError(f"{spec}: only {', '.join(others)} and {last} platforms are "
                         f"supported")
    # Gowin platforms name their chip ``family`` ("GW1NR-9C") and their ``part``
    device = str(getattr(cls, "device", None) or getattr(cls, "family", ""))
    key = next((d for d in DEVICES if device.lower().startswith(d.lower())), None)
    if key is None:
        raise InputError(f"{spec}: device {device} is not in the resource table; known devices: "
                         f"{', '.join(DEVICES)}")
    luts, ffs, dsps, bram, spram = DEVICES[key]
    return Board(spec, spec, family, device, family.default_clock_mhz, luts=luts,
                 ffs=ffs, dsps=dsps, bram_bits=bram, spram_bits=spram, programmer="",
                 description=f"{cls.__name__} ({device})")


def with_clock(board: Board, clock_mhz: float) -> Board:
    """``board`` with another clock target."""
    return replace(board, clock_mhz=float(clock_mhz))


def flash_boards() -> list[str]:
    """Boards that can boot their weights from flash (``build --boot-from-flash``)."""
    return sorted(name for name, board in BOARDS.items() if board.flash_offset is not None)


def board_names() -> list[str]:
    return sorted([*BOARDS, *_ALIASES])


def get_board(name: str) -> Board:
    """The board called ``name`` (aliases: ``ulx3s`` = ``ulx3s_85f``, ``arty_a7`` =
    ``arty_a7_35``), or the platform ``module:Class``."""
    if ":" in name:
        return board_from_platform(name)
    key = _ALIASES.get(name, name)
    if key not in BOARDS:
        raise InputError(f"unknown board {name!r}; known boards: {', '.join(board_names())} "
                         f"(or --platform module:Class for another amaranth-boards platform)")
    return BOARDS[key]
