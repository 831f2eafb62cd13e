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

from boards import Board, get_board

from . import reference
from .arrays import load_features
from .datasets import DIGITS_FEATURES, digits_split
from .errors import InputError
from .frontend import load_model
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
    calibration: str | None = None       # .npy, float32 [N, in_features]; None: digits
    out: str | None = None               # default build/<model>-<board>
    trust_pickle: bool = False
    index_bits: int | None = None        # None: narrowest with <= 1 % padding
    queue_depth: int | None = None       # None: never stalls, at most 16
    dense: bool = False                  # store every weight, skip nothing (baseline)

    def validate(self) -> "BuildConfig":
        if not isinstance(self.pes, int) or self.pes < 1:
            raise InputError(f"--pes must be a whole number >= 1, not {self.pes!r}")
        if self.index_bits is not None and not 1 <= self.index_bits <= 16:
            raise InputError(f"--index-bits must be in 1..16, not {self.index_bits}")
        if self.queue_depth is not None and self.queue_depth < 2:
            raise InputError(f"--queue-depth must be at least 2, not {self.queue_depth}")
        get_board(self.board)
        return self

    @property
    def out_dir(self) -> Path:
        if self.out:
            return Path(self.out)
        return Path("build") / f"{Path(self.model).stem}-{self.board}"

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)


@dataclass
class BuildState:
    config: BuildConfig
    out_dir: Path
    board: Board
    model: Model | None = None
    calibration: np.ndarray | None = None
    quantized: Model | None = None
    program: SparseProgram | None = None
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
    s.model = load_model(s.config.model, trust_pickle=s.config.trust_pickle)


def step_calibration(s: BuildState):
    features = s.model.in_features
    if s.config.calibration is None:
        if features != DIGITS_FEATURES:
            raise InputError(
                f"no --calibration given and the bundled digits data has {DIGITS_FEATURES} "
                f"features but the model takes {features}: pass --calibration X.npy, float32 "
                f"of shape [N, {features}]")
        s.calibration = digits_split()[0]
    else:
        s.calibration = load_features(s.config.calibration, features, "calibration")


def step_quantize(s: BuildState):
    s.quantized = quantize(s.model, s.calibration)


def step_encode(s: BuildState):
    s.program = encode_calibrated(s.quantized, s.calibration, s.config.pes,
                                  index_bits=s.config.index_bits, dense=s.config.dense)
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
    s.verilog = generate_verilog(s.program, s.out_dir / "sparsemac_top.v",
                                 queue_depth=s.config.queue_depth)


def step_board(s: BuildState):
    """Board-specific products (bitstreams, utilisation); Verilog alone for now."""
    s.board_results = {"bitstream": None, "fmax_mhz": None, "resources": None}


def step_report(s: BuildState):
    s.report = build_report(s)
    write_report(s.out_dir, s.report)


#: The ordered build steps.
STEPS: list[tuple[str, Callable[[BuildState], None]]] = [
    ("load", step_load),
    ("calibration", step_calibration),
    ("quantize", step_quantize),
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
    state = BuildState(config=config, out_dir=out_dir, board=get_board(config.board))
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
