"""``build``: model file -> quantized, encoded program -> Verilog (and, per board, more).

FINN-style ordered build steps over one state object; the configuration is a dataclass saved
as JSON in the build folder, each step is timed, and the reports land beside the Verilog.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from boards import Board, get_board, with_clock

from . import reference
from .arrays import load_features
from .datasets import DIGITS_FEATURES, DIGITS_IMAGE, digits_split
from .errors import InputError
from .frontend import first_layer, load_module, to_ir
from .ir import Model, SparseProgram
from .passes.encode import encode
from .passes.quantize import quantize
from .report import build_report, write_report
from .serialize import save_program

__all__ = ["BuildConfig", "BuildState", "BuildResult", "STEPS", "build", "compile_model",
           "encode_calibrated"]


def encode_calibrated(quantized: Model, calibration: np.ndarray, pes: int, *,
                      index_bits: int | None = None, dense: bool = False) -> SparseProgram:
    """Encode ``quantized`` for ``pes`` PEs, balancing them on the activity that
    ``calibration`` (float [N, in]) produces in every layer."""
    x = reference.quantize_input(calibration, quantized.input_scale)
    _, acts = reference.run_dense(quantized, x[:256], return_activations=True)
    return encode(quantized, pes, index_bits=index_bits, activity=[a != 0 for a in acts[:-1]],
                  skip_zero_activations=not dense)


def compile_model(model: Model, calibration: np.ndarray, pes: int, *,
                  index_bits: int | None = None, dense: bool = False) -> SparseProgram:
    """Float IR -> quantized, encoded program (the library path of ``build`` without files)."""
    return encode_calibrated(quantize(model, calibration), calibration, pes,
                             index_bits=index_bits, dense=dense)


@dataclass
class BuildConfig:
    """Everything ``build`` needs; saved as ``build_config.json``."""
    model: str
    board: str
    pes: int = 8
    calibration: str | None = None       # .npy, float32 [N, in_features] or [N, C, H, W]
    out: str | None = None               # default build/<model>-<board>
    trust_pickle: bool = False
    index_bits: int | None = None        # None: narrowest with <= 1 % padding
    queue_depth: int | None = None       # None: never stalls, at most 16
    dense: bool = False                  # store every weight, skip nothing (baseline)
    memory: str | None = None            # "block" / "distributed"; None: by board (hw.options)
    pipeline: str | None = None          # "short" / "deep"; None: by board
    weights: str | None = None           # "bitstream" / "uploaded"; None: by the fit check
    # boards (boards/): the clock target (None: the board's), UART rate, timing policy
    clock_mhz: float | None = None
    baud: int = 115200
    allow_timing_failure: bool = False
    seed: int = 1                        # nextpnr placement seed
    bitstream: bool = True               # False: fit check and Verilog only

    def validate(self) -> "BuildConfig":
        if self.pes != "auto" and (not isinstance(self.pes, int) or self.pes < 1):
            raise InputError(f"--pes must be a whole number >= 1 or auto, not {self.pes!r}")
        if self.clock_mhz is not None and not 1 <= self.clock_mhz <= 1000:
            raise InputError(f"--clock-mhz must be in 1..1000, not {self.clock_mhz}")
        if not isinstance(self.baud, int) or self.baud < 300:
            raise InputError(f"--baud must be a whole number >= 300, not {self.baud!r}")
        if not isinstance(self.seed, int) or self.seed < 1:
            raise InputError(f"--seed must be a whole number >= 1, not {self.seed!r}")
        if self.index_bits is not None and not 1 <= self.index_bits <= 16:
            raise InputError(f"--index-bits must be in 1..16, not {self.index_bits}")
        if self.queue_depth is not None and self.queue_depth < 2:
            raise InputError(f"--queue-depth must be at least 2, not {self.queue_depth}")
        from hw.options import MEMORY_STYLES, PIPELINES
        if self.memory not in (None, *MEMORY_STYLES):
            raise InputError(f"--memory must be one of {', '.join(MEMORY_STYLES)}, not "
                             f"{self.memory!r}")
        if self.pipeline not in (None, *PIPELINES):
            raise InputError(f"--pipeline must be one of {', '.join(PIPELINES)}, not "
                             f"{self.pipeline!r}")
        from hw.options import WEIGHT_STORES
        if self.weights not in (None, *WEIGHT_STORES):
            raise InputError(f"--weights must be one of {', '.join(WEIGHT_STORES)}, not "
                             f"{self.weights!r}")
        get_board(self.board)
        return self

    @property
    def choices(self):
        from hw.options import Choices
        return Choices(queue_depth=self.queue_depth, memory=self.memory, pipeline=self.pipeline,
                       weights=self.weights)

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
    config: BuildConfig
    out_dir: Path
    board: Board
    module: object = None                  # the torch module as loaded
    input_shape: tuple | None = None       # (C, H, W) for a model starting with Conv2d
    model: Model | None = None
    calibration: np.ndarray | None = None  # float [N, in_features] (flattened)
    quantized: Model | None = None
    program: SparseProgram | None = None
    options: object = None                 # hw.options.HardwareOptions for this board
    reference_run: reference.RunResult | None = None
    verilog: Path | None = None
    board_results: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
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
    s.quantized = quantize(s.model, s.calibration)


def step_encode(s: BuildState):
    from hw.options import options_for
    s.program = encode_calibrated(s.quantized, s.calibration, s.config.pes,
                                  index_bits=s.config.index_bits, dense=s.config.dense)
    s.options = options_for(s.program, s.board.family, s.config.choices)
    save_program(s.program, s.out_dir / "program.npz")


def step_check_reference(s: BuildState):
    """The memory images must compute exactly what the quantized weights define."""
    x = reference.quantize_input(s.calibration, s.quantized.input_scale)
    s.reference_run = reference.run(s.program, x)
    dense = reference.run_dense(s.quantized, x)
    if not np.array_equal(s.reference_run.outputs, dense):
        raise AssertionError("encoder bug: memory images disagree with the quantized model")


def step_verilog(s: BuildState):
    from hw.verilog import generate_verilog
    s.verilog = generate_verilog(s.program, s.out_dir / "sparsemac_top.v", s.options)


def step_fit(s: BuildState):
    """Will it fit the board? Seconds, before any synthesis; picks P for ``--pes auto``."""
    from boards.fit import check_fit, largest_fitting_pes

    def compile_for(pes):
        return encode_calibrated(s.quantized, s.calibration, pes,
                                 index_bits=s.config.index_bits, dense=s.config.dense)

    if s.config.pes == "auto":
        pes, est = largest_fitting_pes(compile_for, s.board, choices=s.config.choices)
        if pes is None:
            check_fit(compile_for(1), s.board, choices=s.config.choices)
        s.config.pes = pes
    else:
        est = check_fit(compile_for(s.config.pes), s.board, choices=s.config.choices,
                        compile_for=compile_for)
    # the weights' home, when left open, is the fit check's answer (SPRAM: uploaded)
    s.config.weights = est.weights
    (s.out_dir / "build_config.json").write_text(s.config.to_json())
    s.board_results["fit"] = est.as_dict()


def step_board(s: BuildState):
    """Board products: a bitstream with Fmax and utilisation from nextpnr (iCE40, ECP5), or
    Vivado / openXC7 plans and a yosys utilisation estimate (7-series)."""
    from boards.flow import build_bitstream, check_timing, xilinx_products

    fit = s.board_results.get("fit")
    s.board_results = {"bitstream": None, "fmax_mhz": None, "resources": None, "fit": fit}
    if not s.config.bitstream:
        return
    if s.board.family == "xc7":
        results = xilinx_products(s.program, s.board, s.out_dir, baud=s.config.baud,
                                  choices=s.config.choices)
    else:
        results = build_bitstream(s.program, s.board, s.out_dir, baud=s.config.baud,
                                  choices=s.config.choices, seed=s.config.seed)
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
    ("fit", step_fit),
    ("encode", step_encode),
    ("check_reference", step_check_reference),
    ("verilog", step_verilog),
    ("board", step_board),
    ("report", step_report),
]


def build(config: BuildConfig, *, on_step: Callable[[str], None] | None = None) -> BuildResult:
    config.validate()
    out_dir = config.out_dir
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create build folder {out_dir}: {e.strerror}; choose another "
                         f"--out") from None
    board = get_board(config.board)
    if config.clock_mhz is not None:
        board = with_clock(board, config.clock_mhz)
    state = BuildState(config=config, out_dir=out_dir, board=board)
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
