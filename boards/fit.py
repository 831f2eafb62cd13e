"""Will it fit, and how fast will it run? An estimate of block RAM, DSPs, LUTs and flip-flops
for a compiled program on a board, and the plan that picks the PE count, made in seconds
before any synthesis runs.

Memories come from :func:`hw.images.memories` (the same geometry the components build
theirs from) and are mapped the way Yosys maps them on each family: block RAM in whole blocks
of the best aspect ratio (iCE40 EBR has one read port, so a memory read twice takes two
copies), small or asynchronous-read memories in LUT RAM (ECP5, 7-series) or flip-flops
(iCE40), and on iCE40 UltraPlus the weight memories of a design with uploaded weights in
SPRAM. Multipliers are split into DSP tiles as Yosys's ``mul2dsp`` splits them. LUTs and
flip-flops come from a linear model whose coefficients were fitted to placed builds
(``benchmarks/board_builds.py`` prints the measurements; ``docs/benchmarks.md`` records them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from core.errors import FitError
from core.arith import MULTIPLIER_BITS
from core.ir import Grid
from hw.images import SPRAM_DEPTH, MemorySpec, bus_layout, geometry, memories
from hw.options import Choices, needed_banks, options_for

__all__ = ["FitEstimate", "Plan", "estimate", "resolve_options", "check_fit", "plan",
           "predicted_fmax", "predicted_cycles", "component_logic", "CANDIDATE_PES"]

#: The PE counts ``--pes auto`` tries, largest first.
CANDIDATE_PES = (64, 48, 32, 24, 16, 12, 8, 6, 4, 3, 2, 1)


@dataclass
class FitEstimate:
    board: str
    pes: int
    grid: str
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
            "grid": self.grid,
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


# ---- family models -----------------------------------------------------------------------

# (width, depth) configurations of one block RAM, the bits of one block, and whether a block
# has two read ports (true dual port)
_BRAM = {
    "ice40": (((16, 256), (8, 512), (4, 1024), (2, 2048)), 4096, False),
    "ecp5": (((36, 512), (18, 1024), (9, 2048), (4, 4096), (2, 8192), (1, 16384)), 18432, True),
    # RAMB36 as two RAMB18 halves: count in RAMB36 units of 36864 bits
    "xc7": (((36, 512), (18, 1024), (9, 2048), (4, 4096), (2, 8192), (1, 16384)), 18432, True),
}
# memories at or below this many bits go to logic (what Yosys's cost model picks; iCE40:
# a 15 x 17 = 255-bit FIFO goes to an EBR, a 64 x 2 = 128-bit ROM to flip-flops)
_SMALL_BITS = {"ice40": 128, "ecp5": 1024, "xc7": 1024}
# ... and on families with LUT RAM, memories no deeper than this too
_LUTRAM_DEPTH = {"ice40": 0, "ecp5": 64, "xc7": 64}
# DSP tile: (max A width, max B width, min width that still goes to a DSP). ECP5: Yosys
# gives even a one-bit remainder a MULT18.
_DSP = {"ice40": (16, 16, 2), "ecp5": (18, 18, 1), "xc7": (25, 18, 2)}
# LUT RAM: bits of one LUT's worth (ECP5 DPR16X4: 16 x 4 in two slices' LUTs; 7-series
# RAM64M-ish: 64 bits a LUT); iCE40 has none, its "LUT RAM" is flip-flops
_LUTRAM_BITS_PER_LUT = {"ecp5": 16, "xc7": 64}

# Logic model, per family, per component: coefficients of the terms of component_logic(),
# fitted to Yosys runs of single components (benchmarks/fit_model.py) and checked against
# placed builds (docs/benchmarks.md, section 4).
_LOGIC_MODEL = {
    "ecp5": {"pe_lut": (250, 2.0, 1.0, 1.2, 0.1), "pe_ff": (250, 0.0, 0.0, 0.0, 0.3),
             "reducer_lut": (300, 1.0, 3.0, 12.0), "reducer_ff": (150, 1.0, 8.0, 0.0),
             "fixed_lut": 1800, "fixed_ff": 1200},
    "ice40": {"pe_lut": (300, 0.0, 1.0, 0.0, 0.5), "pe_ff": (300, 0.0, 0.0, 0.0, 1.0),
              "reducer_lut": (200, 1.0, 2.0, 10.0), "reducer_ff": (200, 1.0, 8.0, 0.0),
              "fixed_lut": 900, "fixed_ff": 900},
    "xc7": {"pe_lut": (220, 0.5, 1.0, 1.0, 0.1), "pe_ff": (250, 0.0, 0.0, 0.0, 0.3),
            "reducer_lut": (300, 1.0, 3.0, 12.0), "reducer_ff": (150, 1.0, 8.0, 0.0),
            "fixed_lut": 1800, "fixed_ff": 1200},
}
# iCE40 logic cells pair a LUT with a flip-flop: cells ~ LUTs + 0.9 x FFs
_ICE40_FF_PAIRING = 0.9

# Fmax model, per family: MHz = a - b * log2(P) for the default gateware style, fitted to the
# placed builds of docs/benchmarks.md. A plan predicts a clock met when the model reaches it.
_FMAX_MODEL = {"ice40": (53.0, 1.5), "ecp5": (118.0, 2.0), "xc7": (150.0, 3.0)}


def _lutram_terms(geo) -> tuple[int, int, int]:
    """(LUT-RAM primitives, bank-select width, depth-mux width) of one PE's distributed
    accumulators: each bank is ceil(depth / 16) x ceil(width / 4) 16x4 primitives; the
    select between banks and the depth multiplexers scale with the width."""
    width = geo.partial_width
    prims = select = mux = 0
    for m in range(geo.layers):
        chunks = -(-geo.row_slots[m] // 16)
        prims += geo.banks[m] * chunks * -(-width // 4)
        mux += geo.banks[m] * (chunks - 1) * width
    select = (geo.slots - 1) * width
    return prims, select, mux


def logic_terms(geo, family: str) -> dict:
    """The terms the logic model weighs, per component (each a row of numbers that the
    coefficients of ``_LOGIC_MODEL`` multiply): a PE's constant, its accumulators' LUT-RAM
    primitives, bank select and depth multiplexers, its FIFO bits; a reducer's constant, adder
    tree bits, requantizer width and layer count."""
    if geo.accumulators == "distributed":
        prims, select, mux = _lutram_terms(geo)
    else:
        prims = select = mux = 0
    fifo_bits = geo.fifo_depth * bus_layout(geo).size
    tree = geo.cols * geo.acc_width
    return {"pe_lut": [1, prims, select, mux, fifo_bits],
            "pe_ff": [1, prims, select, mux, fifo_bits],
            "reducer_lut": [1, tree, geo.bias_width, geo.layers],
            "reducer_ff": [1, tree, geo.bias_width, geo.layers]}


def component_logic(geo, family: str) -> dict:
    """LUTs and flip-flops of one PE and one reducer of ``geo`` on ``family`` (the model's
    terms: a constant, the accumulators' LUT RAM, the bank select, the depth multiplexers,
    the FIFOs' bits; for a reducer the adder tree, the requantizer and the layer tables),
    and of everything else (loader, buses, output unit, link)."""
    coef = _LOGIC_MODEL[family]
    terms = logic_terms(geo, family)
    out = {key: round(sum(c * t for c, t in zip(coef[key], terms[key])))
           for key in ("pe_lut", "pe_ff", "reducer_lut", "reducer_ff")}
    out.update(fixed_lut=coef["fixed_lut"], fixed_ff=coef["fixed_ff"])
    return out


def _blocks(spec: MemorySpec, family: str) -> int:
    """Whole blocks (RAMB18 halves on 7-series) for one memory kind, best aspect ratio."""
    configs, _, dual = _BRAM[family]
    one = min(math.ceil(spec.width / w) * math.ceil(spec.depth / d) for w, d in configs)
    copies = 1 if dual or spec.ports == 1 else spec.ports
    return one * spec.count * copies


def _in_logic(spec: MemorySpec, family: str) -> bool:
    if spec.read == "async":
        return True
    if spec.depth * spec.width <= _SMALL_BITS[family]:
        return True
    return spec.depth <= _LUTRAM_DEPTH[family]


def _dsps_for(a_width: int, b_width: int, family: str) -> int:
    a_max, b_max, minimum = _DSP[family]
    a, b = max(a_width, b_width), min(a_width, b_width)
    if b > b_max:
        a, b = b, a
    return len(_split(a, a_max, minimum)) * len(_split(b, b_max, minimum))


def _split(width: int, maximum: int, minimum: int) -> list:
    parts = [maximum] * (width // maximum)
    rest = width % maximum
    if rest >= minimum:
        parts.append(rest)
    return parts or [width]


#: one iCE40 UltraPlus SPRAM: 16384 words (the depth hw/walker.py chunks weights to) of 16 bits
_SPRAM_WIDTH = 16
_SPRAM_BITS = SPRAM_DEPTH * _SPRAM_WIDTH


def _spram_blocks(spec: MemorySpec) -> int:
    return (math.ceil(spec.width / _SPRAM_WIDTH) * math.ceil(spec.depth / SPRAM_DEPTH)
            * spec.count)


def dsps(program, family: str) -> tuple[int, int]:
    """(DSP tiles of the MACs, of the reducers): an 8 x 8 product per PE; per reducer the
    requantizer's (acc + bias) x multiplier and, with average pooling, the pooler's."""
    grid = program.grid
    mac = _dsps_for(8, 8, family) * grid.pes
    per_reducer = _dsps_for(program.widths.biased, MULTIPLIER_BITS + 1, family)
    if any(layer.pool is not None and layer.pool.kind == "avg" for layer in program.layers):
        per_reducer += _dsps_for(geometry(program).pool_sum_width, MULTIPLIER_BITS + 1, family)
    return mac, per_reducer * grid.rows


def estimate(program, board, options) -> FitEstimate:
    """Resources of the board top for ``program`` built with ``options`` on ``board``."""
    family = board.family
    geo = geometry(program, options)
    P, R = geo.pes, geo.rows
    mems = memories(geo) + [MemorySpec("link.inputs", max(2, geo.in_features), 8)]
    bram_blocks = bram_bits = logic_bits = spram_blocks = 0
    to_spram = geo.weights == "uploaded" and family == "ice40" and board.spram_bits > 0
    for spec in mems:
        if to_spram and spec.kind == "uploaded_weights":
            spram_blocks += _spram_blocks(spec)
        elif _in_logic(spec, family):
            logic_bits += spec.bits
        else:
            bram_blocks += _blocks(spec, family)
            bram_bits += spec.bits
    _, block_bits, _ = _BRAM[family]
    if family == "xc7":
        bram_blocks = math.ceil(bram_blocks / 2)      # RAMB36 units
        block_bits *= 2
    available_blocks = board.bram_bits // block_bits
    mac_dsps, reducer_dsps = dsps(program, family) if board.dsps else (0, 0)
    used_dsps = mac_dsps + reducer_dsps

    parts = component_logic(geo, family)
    luts = parts["fixed_lut"] + P * parts["pe_lut"] + R * parts["reducer_lut"]
    ffs = parts["fixed_ff"] + P * parts["pe_ff"] + R * parts["reducer_ff"]
    est = FitEstimate(board=board.name, pes=P, grid=str(program.grid), memories=mems,
                      bram_blocks=bram_blocks, bram_blocks_available=available_blocks,
                      bram_bits=bram_bits, dsps=used_dsps, dsps_available=board.dsps,
                      luts=luts, luts_available=board.luts, ffs=ffs, ffs_available=board.ffs,
                      logic_memory_bits=logic_bits, weights=geo.weights,
                      spram_blocks=spram_blocks,
                      spram_blocks_available=board.spram_bits // _SPRAM_BITS)
    unit = {"ice40": "4 kbit EBR", "ecp5": "18 kbit DP16KD", "xc7": "36 kbit RAMB36"}[family]
    if bram_blocks > available_blocks:
        est.problems.append(
            f"block RAM: {bram_blocks} x {unit} needed ({bram_bits} bits of weights, pointers "
            f"and buffers), {available_blocks} available")
    if spram_blocks > est.spram_blocks_available:
        est.problems.append(
            f"SPRAM: {spram_blocks} x 256 kbit needed (each PE's weights take whole blocks), "
            f"{est.spram_blocks_available} available")
    if used_dsps > board.dsps and board.dsps:
        est.problems.append(f"DSPs: {used_dsps} needed ({mac_dsps} for the PEs' MACs, "
                            f"{reducer_dsps} for the {R} reducers), {board.dsps} available")
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


def resolve_options(program, board, choices: Choices | None = None, run=None):
    """The gateware options for ``program`` on ``board`` (the family's, ``choices`` over
    them) and their estimate. Banks left open: two per layer, or with ``run`` (a reference
    run on calibration inputs) those :func:`hw.options.needed_banks` calls for. With the
    weights' home left open, on a board with SPRAM: uploaded weights when the bitstream's
    block RAM would not hold them and SPRAM does."""
    choices = choices or Choices()
    options = options_for(program, board.family, choices)
    if choices.banks is None and run is not None:
        options = replace(options, banks=needed_banks(program, run))
    est = estimate(program, board, options)
    if choices.weights is not None or not board.spram_bits or est.fits:
        return options, est
    if est.bram_blocks <= est.bram_blocks_available:
        return options, est
    uploaded = replace(options, weights="uploaded")
    alt = estimate(program, board, uploaded)
    if alt.fits:
        return uploaded, alt
    est.problems.append(f"with the weights uploaded into SPRAM instead: "
                        f"{', '.join(alt.problems)}")
    return options, est


def predicted_fmax(program, board, options) -> float:
    """The Fmax (MHz) the model expects of this design on ``board``."""
    a, b = _FMAX_MODEL[board.family]
    return round(a - b * math.log2(program.pes), 1)


def predicted_cycles(program, run) -> float:
    """Cycles per inference a stream of inputs like ``run``'s (a reference run) takes at
    least: the busiest PE over all layers, the busiest bus, the busiest reducer, the input."""
    grid = program.grid
    pe = float(run.pe_bound.mean())
    bus = float(run.pe_lookups.sum(axis=1).max(axis=1).mean())
    drain = max(sum(red.row_count(m) for m in range(len(program.layers)))
                for red in program.reducers)
    beats = program.col_slots[0]
    return max(pe, bus, drain, beats) if grid.pes else pe


@dataclass
class Plan:
    """What ``build`` makes: the program for the chosen PEs and grid, its options and
    estimate, the predicted clock and cycles, and why (``tried``: the candidates, largest
    first)."""
    program: object
    options: object
    estimate: FitEstimate
    fmax_mhz: float
    cycles: float
    clock_mhz: float
    reason: str
    tried: list

    @property
    def inferences_per_second(self) -> float:
        return self.clock_mhz * 1e6 / self.cycles

    def as_dict(self) -> dict:
        return {"pes": self.program.pes, "grid": str(self.program.grid),
                "options": {k: _plain(getattr(self.options, k)) for k in
                            ("memory", "accumulators", "pipeline", "weights", "banks",
                             "fifo_depth")},
                "predicted_fmax_mhz": self.fmax_mhz, "predicted_cycles": round(self.cycles, 1),
                "clock_mhz": self.clock_mhz,
                "predicted_inferences_per_s": round(self.inferences_per_second),
                "reason": self.reason, "tried": self.tried}


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def _evaluate(program, board, choices, calibration_run):
    run = calibration_run(program)
    options, est = resolve_options(program, board, choices, run)
    fmax = predicted_fmax(program, board, options)
    return options, est, fmax, predicted_cycles(program, run), run.nnz_active


def plan(compile_for, board, *, pes: int | None = None, grid: str | None = None,
         choices: Choices | None = None, candidates=CANDIDATE_PES, calibration_run=None
         ) -> Plan:
    """The design ``build`` makes for ``board``. ``compile_for(pes, grid)`` compiles the
    program. With ``pes`` (or ``grid``) given: that one, or a :class:`FitError` saying what
    would fit. Without: the most inferences per second among the candidates that fit and are
    predicted to meet the board's clock (failing that, the fastest that fits)."""
    if calibration_run is None:
        calibration_run = _default_run
    clock = board.clock_mhz
    if pes is not None:
        program = compile_for(pes, grid)
        options, est, fmax, cycles, _ = _evaluate(program, board, choices, calibration_run)
        if not est.fits:
            check_fit(program, board, est, compile_for=compile_for, choices=choices,
                      calibration_run=calibration_run)
        met = "predicted to meet" if fmax >= clock else "predicted to miss"
        return Plan(program, options, est, fmax, cycles, clock,
                    f"P = {pes} ({program.grid}) as asked; fits, {met} {clock:g} MHz "
                    f"(model: {fmax} MHz)", [])
    tried, best, fallback, work = [], None, None, None
    for p in sorted(candidates, reverse=True):
        grid_p = Grid.shapes(p)[0]
        if best is not None and clock * 1e6 / _ideal(work, p) <= best.inferences_per_second:
            break                       # even a perfect array of p PEs would be slower
        program = compile_for(p, None)
        options, est, fmax, cycles, work = _evaluate(program, board, choices, calibration_run)
        row = {"pes": p, "grid": str(grid_p), "fits": est.fits, "problems": est.problems,
               "predicted_fmax_mhz": fmax, "predicted_cycles": round(cycles, 1)}
        tried.append(row)
        if not est.fits:
            continue
        candidate = Plan(program, options, est, fmax, cycles, clock, "", tried)
        if fmax >= clock:
            if best is None or candidate.inferences_per_second > best.inferences_per_second:
                best = candidate
        elif fallback is None:
            fallback = candidate
    chosen = best or fallback
    if chosen is None:
        program = compile_for(1, None)
        _, est, *_ = _evaluate(program, board, choices, calibration_run)
        check_fit(program, board, est)
    p = chosen.program.pes
    others = "; ".join(f"P = {t['pes']}: " + ("; ".join(t["problems"]) if not t["fits"] else
                                               f"{t['predicted_fmax_mhz']} MHz predicted, "
                                               f"{t['predicted_cycles']} cycles")
                       for t in tried if t["pes"] != p)
    if best is not None:
        chosen.reason = (f"P = {p} ({chosen.program.grid}): the most inferences per second "
                         f"that fits and is predicted to meet {clock:g} MHz "
                         f"({chosen.fmax_mhz} MHz predicted, {chosen.cycles:.1f} cycles per "
                         f"inference)" + (f"; {others}" if others else ""))
    else:
        chosen.reason = (f"P = {p} ({chosen.program.grid}): no design that fits is predicted "
                         f"to meet {clock:g} MHz; the fastest that fits"
                         + (f"; {others}" if others else ""))
    chosen.tried = tried
    return chosen


def _ideal(nnz_active, pes: int) -> float:
    """The ideal cycles of ``pes`` PEs: sum over layers of ceil(nnz_active / P), on average
    (no array of that size can do better)."""
    import numpy as np
    return max(1.0, float(np.ceil(nnz_active / pes).sum(axis=1).mean()))


def _default_run(program):
    """A reference run of the program on synthetic dense inputs (the planner's default)."""
    import numpy as np

    from compiler import reference
    rng = np.random.default_rng(0)
    x = rng.integers(-64, 64, (16, program.model.in_features))
    return reference.run(program, x)


def check_fit(program, board, est=None, *, compile_for=None, choices=None,
              calibration_run=None) -> FitEstimate:
    """Raise :class:`FitError` with the numbers and what would fit when ``program`` does not
    fit ``board``; returns the estimate otherwise."""
    if est is None:
        _, est = resolve_options(program, board, choices)
    if est.fits:
        return est
    model = program.model
    weights = sum(layer.weight.size for layer in model.layers)
    nnz = sum(layer.nnz for layer in model.layers)
    advice = []
    if compile_for is not None and program.pes > 1:
        smaller = [p for p in CANDIDATE_PES if p < program.pes]
        try:
            found = plan(compile_for, board, choices=choices, candidates=smaller,
                         calibration_run=calibration_run)
            advice.append(f"--pes {found.program.pes} fits")
        except FitError:
            pass
    advice.append(f"prune harder (now {nnz} of {weights} weights nonzero, "
                  f"{100 * (1 - nnz / weights):.1f} % sparse)")
    bigger = _bigger_boards(board, program, choices)
    if bigger:
        advice.append(f"or a bigger board: {', '.join(bigger)}")
    raise FitError(f"{model.name} with {program.pes} PEs ({program.grid}) does not fit "
                   f"{board.name} ({board.device}): {'; '.join(est.problems)}. Try: "
                   f"{'; '.join(advice)}")


def _bigger_boards(board, program, choices) -> list:
    from . import BOARDS

    out = []
    for other in BOARDS.values():
        if other.name == board.name or other.luts <= board.luts:
            continue
        if resolve_options(program, other, choices)[1].fits:
            out.append(other.name)
    return out[:3]
