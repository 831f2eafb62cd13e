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

Every number of those models is the board's family's (``boards/families/<family>.py``); this
module does the counting. Boards stand below the compiler: the plan's reference runs (for the
accumulator banks and the predicted cycles) come from the caller, ``calibration_run``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from core.errors import FitError
from core.arith import MULTIPLIER_BITS
from core.ir import Grid
from hw.images import MemorySpec, bus_layout, geometry, memories
from hw.options import Choices, HardwareOptions, needed_banks

from . import BOARDS

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


def logic_terms(geo, family) -> dict:
    """The terms the logic model weighs, per component (each a row of numbers that the
    coefficients of the family's ``logic_model`` multiply): a PE's constant, its
    accumulators' LUT-RAM primitives, bank select and depth multiplexers, its FIFO bits; a
    reducer's constant, adder tree bits, requantizer width and layer count."""
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


def component_logic(geo, family) -> dict:
    """LUTs and flip-flops of one PE and one reducer of ``geo`` on ``family`` (the model's
    terms: a constant, the accumulators' LUT RAM, the bank select, the depth multiplexers,
    the FIFOs' bits; for a reducer the adder tree, the requantizer and the layer tables),
    and of everything else (loader, buses, output unit, link)."""
    coef = family.logic_model
    terms = logic_terms(geo, family)
    out = {key: round(sum(c * t for c, t in zip(coef[key], terms[key])))
           for key in ("pe_lut", "pe_ff", "reducer_lut", "reducer_ff")}
    out.update(fixed_lut=coef["fixed_lut"], fixed_ff=coef["fixed_ff"])
    return out


def dsps(program, family) -> tuple[int, int]:
    """(DSP tiles of the MACs, of the reducers): an 8 x 8 product per PE; per reducer the
    requantizer's (acc + bias) x multiplier and, with average pooling, the pooler's."""
    grid = program.grid
    mac = family.dsp_tiles(8, 8) * grid.pes
    per_reducer = family.dsp_tiles(program.widths.biased, MULTIPLIER_BITS + 1)
    if any(layer.pool is not None and layer.pool.kind == "avg" for layer in program.layers):
        per_reducer += family.dsp_tiles(geometry(program).pool_sum_width, MULTIPLIER_BITS + 1)
    return mac, per_reducer * grid.rows


#: (LUTs, flip-flops) of boards/link/flashboot.py's FlashBoot (``--boot-from-flash``): Yosys
#: synth_ice40 gave 163 flip-flops for a 42.7 kB image; the LUTs (the byte-wide CRC-32's XOR
#: trees, the header compare, the counters) are an allowance, not a measurement.
FLASH_BOOT_LOGIC = (300, 170)


def estimate(program, board, options) -> FitEstimate:
    """Resources of the board top for ``program`` built with ``options`` on ``board``."""
    family = board.family
    geo = geometry(program, options)
    P, R = geo.pes, geo.rows
    mems = memories(geo) + [MemorySpec("link.inputs", max(2, geo.in_features), 8)]
    bram_blocks = bram_bits = logic_bits = spram_blocks = 0
    to_spram = family.weights_in_spram(board, options)
    for spec in mems:
        if to_spram and spec.kind == "uploaded_weights":
            spram_blocks += family.spram_blocks(spec)
        elif family.in_logic(spec):
            logic_bits += spec.bits
        else:
            bram_blocks += family.bram_blocks(spec)
            bram_bits += spec.bits
    bram_blocks, block_bits = family.bram_units(bram_blocks)
    available_blocks = board.bram_bits // block_bits
    mac_dsps, reducer_dsps = dsps(program, family) if board.dsps else (0, 0)
    used_dsps = mac_dsps + reducer_dsps

    parts = component_logic(geo, family)
    if options.flash_boot:
        parts["fixed_lut"] += FLASH_BOOT_LOGIC[0]
        parts["fixed_ff"] += FLASH_BOOT_LOGIC[1]
    lut_factor, ff_factor = family.placed_factors
    luts = round(lut_factor * (parts["fixed_lut"] + P * parts["pe_lut"]
                               + R * parts["reducer_lut"]))
    ffs = round(ff_factor * (parts["fixed_ff"] + P * parts["pe_ff"] + R * parts["reducer_ff"]))
    est = FitEstimate(board=board.name, pes=P, grid=str(program.grid), memories=mems,
                      bram_blocks=bram_blocks, bram_blocks_available=available_blocks,
                      bram_bits=bram_bits, dsps=used_dsps, dsps_available=board.dsps,
                      luts=luts, luts_available=board.luts, ffs=ffs, ffs_available=board.ffs,
                      logic_memory_bits=logic_bits, weights=geo.weights,
                      spram_blocks=spram_blocks,
                      spram_blocks_available=family.spram_blocks_available(board))
    unit = family.bram_unit
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
    est.luts, problem = family.logic_check(luts, ffs, board)
    if problem:
        est.problems.append(problem)
    problem = family.lutram_check(logic_bits, board)
    if problem:
        est.problems.append(problem)
    return est


def resolve_options(program, board, choices: Choices | None = None, run=None
                    ) -> tuple[HardwareOptions, FitEstimate]:
    """The gateware options for ``program`` on ``board`` (its family's, ``choices`` over
    them) and their estimate: the one place options are resolved. Banks left open: two per layer, or with ``run`` (a reference
    run on calibration inputs) those :func:`hw.options.needed_banks` calls for. With the
    weights' home left open, on a board with SPRAM: uploaded weights when the bitstream's
    block RAM would not hold them and SPRAM does."""
    choices = choices or Choices()
    options = board.family.options_for(program, choices)
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
    return board.family.predicted_fmax(program.pes, board)


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
    program: object               # core.ir.SparseProgram
    options: HardwareOptions
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
                             "fifo_depth", "flash_boot")},
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


def plan(compile_for, board, *, calibration_run, pes: int | None = None,
         grid: str | None = None, choices: Choices | None = None, candidates=CANDIDATE_PES
         ) -> Plan:
    """The design ``build`` makes for ``board``. ``compile_for(pes, grid)`` compiles the
    program; ``calibration_run(program)`` is a reference run of it on calibration inputs
    (:func:`compiler.reference.run`: the caller's, as boards stand below the compiler). With
    ``pes`` (or ``grid``) given: that one, or a :class:`FitError` saying what would fit.
    Without: the most inferences per second among the candidates that fit and are predicted
    to meet the board's clock (failing that, the fastest that fits)."""
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


def check_fit(program, board, est=None, *, compile_for=None, choices=None,
              calibration_run=None) -> FitEstimate:
    """Raise :class:`FitError` with the numbers and what would fit when ``program`` does not
    fit ``board``; returns the estimate otherwise. With ``compile_for`` (and the
    ``calibration_run`` that :func:`plan` takes) the advice names a PE count that fits."""
    if compile_for is not None and calibration_run is None:
        raise TypeError("check_fit: compile_for needs calibration_run (see plan)")
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
    out = []
    for other in BOARDS.values():
        if other.name == board.name or other.luts <= board.luts:
            continue
        if resolve_options(program, other, choices)[1].fits:
            out.append(other.name)
    return out[:3]
