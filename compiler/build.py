"""``build``: model file -> quantized, encoded program -> Verilog (and, per board, more).

FINN-style ordered build steps over one state object; the configuration is a dataclass saved
as JSON in the build folder (what the user asked for, never rewritten), each step is timed,
and the reports land beside the Verilog. Each step hands its result on: ``plan`` chooses the
PEs, the grid and the gateware options once and compiles the program for them; every later
step uses that program and those options.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from boards import Board, flash_boards, get_board, with_clock
from boards.fit import plan
from boards.flow import board_products, check_timing
from boards.link.flashimage import write_flash_image
from core.errors import FitError, InputError
from core.ir import Grid, IRError, Model, SparseProgram
from hw.options import Choices, HardwareOptions
from hw.verilog import generate_verilog

from . import reference
from .arrays import load_features
from .datasets import DIGITS_FEATURES, DIGITS_IMAGE, digits_split
from .frontend import first_layer, load_module, to_ir
from .passes.codebook import WEIGHT_BITS_MAX
from .passes.imported import agreement, quantize_imported
from .passes.quantize import quantization_warnings, quantize
from .compiling import compile_model, encode_calibrated
from .prune.fit import sparsity_hint
from .report import build_report, write_report
from .serialize import save_program

__all__ = ["BuildConfig", "BuildState", "BuildResult", "STEPS", "build", "compile_model",
           "encode_calibrated", "MAX_PES"]

#: The most PEs ``build`` compiles for: sixteen times ``--pes auto``'s largest candidate, far
#: beyond any supported board (the fit check names what fits); larger counts would spend
#: minutes encoding before the fit check could refuse them.
MAX_PES = 1024


@dataclass
class BuildConfig:
    """Everything ``build`` needs; saved as ``build_config.json``. None: decided by the build
    (the board's family, the fit check); ``report.json`` says what was chosen and why."""
    model: str
    board: str
    pes: int | str | None = None         # None or "auto": the fastest that fits the board
    grid: str | None = None              # "RxC"; None: the squarest with R >= C
    calibration: str | None = None       # .npy, float32 [N, in_features] or [N, C, H, W]
    out: str | None = None               # default build/<model>-<board>
    trust_pickle: bool = False
    index_bits: int | None = None        # None: narrowest with <= 1 % padding
    weight_bits: int | str = "auto"      # weight sharing: "auto", "off" or a codebook index width
    fifo_depth: int | None = None        # each PE's activation FIFO (hw.options)
    banks: int | list | None = None      # accumulator banks, all layers or per layer (hw.options)
    dense: bool = False                  # store every weight, skip nothing (baseline)
    requantize: bool = False             # QONNX/QDQ: calibrate instead of the model's scales
    memory: str | None = None            # "block" / "distributed"; None: by board (hw.options)
    accumulators: str | None = None      # "distributed" / "block"; None: by board
    pointers: str | None = None          # "csc" / "counted"; None: by board
    pipeline: str | None = None          # "short" / "deep"; None: by board
    weights: str | None = None           # "bitstream" / "uploaded"; None: by the fit check
    boot_from_flash: bool = False        # uploaded weights, also read from the board's SPI
                                         # flash at power-up (weights_flash.bin)
    # boards (boards/): the clock target (None: the board's), UART rate, timing policy
    clock_mhz: float | None = None
    baud: int = 115200
    allow_timing_failure: bool = False
    seed: int = 1                        # nextpnr placement seed
    bitstream: bool = True               # False: fit check and Verilog only
    synth_estimate: bool = False         # boards without a place-and-route tool here (7-series):
                                         # Yosys's synth_xilinx utilisation (minutes) beside the
                                         # fit check's estimate

    def validate(self) -> "BuildConfig":
        """Refuse a configuration that cannot build, in one line naming the flag. The gateware
        options are checked where they are defined (:class:`hw.options.Choices`)."""
        if self.pes not in (None, "auto") and (not isinstance(self.pes, int) or self.pes < 1):
            raise InputError(f"--pes must be a whole number >= 1 or auto, not {self.pes!r}")
        if isinstance(self.pes, int) and self.pes > MAX_PES:
            raise InputError(f"--pes {self.pes} is above the maximum of {MAX_PES} PEs; give "
                             f"fewer, or --pes auto for the most that fit the board")
        if self.grid is not None:
            try:
                grid = Grid.parse(self.grid)
            except IRError as e:
                raise InputError(f"--grid: {e}") from None
            if grid.pes > MAX_PES:
                raise InputError(f"--grid {self.grid} has {grid.pes} PEs, above the maximum of "
                                 f"{MAX_PES}; give a smaller grid")
            if isinstance(self.pes, int) and grid.pes != self.pes:
                raise InputError(f"--grid {self.grid} has {grid.pes} PEs but --pes is "
                                 f"{self.pes}; give one of them")
        if self.clock_mhz is not None and not 1 <= self.clock_mhz <= 1000:
            raise InputError(f"--clock-mhz must be in 1..1000, not {self.clock_mhz}")
        if not isinstance(self.baud, int) or self.baud < 300:
            raise InputError(f"--baud must be a whole number >= 300, not {self.baud!r}")
        if not isinstance(self.seed, int) or self.seed < 1:
            raise InputError(f"--seed must be a whole number >= 1, not {self.seed!r}")
        if self.index_bits is not None and not 1 <= self.index_bits <= 16:
            raise InputError(f"--index-bits must be in 1..16, not {self.index_bits}")
        if self.weight_bits not in ("auto", "off") and not (
                isinstance(self.weight_bits, int) and 1 <= self.weight_bits <= WEIGHT_BITS_MAX):
            raise InputError(f"--weight-bits must be auto, off or in 1..{WEIGHT_BITS_MAX}, not "
                             f"{self.weight_bits!r}")
        self.choices                     # hw.options checks the gateware options
        board = get_board(self.board)
        if self.boot_from_flash and board.flash_offset is None:
            raise InputError(f"--boot-from-flash: board {board.name} has no SPI flash that "
                             f"sparsemac knows how to read the weights from (boards with one: "
                             f"{', '.join(flash_boards())}); upload them with `run` instead")
        return self

    @property
    def choices(self) -> Choices:
        """The gateware options the user fixed, checked (:class:`hw.options.Choices`)."""
        return Choices(memory=self.memory, pipeline=self.pipeline, weights=self.weights,
                       banks=self.banks, fifo_depth=self.fifo_depth,
                       accumulators=self.accumulators, pointers=self.pointers,
                       flash_boot=self.boot_from_flash or None)

    @property
    def requested_pes(self) -> int | None:
        """The PE count the user fixed (by --pes or --grid); None: the build chooses."""
        if isinstance(self.pes, int):
            return self.pes
        return Grid.parse(self.grid).pes if self.grid else None

    @property
    def out_dir(self) -> Path:
        if self.out:
            return Path(self.out)
        board = self.board.rpartition(":")[2] if ":" in self.board else self.board
        return Path("build") / f"{Path(self.model).stem}-{board}"

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)


@dataclass
class BuildState:
    """What the steps pass forward. The configuration is what the user asked and stays so;
    ``board`` and ``choices`` are resolved from it once, before the first step; ``plan``
    resolves the program and its options once, and every later step reads them here."""
    config: BuildConfig
    out_dir: Path
    board: Board                           # the configured board at the configured clock
    choices: Choices                       # the gateware options the user fixed
    module: object = None                  # the torch module as loaded
    input_shape: tuple | None = None       # (C, H, W) for a model starting with Conv2d
    model: Model | None = None
    calibration: np.ndarray | None = None  # float [N, in_features] (flattened)
    quantized: Model | None = None
    plan: object = None                    # boards.fit.Plan: PEs, grid, options, estimate
    program: SparseProgram | None = None   # the plan's
    options: HardwareOptions | None = None  # the plan's: resolved once, for every later step
    reference_run: reference.RunResult | None = None
    verilog: Path | None = None
    board_results: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)   # one line each, in the report and printed
    quantization: dict | None = None       # where the scales came from, and the agreement
    report: dict | None = None


@dataclass
class BuildResult:
    out_dir: Path
    program: SparseProgram
    report: dict


def step_load(s: BuildState):
    s.module = load_module(s.config.model, trust_pickle=s.config.trust_pickle)


def step_calibration(s: BuildState):
    """Calibration inputs; for a model that starts with a convolution they also fix the input
    height and width."""
    first = first_layer(s.module)
    conv = first.kind == "conv"
    takes = first.weight.shape[1]
    if s.config.calibration is not None:
        x = load_features(s.config.calibration, (takes, None, None) if conv else takes,
                          "calibration")
    elif conv and takes == 1:
        x = digits_split()[0].reshape(-1, *DIGITS_IMAGE)
    elif not conv and takes == DIGITS_FEATURES:
        x = digits_split()[0]
    else:
        want = f"[N, {takes}, H, W]" if conv else f"[N, {takes}]"
        raise InputError(f"no --calibration given and the bundled digits data (64 pixels, "
                         f"1 channel) does not fit a model taking {want}: pass --calibration "
                         f"X.npy, float32 of shape {want}")
    s.input_shape = tuple(x.shape[1:]) if conv else None
    s.calibration = x.reshape(len(x), -1)


def step_frontend(s: BuildState):
    s.model = to_ir(s.module, Path(s.config.model).stem, input_shape=s.input_shape)


def step_quantize(s: BuildState):
    """Our calibration, or a QONNX / QDQ graph's own quantizers (unless ``--requantize``),
    checked in integers against the graph's fake-quant outputs on the calibration inputs."""
    graph = getattr(s.module, "quantization", None)
    sharing = s.config.weight_bits != "off"      # one scale a weight-shared layer
    if graph is None or not graph.present:
        s.quantized = quantize(s.model, s.calibration, weight_sharing=sharing)
        s.warnings += quantization_warnings(s.model, s.quantized, s.calibration)
        s.quantization = {"source": "calibration"}
        return
    if s.config.requantize:
        s.quantized = quantize(s.model, s.calibration, weight_sharing=sharing)
        s.warnings += quantization_warnings(s.model, s.quantized, s.calibration)
        s.quantization = {"source": "calibration (--requantize: the model's scales ignored)"}
        return
    s.quantized, notes = quantize_imported(s.model, graph, s.calibration)
    s.warnings += notes
    agree = agreement(s.module, s.quantized, s.calibration[:256])
    s.quantization = {"source": "model", "agreement": agree}
    if agree["equal_outputs"] < 1:
        s.warnings.append(f"the integer outputs equal the model's own (fake-quant) ones in "
                          f"{100 * agree['equal_outputs']:.2f} % of outputs on "
                          f"{agree['inputs']} calibration inputs (at most "
                          f"{agree['max_difference']} steps apart)")


def step_plan(s: BuildState):
    """PEs, grid and gateware options: the user's, or the fastest design that fits the board
    and is predicted to meet its clock (boards/fit.py). Seconds, before any synthesis; the
    program compiled for the plan is handed on."""
    config = s.config
    layers = len(s.quantized.layers)
    if isinstance(config.banks, (list, tuple)) and len(config.banks) != layers:
        raise InputError(f"--banks gives {len(config.banks)} layers' banks but the model has "
                         f"{layers} layers: give one number for all, or {layers}")

    def compile_for(pes: int, grid=None) -> SparseProgram:
        return encode_calibrated(s.quantized, s.calibration, pes, grid=grid,
                                 index_bits=config.index_bits, dense=config.dense,
                                 weight_bits=config.weight_bits)

    x = reference.quantize_input(s.calibration, s.quantized.input_scale)[:256]
    try:
        s.plan = plan(compile_for, s.board, pes=config.requested_pes, grid=config.grid,
                      choices=s.choices, calibration_run=lambda program: reference.run(program, x))
    except FitError as e:
        hint = None if config.dense else _sparsity_hint(s, config.requested_pes or 1)
        if hint is None:
            raise
        raise FitError(f"{str(e).rstrip('.')}. {hint}") from None
    s.program, s.options = s.plan.program, s.plan.options
    save_program(s.program, s.out_dir / "program.npz")
    s.board_results["fit"] = s.plan.estimate.as_dict()
    s.board_results["plan"] = s.plan.as_dict()


def _sparsity_hint(s: BuildState, pes: int) -> str | None:
    """The sparsity at which the model would fit at ``pes`` PEs, for the fit error (None: it
    is no torch model ``prune`` can change)."""
    return sparsity_hint(s.module, s.calibration, s.board, pes, model_path=s.config.model,
                         board_name=s.config.board, input_shape=s.input_shape,
                         choices=s.choices, index_bits=s.config.index_bits)


def step_check_reference(s: BuildState):
    """The memory images must compute exactly what the quantized weights define."""
    x = reference.quantize_input(s.calibration, s.quantized.input_scale)
    s.reference_run = reference.run(s.program, x)
    dense = reference.run_dense(s.quantized, x)
    if not np.array_equal(s.reference_run.outputs, dense):
        raise AssertionError("encoder bug: memory images disagree with the quantized model")


def step_verilog(s: BuildState):
    s.verilog = generate_verilog(s.program, s.out_dir / "sparsemac_top.v", s.options)
    if s.options.flash_boot:            # what `flash` writes beside the bitstream
        path = write_flash_image(s.program, s.options, s.out_dir)
        s.board_results["weights_flash"] = {"file": str(path), "bytes": path.stat().st_size,
                                            "offset": s.board.flash_offset}


def step_board(s: BuildState):
    """Board products: a bitstream with Fmax and utilisation from nextpnr (iCE40, ECP5), or
    Vivado / openXC7 plans and a yosys utilisation estimate (7-series)."""
    s.board_results.update({"bitstream": None, "fmax_mhz": None, "resources": None})
    if not s.config.bitstream:
        return
    results = board_products(s.program, s.board, s.out_dir, options=s.options,
                             baud=s.config.baud, seed=s.config.seed,
                             synth_estimate=s.config.synth_estimate)
    s.board_results.update(results)
    if results.get("fmax_mhz") is not None:
        try:
            check_timing(s.board_results, s.board.clock_mhz,
                         allow_failure=s.config.allow_timing_failure)
        except Exception:
            step_report(s)          # the report of a failed build still says why
            raise


def step_report(s: BuildState):
    s.report = build_report(s)
    write_report(s.out_dir, s.report)


#: The ordered build steps.
STEPS: list[tuple[str, Callable[[BuildState], None]]] = [
    ("load", step_load),
    ("calibration", step_calibration),
    ("frontend", step_frontend),
    ("quantize", step_quantize),
    ("plan", step_plan),
    ("check_reference", step_check_reference),
    ("verilog", step_verilog),
    ("board", step_board),
    ("report", step_report),
]


def build(config: BuildConfig, *, on_step: Callable[[str], None] | None = None) -> BuildResult:
    config.validate()
    out_dir = config.out_dir
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out {out_dir} is a file, not a folder; choose another --out")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create build folder {out_dir}: {e.strerror}; choose another "
                         f"--out") from None
    if not out_dir.is_dir():
        raise InputError(f"--out {out_dir} is a file, not a folder; choose another --out")
    board = get_board(config.board)
    if config.clock_mhz is not None:
        board = with_clock(board, config.clock_mhz)
    state = BuildState(config=config, out_dir=out_dir, board=board,
                       choices=config.choices)
    (out_dir / "build_config.json").write_text(config.to_json())
    for name, step in STEPS:
        if on_step is not None:
            on_step(name)
        started = time.perf_counter()
        step(state)
        state.timings[name] = round(time.perf_counter() - started, 3)
        if state.report is not None:
            state.report["steps"] = state.timings
    write_report(out_dir, state.report)
    return BuildResult(out_dir=out_dir, program=state.program, report=state.report)
