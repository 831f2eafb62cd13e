"""Will it fit? An estimate of block RAM, DSPs, LUTs and flip-flops for a compiled program on a
board, made in well under a second before any synthesis runs.

Memories are read from the elaborated accelerator (Amaranth's simulator-free elaboration,
a fraction of a second), then mapped the way Yosys maps them on each family: block RAM in whole
blocks of the best aspect ratio, small or asynchronous-read memories in LUT RAM (ECP5,
7-series) or flip-flops (iCE40), and on iCE40 UltraPlus the weight memories of a design with
uploaded weights in SPRAM (16384 x 16 bits a block). Where the user left the weights' home
open, a board with SPRAM gets uploaded weights when the bitstream's block RAM cannot hold them.
Multipliers are split into DSP tiles as Yosys's ``mul2dsp`` splits them. LUTs and flip-flops
come from a linear model whose coefficients were fitted to real ``yosys synth_*`` runs of the
board top (``benchmarks/board_builds.py`` prints the measurements; ``docs/benchmarks.md``, section 4).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

from compiler.errors import FitError
from hw.lane import SPRAM_DEPTH
from hw.options import options_for

__all__ = ["MemorySpec", "FitEstimate", "design_memories", "estimate", "check_fit",
           "largest_fitting_pes"]


@dataclass(frozen=True)
class MemorySpec:
    name: str
    depth: int
    width: int
    async_read: bool = False
    count: int = 1

    @property
    def bits(self) -> int:
        return self.depth * self.width * self.count


@dataclass
class FitEstimate:
    board: str
    pes: int
    memories: list
    bram_blocks: int
    bram_blocks_available: int
    bram_bits: int               # bits placed in block RAM (before rounding to blocks)
    dsps: int
    dsps_available: int
    luts: int
    luts_available: int
    ffs: int
    ffs_available: int
    logic_memory_bits: int       # bits in LUT RAM / flip-flops
    weights: str = "bitstream"   # where the weights live (hw.options.WEIGHT_STORES)
    spram_blocks: int = 0
    spram_blocks_available: int = 0
    problems: list = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict:
        return {
            "source": "estimate before synthesis (boards/fit.py)",
            "pes": self.pes,
            "weights": self.weights,
            "bram_blocks": {"used": self.bram_blocks, "available": self.bram_blocks_available},
            "spram_blocks": {"used": self.spram_blocks,
                             "available": self.spram_blocks_available},
            "dsps": {"used": self.dsps, "available": self.dsps_available},
            "luts": {"used": self.luts, "available": self.luts_available},
            "ffs": {"used": self.ffs, "available": self.ffs_available},
            "block_ram_bits": self.bram_bits,
            "logic_memory_bits": self.logic_memory_bits,
            "fits": self.fits,
            "problems": list(self.problems),
        }


# ---- the memories of the design ----------------------------------------------------------

@functools.lru_cache(maxsize=16)
def _elaborated_memories(program, options) -> tuple:
    return tuple(_walk_memories(program, options))


def design_memories(program, *, choices=None, link: bool = True, family=None) -> list:
    """Every memory of the board top for ``program``, read from the elaborated accelerator (so
    the list cannot drift from hw/), plus the UART link's input buffer (boards/link.py)."""
    mems = list(_elaborated_memories(program,
                                     options_for(program, family, choices)))
    if link:
        mems.append(MemorySpec("link.inputs", max(2, program.model.in_features), 8))
    return mems


def _walk_memories(program, options) -> list:
    """Every memory of the board top for ``program``, read from the elaborated accelerator (so
    the list cannot drift from hw/), plus the UART link's input buffer (boards/link.py)."""
    from amaranth.hdl import Fragment
    from amaranth.hdl._mem import MemoryInstance

    from hw.top import SparseAccelerator

    mems = []

    def walk(fragment, path):
        if isinstance(fragment, MemoryInstance):
            shape = fragment._data.shape
            width = shape if isinstance(shape, int) else shape.width
            # a memory marked `no_rw_check` is read through a register that Yosys merges into
            # the block RAM's read port (hw/lane.py, _RegisteredRead)
            registered = bool(fragment._attrs.get("no_rw_check"))
            async_read = not registered and any(port._domain == "comb"
                                                for port in fragment._read_ports)
            mems.append(MemorySpec(path.lstrip("."), fragment._data.depth, width, async_read))
        for sub, name, *_ in fragment.subfragments:
            walk(sub, f"{path}.{name}")

    walk(Fragment.get(SparseAccelerator(program, options), None), "")
    return mems


# ---- family models -----------------------------------------------------------------------

# (width, depth) configurations of one block RAM, and the bits of one block
_BRAM = {
    "ice40": (((16, 256), (8, 512), (4, 1024), (2, 2048)), 4096),
    "ecp5": (((36, 512), (18, 1024), (9, 2048), (4, 4096), (2, 8192), (1, 16384)), 18432),
    # RAMB36 as two RAMB18 halves: count in RAMB36 units of 36864 bits
    "xc7": (((36, 512), (18, 1024), (9, 2048), (4, 4096), (2, 8192), (1, 16384)), 18432),
}
# memories at or below this many bits go to logic (what Yosys's cost model picks; iCE40:
# a 15 x 17 = 255-bit FIFO goes to an EBR, a 64 x 2 = 128-bit ROM to flip-flops)
_SMALL_BITS = {"ice40": 128, "ecp5": 1024, "xc7": 1024}
# ... and on families with LUT RAM, memories no deeper than this too
_LUTRAM_DEPTH = {"ice40": 0, "ecp5": 64, "xc7": 64}
# DSP tile: (max A width, max B width, min width that still goes to a DSP). ECP5: Yosys
# gives even a one-bit remainder a MULT18 (the example's 19 x 16 requantizer product takes
# two: 3 per PE with the MAC, measured at P = 1, 2, 4, 8)
_DSP = {"ice40": (16, 16, 2), "ecp5": (18, 18, 1), "xc7": (25, 18, 2)}

# LUT / FF model, per family: a + b*P + c*P**2, plus the job-queue bits held in flip-flops
# (iCE40 has no LUT RAM). Fitted to yosys synthesis of the board top for the example model
# (iCE40: P = 1, 2; ECP5: P = 1, 2, 4, 8; 7-series: P = 2), LUTs scaled to what nextpnr
# packs (ECP5 TRELLIS_COMB = LUT4 + 2 CCU2C + 2 DPR16X4, x1.25 measured at P = 8). The numbers:
# docs/benchmarks.md, section 4. ECP5 flip-flops refitted 2026-11-28 to placed builds (short
# pipeline, P = 1, 2, 4, 8: 1020, 1657, 3032, 6005 TRELLIS_FF). "deep": what the deep
# pipeline adds (a*P + b*P**2: its P*P job queues keep four head registers each), fitted to
# ECP5 P = 4, 8 (9603 / 22792 COMB, 5476 / 14073 FF against the short pipeline's 7827 / 16144
# and 3032 / 6005; 7-series borrows them, unmeasured); iCE40's model is fitted to the deep
# pipeline itself. ECP5 LUTs refitted the same day to the placed short-pipeline builds P = 1, 2,
# 4, 8, 16 (1800, 3865, 7827, 16144, 42109 TRELLIS_COMB) and P = 32's packed count (104092; it
# did not place: 83640 on the 85F), least squares on the relative error (every point within
# 6 %): the P*P term is the job queues and fan-out masks between every pair of PEs.
_LUT_MODEL = {
    "ice40": {"lut": (-95, 1509, 0), "ff": (220, 405, 0), "ff_queue_bit": 1.0,
              "deep_lut": (0, 0), "deep_ff": (0, 0)},
    "ecp5": {"lut": (29, 1748, 47.8), "ff": (300, 712, 0), "ff_queue_bit": 0.0,
             "deep_lut": (57, 97), "deep_ff": (213, 99)},
    "xc7": {"lut": (100, 2300, 2.0), "ff": (200, 900, 13.3), "ff_queue_bit": 0.0,
            "deep_lut": (57, 97), "deep_ff": (213, 99)},
}
# iCE40 logic cells pair a LUT with a flip-flop: cells ~ LUTs + 0.9 x FFs (measured at P = 2:
# 2923 LUT4 + 2118 FF -> 4821 ICESTORM_LC)
_ICE40_FF_PAIRING = 0.9


def _blocks(spec: MemorySpec, family: str) -> int:
    """Whole blocks (RAMB18 halves on 7-series) for one memory kind, best aspect ratio."""
    configs, _ = _BRAM[family]
    one = min(math.ceil(spec.width / w) * math.ceil(spec.depth / d) for w, d in configs)
    return one * spec.count


def _in_logic(spec: MemorySpec, family: str) -> bool:
    if spec.async_read:
        return True
    if spec.depth * spec.width <= _SMALL_BITS[family]:
        return True
    return spec.depth <= _LUTRAM_DEPTH[family]


def _dsps_for(a_width: int, b_width: int, family: str) -> int:
    a_max, b_max, minimum = _DSP[family]
    a, b = max(a_width, b_width), min(a_width, b_width)
    if b > b_max:
        a, b = b, a
    tiles = 0
    for a_part in _split(a, a_max, minimum):
        for b_part in _split(b, b_max, minimum):
            tiles += 1
    return tiles


def _split(width: int, maximum: int, minimum: int) -> list:
    parts = [maximum] * (width // maximum)
    rest = width % maximum
    if rest >= minimum:
        parts.append(rest)
    return parts or [width]


#: one iCE40 UltraPlus SPRAM: 16384 words (the depth hw/lane.py chunks weights to) of 16 bits
_SPRAM_WIDTH = 16
_SPRAM_BITS = SPRAM_DEPTH * _SPRAM_WIDTH


def _spram_blocks(spec: MemorySpec) -> int:
    return (math.ceil(spec.width / _SPRAM_WIDTH) * math.ceil(spec.depth / SPRAM_DEPTH)
            * spec.count)


def estimate(program, board, *, choices=None, link: bool = True) -> FitEstimate:
    """Resources of the board top for ``program`` on ``board`` (before synthesis). With the
    weights' home left open (``choices.weights`` None) on a board with SPRAM: uploaded
    weights when the bitstream's block RAM would not hold them and SPRAM does."""
    from dataclasses import replace

    from hw.options import Choices

    choices = choices or Choices()
    if choices.weights is not None or not board.spram_bits:
        return _estimate(program, board, replace(choices, weights=choices.weights
                                                  or "bitstream"), link)
    in_bitstream = _estimate(program, board, replace(choices, weights="bitstream"), link)
    if in_bitstream.bram_blocks <= in_bitstream.bram_blocks_available:
        return in_bitstream
    uploaded = _estimate(program, board, replace(choices, weights="uploaded"), link)
    if uploaded.fits:
        return uploaded
    in_bitstream.problems.append(f"with the weights uploaded into SPRAM instead: "
                                 f"{', '.join(uploaded.problems)}")
    return in_bitstream


def _estimate(program, board, choices, link) -> FitEstimate:
    from hw.images import geometry

    family = board.family
    geo = geometry(program, options_for(program, board.family, choices))
    P = geo.pes
    mems = design_memories(program, choices=choices, link=link, family=board.family)
    bram_blocks = bram_bits = logic_bits = queue_bits = spram_blocks = 0
    to_spram = geo.weights == "uploaded" and family == "ice40" and board.spram_bits > 0
    for spec in mems:
        if to_spram and spec.name.rsplit(".", 1)[-1].startswith("uploaded_entries"):
            spram_blocks += _spram_blocks(spec)      # `ram_style = "huge"` (hw/lane.py)
        elif _in_logic(spec, family):
            if spec.async_read:                         # the PE-to-PE job queues
                queue_bits += spec.bits
            else:
                logic_bits += spec.bits
        else:
            bram_blocks += _blocks(spec, family)
            bram_bits += spec.bits
    _, block_bits = _BRAM[family]
    if family == "xc7":
        bram_blocks = math.ceil(bram_blocks / 2)      # RAMB36 units
        block_bits *= 2
    available_blocks = board.bram_bits // block_bits

    per_pe, dsps = _dsps(program, board)

    coef = _LUT_MODEL[family]
    deep = geo.pipeline == "deep"
    a, b, c = coef["lut"]
    d, e = coef["deep_lut"] if deep else (0, 0)
    luts = round(a + (b + d) * P + (c + e) * P * P)
    a, b, c = coef["ff"]
    d, e = coef["deep_ff"] if deep else (0, 0)
    ffs = round(a + (b + d) * P + (c + e) * P * P + coef["ff_queue_bit"] * queue_bits)
    est = FitEstimate(board=board.name, pes=P, memories=mems, bram_blocks=bram_blocks,
                      bram_blocks_available=available_blocks, bram_bits=bram_bits,
                      dsps=dsps, dsps_available=board.dsps, luts=luts,
                      luts_available=board.luts, ffs=ffs, ffs_available=board.ffs,
                      logic_memory_bits=logic_bits + queue_bits, weights=geo.weights,
                      spram_blocks=spram_blocks,
                      spram_blocks_available=board.spram_bits // _SPRAM_BITS)
    unit = {"ice40": "4 kbit EBR", "ecp5": "18 kbit DP16KD", "xc7": "36 kbit RAMB36"}[family]
    if bram_blocks > available_blocks:
        est.problems.append(
            f"block RAM: {bram_blocks} x {unit} needed ({bram_bits} bits of memory images, "
            f"queues and buffers), {available_blocks} available")
    if spram_blocks > est.spram_blocks_available:
        est.problems.append(
            f"SPRAM: {spram_blocks} x 256 kbit needed (each PE's weights take whole blocks), "
            f"{est.spram_blocks_available} available")
    if dsps > board.dsps and board.dsps:
        est.problems.append(f"DSPs: {dsps} needed ({per_pe} per PE), {board.dsps} "
                            f"available")
    # logic: leave room for placement (nextpnr struggles above ~90 % on small parts)
    usable = int(board.luts * (0.92 if family == "ice40" else 0.95))
    if family == "ice40":
        cells = round(luts + _ICE40_FF_PAIRING * ffs)
        est.luts = cells            # what nextpnr reports as ICESTORM_LC
        if cells > usable:
            est.problems.append(f"logic: about {cells} logic cells estimated ({luts} LUT4 + "
                                f"{ffs} flip-flops), {board.luts} available ({usable} usable)")
    elif luts > usable:
        est.problems.append(f"logic: about {luts} LUTs estimated, {board.luts} available "
                            f"({usable} usable)")
    return est


def _dsps(program, board) -> tuple[int, int]:
    """(DSP tiles per PE, total) for ``program`` on ``board``: the 8x8 MAC and the
    requantizer's (acc + bias) x multiplier, split as Yosys's mul2dsp splits them."""
    from compiler.ir import MULTIPLIER_BITS

    if board.dsps == 0:
        return 0, 0         # multipliers in LUTs (counted in the LUT model's per-PE term)
    per_pe = (_dsps_for(8, 8, board.family)
              + _dsps_for(program.widths.biased, MULTIPLIER_BITS + 1, board.family))
    if board.family == "xc7":
        per_pe = 4          # measured: synth_xilinx spends 4 DSP48E1 per PE (P = 2: 8)
    return per_pe, per_pe * program.pes


def largest_fitting_pes(compile_for, board, *, candidates=(32, 16, 8, 4, 2, 1),
                        choices=None):
    """The largest P in ``candidates`` whose program (``compile_for(P)``) fits ``board``, and
    its estimate; ``(None, None)`` when none does. With the weights' home left open, weights
    in the bitstream first (no upload at run time), uploaded ones only if no P fits so."""
    from dataclasses import replace

    from hw.options import Choices

    choices = choices or Choices()
    tries = [choices]
    if choices.weights is None:
        tries = [replace(choices, weights="bitstream")]
        if board.spram_bits:
            tries.append(choices)
    programs = {}
    for attempt in tries:
        for pes in sorted(candidates, reverse=True):
            program = programs.setdefault(pes, compile_for(pes))
            if _dsps(program, board)[1] > board.dsps > 0:
                continue        # no need to elaborate the design to know
            est = estimate(program, board, choices=attempt)
            if est.fits:
                return pes, est
    return None, None


def check_fit(program, board, *, choices=None, compile_for=None) -> FitEstimate:
    """Raise :class:`FitError` with the numbers and what would fit when ``program`` does not fit
    ``board``; returns the estimate otherwise."""
    est = estimate(program, board, choices=choices)
    if est.fits:
        return est
    model = program.model
    weights = sum(layer.in_features * layer.out_features for layer in model.layers)
    nnz = sum(layer.nnz for layer in model.layers)
    advice = []
    if compile_for is not None and program.pes > 1:
        smaller = [p for p in (32, 16, 8, 4, 2, 1) if p < program.pes]
        pes, _ = largest_fitting_pes(compile_for, board, candidates=smaller,
                                     choices=choices)
        if pes:
            advice.append(f"--pes {pes} fits")
    advice.append(f"prune harder (now {nnz} of {weights} weights nonzero, "
                  f"{100 * (1 - nnz / weights):.1f} % sparse)")
    bigger = _bigger_boards(board, program, choices)
    if bigger:
        advice.append(f"or a bigger board: {', '.join(bigger)}")
    raise FitError(f"{model.name} with {program.pes} PEs does not fit {board.name} "
                   f"({board.device}): {'; '.join(est.problems)}. Try: {'; '.join(advice)}")


def _bigger_boards(board, program, choices) -> list:
    from . import BOARDS

    out = []
    for other in BOARDS.values():
        if other.name == board.name or other.luts <= board.luts:
            continue
        if estimate(program, other, choices=choices).fits:
            out.append(other.name)
    return out[:3]
