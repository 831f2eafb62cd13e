"""The :class:`Family` base: what every FPGA family provides, and the parts that families
share (the block-RAM / DSP / logic arithmetic of the fit check, the nextpnr flow of
:class:`NextpnrFamily`). See the package docstring for what a new family must fill in."""

from __future__ import annotations

import math

from amaranth.hdl import Elaboratable, Module
from amaranth.lib import memory

from core.errors import InputError
from hw.options import Choices, HardwareOptions

from .. import flow

__all__ = ["Family", "NextpnrFamily"]


class Family:
    """One FPGA family: everything about a board that depends on its silicon and its tools.

    Subclasses set the class attributes below and override the methods whose base behaviour
    does not hold for them; the board table (``boards.BOARDS``) names one instance per row.
    """

    #: the family's key: ``boards.families.FAMILIES[name]``, ``synth_<name>``, report fields
    name: str = ""
    #: how messages name it ("iCE40")
    title: str = ""
    #: what builds its bitstream ("nextpnr-ice40", "xilinx"); ``Board.flow``
    flow: str = ""
    #: the clock target of a platform outside the board table (``--platform``)
    default_clock_mhz: float = 100.0
    #: the tools its open flow runs (names in ``boards.toolchain.TOOLS``)
    flow_tools: tuple = ("yosys",)
    #: the nextpnr tool of its open flow ("nextpnr-ice40"; "": none)
    nextpnr: str = ""
    #: the bitstream's file suffix (None: no open flow makes one)
    bitstream_suffix: str | None = None
    #: openFPGALoader arguments that write the configuration flash (``flash --persist``)
    flash_persist_args: tuple = ("-f",)

    # ---- the fit check's resource model (boards/fit.py) -----------------------------------
    #: (width, depth) configurations of one block RAM
    bram_configs: tuple = ()
    #: bits of one block RAM as the block-RAM arithmetic counts it
    bram_block_bits: int = 0
    #: whether a block has two read ports (true dual port)
    bram_dual_port: bool = True
    #: what a block is called in a fit problem ("18 kbit DP16KD")
    bram_unit: str = ""
    #: memories at or below this many bits go to logic (what Yosys's cost model picks)
    small_bits: int = 0
    #: ... and, on families with LUT RAM, memories no deeper than this too
    lutram_depth: int = 0
    #: bits of one LUT's worth of LUT RAM (None: no LUT RAM)
    lutram_bits_per_lut: int | None = None
    #: DSP tile: (max A width, max B width, min width that still goes to a DSP)
    dsp_tile: tuple = (18, 18, 2)
    #: coefficients of the logic model's terms (``boards.fit.logic_terms``), per component
    logic_model: dict = {}
    #: Fmax model: MHz = a - b * log2(P) for the default gateware style
    fmax_model: tuple = (100.0, 0.0)
    #: ... or, where placed builds have measured it, {P: MHz}: the model interpolates in
    #: log2(P) between them and beyond the largest P continues the last segment's fall
    fmax_points: dict = {}
    #: (LUTs, flip-flops) of a placed design over the sum of its synthesised components: what
    #: only the whole design has (route-through LUTs, LUT-RAM write ports, the buses' fan-out)
    placed_factors: tuple = (1.0, 1.0)
    #: the share of the LUTs a design may fill and still place
    usable_luts: float = 0.95

    def __repr__(self) -> str:
        return f"<family {self.name}>"

    # ---- boards ---------------------------------------------------------------------------
    def claims(self, platform_cls) -> bool:
        """Whether an Amaranth platform class is of this family (``--platform``)."""
        raise NotImplementedError

    #: keyword arguments of the platform's constructor (e.g. its toolchain)
    platform_options: dict = {}

    def create_platform(self, platform_cls):
        """An instance of the board's platform class, in the flavour our flow reads
        (:meth:`platform_flavour`, :attr:`platform_options`), with :meth:`map_memory` as its
        ``get_memory()`` hook when the family maps memories and :meth:`map_multiplier` as its
        ``get_multiplier()`` hook when it maps multipliers."""
        flavour = with_hooks(self.platform_flavour(platform_cls), self)
        return flavour(**self.platform_options)

    def platform_flavour(self, platform_cls):
        """The platform class our flow builds with: ``platform_cls`` itself, or a subclass."""
        return platform_cls

    # ---- memory mapping -------------------------------------------------------------------
    def map_memory(self, mem: memory.Memory):
        """The implementation of one of the design's memories on this family, or None for
        Amaranth's own (what the synthesiser infers). Reached through the platform's
        ``get_memory()`` hook (:meth:`create_platform`), so the design never tests the
        family."""
        return None

    def map_multiplier(self, mul):
        """The implementation of one of the design's registered multipliers
        (:class:`hw.multiply.Multiplier`) on this family, or None for fabric registers around a
        product the synthesiser maps. Reached through the platform's ``get_multiplier()`` hook,
        like :meth:`map_memory`."""
        return None

    # ---- default gateware styles ----------------------------------------------------------
    def default_options(self, program) -> HardwareOptions:
        """The gateware styles this family calls for, for ``program`` (hw.options says what
        each style is; the family says which suits its fabric)."""
        return HardwareOptions()

    def options_for(self, program, choices: Choices | None = None) -> HardwareOptions:
        """The family's options, with the user's ``choices`` in their place."""
        return (choices or Choices()).over(self.default_options(program))

    # ---- fit check ------------------------------------------------------------------------
    def bram_blocks(self, spec) -> int:
        """Whole blocks for one memory kind (``hw.images.MemorySpec``), best aspect ratio; a
        memory read twice takes two copies where a block has one read port."""
        one = min(math.ceil(spec.width / w) * math.ceil(spec.depth / d)
                  for w, d in self.bram_configs)
        copies = 1 if self.bram_dual_port or spec.ports == 1 else spec.ports
        return one * spec.count * copies

    def bram_units(self, blocks: int) -> tuple[int, int]:
        """(blocks, bits of one) as the device counts them, from :meth:`bram_blocks`' sum."""
        return blocks, self.bram_block_bits

    def in_logic(self, spec) -> bool:
        """Whether Yosys puts the memory in LUT RAM or flip-flops rather than block RAM."""
        if spec.read == "async":
            return True
        if spec.depth * spec.width <= self.small_bits:
            return True
        return spec.depth <= self.lutram_depth

    def dsp_tiles(self, a_width: int, b_width: int) -> int:
        """DSP tiles of an ``a_width`` x ``b_width`` product, split as Yosys's ``mul2dsp``
        splits it."""
        a_max, b_max, minimum = self.dsp_tile
        a, b = max(a_width, b_width), min(a_width, b_width)
        if b > b_max:
            a, b = b, a
        return len(_split(a, a_max, minimum)) * len(_split(b, b_max, minimum))

    def weights_in_spram(self, board, options) -> bool:
        """Whether the fit check puts the uploaded weight memories in SPRAM."""
        return False

    def spram_blocks(self, spec) -> int:
        raise NotImplementedError(f"{self.title} has no SPRAM")

    def spram_blocks_available(self, board) -> int:
        return 0

    def logic_check(self, luts: int, ffs: int, board) -> tuple[int, str | None]:
        """(the logic the estimate reports, the fit problem or None): leave room for
        placement (nextpnr struggles above ~90 % on small parts)."""
        usable = int(board.luts * self.usable_luts)
        if luts > usable:
            return luts, (f"logic: about {luts} LUTs estimated, {board.luts} available "
                          f"({usable} usable)")
        return luts, None

    def lutram_check(self, logic_bits: int, board) -> str | None:
        """The fit problem of ``logic_bits`` of memories in LUT RAM / flip-flops, or None
        (where LUT RAM is a resource of its own, as Gowin's SSRAM is)."""
        return None

    def predicted_fmax(self, pes: int, board=None) -> float:
        """:attr:`fmax_points` (or :attr:`fmax_model`) at ``pes`` PEs (``board``: for
        families whose parts differ)."""
        if self.fmax_points:
            return interpolate_fmax(self.fmax_points, pes)
        return linear_fmax(self.fmax_model, pes)

    def nextpnr_options(self, program) -> str:
        """Extra nextpnr options for ``program`` (a router for large designs)."""
        return ""

    # ---- clocking -------------------------------------------------------------------------
    def pll(self, f_in_mhz: float, f_out_mhz: float):
        """The PLL settings that make ``f_out_mhz`` from the oscillator, or None: the design
        runs at the oscillator's frequency."""
        return None

    def instantiate_pll(self, m, platform, pll, *, sync_clk, link_clk, locked) -> None:
        """Add the PLL primitive for :meth:`pll`'s settings to ``m``: ``sync_clk`` gets its
        output, ``link_clk`` the oscillator, ``locked`` its lock."""
        raise NotImplementedError(f"{self.title}: no PLL")

    def global_buffer(self, m, signal, name: str):
        """``signal`` on a global network where the family has one for logic nets (the
        accelerator's reset reaches every flip-flop of the chip), else ``signal`` itself."""
        return signal

    # ---- the configuration flash, after configuration -----------------------------------
    def connect_flash(self, m, platform, pins) -> None:
        """Wire ``pins`` (:data:`boards.link.flashboot.FlashSignature`: ``sck``, ``cs``
        (high: selected), ``copi`` out, ``cipo`` in) to the board's SPI flash
        (``build --boot-from-flash``)."""
        raise InputError(f"{self.title} boards: reading the weights from the SPI flash is not "
                         f"supported; upload them with `run` instead")

    # ---- flow -----------------------------------------------------------------------------
    def synth_options(self, board, options=None) -> str:
        """Options for Yosys's ``synth_<name>``."""
        return ""

    def products(self, program, board, out_dir, *, options, baud: int, seed: int,
                 synth_estimate: bool = False) -> dict:
        """What a board build makes (a bitstream, or plans) and the report's board section
        (without the timing verdict: ``boards.flow.check_timing``); ``synth_estimate``: a
        synthesis estimate where no bitstream can be made."""
        raise NotImplementedError

    def __init__(self):
        _INSTANCES[self.name] = self

    def __reduce__(self):
        # one instance per family: copies (dataclasses.replace, pickling) are the instance
        return (_family, (self.name,))


#: every family instance by name (what ``boards.families.FAMILIES`` lists)
_INSTANCES: dict = {}


def linear_fmax(model: tuple, pes: int) -> float:
    """MHz at ``pes`` of a model ``(a, b)``: a - b * log2(P)."""
    a, b = model
    return round(a - b * math.log2(pes), 1)


def interpolate_fmax(points: dict, pes: int) -> float:
    """MHz at ``pes`` from measured ``points`` {P: MHz}: linear in log2(P) between them, the
    first below the smallest P, and above the largest the last segment's slope where it
    falls (never a rise: more PEs never make a design faster)."""
    xs = sorted(points)
    x = math.log2(pes)
    if pes <= xs[0]:
        return round(points[xs[0]], 1)
    for lo, hi in zip(xs, xs[1:]):
        if pes <= hi:
            t = (x - math.log2(lo)) / (math.log2(hi) - math.log2(lo))
            return round(points[lo] + t * (points[hi] - points[lo]), 1)
    if len(xs) < 2:
        return round(points[xs[-1]], 1)
    lo, hi = xs[-2], xs[-1]
    slope = min(0.0, (points[hi] - points[lo]) / (math.log2(hi) - math.log2(lo)))
    return round(max(1.0, points[hi] + slope * (x - math.log2(hi))), 1)


def _family(name: str):
    return _INSTANCES[name]


def with_hooks(platform_cls, family: Family):
    """``platform_cls`` with a ``get_memory()`` hook that asks ``family.map_memory`` first and a
    ``get_multiplier()`` hook that asks ``family.map_multiplier`` (each only where the family
    overrides the base's; unchanged when it overrides neither)."""
    hooks = {}
    if type(family).map_memory is not Family.map_memory:
        def get_memory(self, mem):
            return family.map_memory(mem) or memory.Memory.elaborate(mem, None)
        hooks["get_memory"] = get_memory
    if type(family).map_multiplier is not Family.map_multiplier:
        def get_multiplier(self, mul):
            return family.map_multiplier(mul)
        hooks["get_multiplier"] = get_multiplier
    if not hooks:
        return platform_cls
    return type(platform_cls.__name__, (platform_cls,), {**hooks, "__module__": __name__})


class MemoryWithAttrs(Elaboratable):
    """``mem`` implemented by a memory like it with ``attrs`` added (e.g. Yosys's
    ``ram_style``), its ports wired to the original's: the public way to set a synthesis
    attribute on a memory from a ``get_memory()`` hook. ``name``: the inner memory's, which
    Yosys sees as its ``MEMID`` until the design is flattened."""

    def __init__(self, mem: memory.Memory, attrs: dict, *, name: str = "mem"):
        self.mem, self.attrs, self.name = mem, {**mem.attrs, **attrs}, name

    def elaborate(self, platform):
        m = Module()
        mem = self.mem
        m.submodules[self.name] = new = memory.Memory(shape=mem.shape, depth=mem.depth,
                                               init=mem.init, attrs=self.attrs)
        writes = {}
        for port in mem.write_ports:
            writes[port] = new.write_port(domain=port.domain,
                                          granularity=port.signature.granularity)
            m.d.comb += [writes[port].addr.eq(port.addr), writes[port].data.eq(port.data),
                         writes[port].en.eq(port.en)]
        for port in mem.read_ports:
            read = new.read_port(domain=port.domain,
                                 transparent_for=[writes[w] for w in port.transparent_for])
            m.d.comb += [read.addr.eq(port.addr), port.data.eq(read.data)]
            if port.domain != "comb":
                m.d.comb += read.en.eq(port.en)
        return m


def _split(width: int, maximum: int, minimum: int) -> list:
    parts = [maximum] * (width // maximum)
    rest = width % maximum
    if rest >= minimum:
        parts.append(rest)
    return parts or [width]


class NextpnrFamily(Family):
    """A family whose open flow is Amaranth's build plan: Yosys ``synth_<name>``, nextpnr with
    ``--report``, a packer (``boards.flow.build_bitstream``)."""

    #: what the report calls nextpnr's resource kinds ({"ICESTORM_LC": "logic cells ..."})
    resource_names: dict = {}

    def products(self, program, board, out_dir, *, options, baud: int, seed: int,
                 synth_estimate: bool = False) -> dict:
        return flow.build_bitstream(program, board, out_dir, baud=baud, options=options,
                                    seed=seed)

    def parse_report(self, path, target_mhz: float) -> dict:
        """Fmax and utilisation from nextpnr's ``--report`` JSON."""
        return flow.parse_nextpnr_report(path, self, target_mhz)


def request_flash(platform, name: str, title: str):
    """The platform's SPI flash resource, or a one-line error."""
    from amaranth.build import ResourceError

    try:
        return platform.request(name, 0)
    except ResourceError:
        raise InputError(f"{type(platform).__name__} ({title}) has no {name} resource: "
                         f"--boot-from-flash cannot reach its flash") from None
