"""``simulate``: run a build folder's Verilog in cocotb on Icarus or Verilator and compare every
output with the reference model, bit for bit."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.buildfolder import build_folder, read_json_object
from core.errors import InputError, SparsemacError
from hw.images import weight_image
from hw.verilog import TOPLEVEL
from sim.runner import SIMULATORS, SimulationFailed, run_cocotb

from . import reference
from .arrays import load_features, load_labels
from .datasets import digits_split
from .passes.quantize import float_forward
from .reference import dense_cycles
from .report import record_simulation
from .serialize import load_program

__all__ = ["simulate", "run_rtl", "RTLMismatch", "SimulationResult", "DEFAULT_LIMIT"]

#: Inputs simulated when none are given: the first ones of the calibration set.
DEFAULT_LIMIT = 100


@dataclass
class SimulationResult:
    hw: np.ndarray            # int [N, out]: what the RTL streamed out
    reference: np.ndarray     # int [N, out]
    dequantized: np.ndarray   # float [N, out]
    cycles: np.ndarray        # int [N]: each inference's latency (first input beat to done)
    intervals: np.ndarray     # int [N]: cycles from the inference before's completion to its own
    ideal: np.ndarray         # int [N]
    outputs_path: Path
    report: dict
    accuracy: dict | None = None   # with labels: RTL's and float PyTorch's, on the same inputs

    @property
    def cycles_per_inference(self) -> float:
        """The array's throughput in cycles: all inferences, streamed, over their count."""
        return float(self.intervals.sum()) / len(self.intervals)


def simulate(out_dir, *, simulator: str = "icarus", inputs=None, outputs=None,
             waves: bool = False, limit: int | None = None, labels=None) -> SimulationResult:
    """Simulate build folder ``out_dir``; ``inputs``: .npy of real-valued inputs [N, in]
    (default: the first ``DEFAULT_LIMIT`` of the build's calibration set); ``labels``: .npy of
    their classes, for the RTL's accuracy beside the float model's. Raises ``RTLMismatch`` on
    any mismatch, after writing the outputs file."""
    if simulator not in SIMULATORS:
        raise InputError(f"unknown simulator {simulator!r}; choose {' or '.join(SIMULATORS)}")
    if limit is not None and limit < 1:
        raise InputError(f"--limit must be at least 1, not {limit}")
    out_dir, report = build_folder(out_dir)
    program = load_program(out_dir / "program.npz")
    config = read_json_object(out_dir, "build_config.json", "a build configuration")
    plan = report.get("plan") or {}
    shape = program.model.input_shape
    shape = shape if len(shape) > 1 else program.model.in_features
    if inputs is None:
        if config.get("calibration"):
            x = load_features(config["calibration"], shape, "calibration")
        else:
            x = digits_split()[0].reshape(-1, *program.model.input_shape)
        if limit is None:
            limit = DEFAULT_LIMIT
    else:
        x = load_features(inputs, shape, "input")
    x = x.reshape(len(x), -1)
    y = None if labels is None else load_labels(labels, len(x), program.model.out_features)
    if limit is not None:
        x = x[:limit]
        y = None if y is None else y[:limit]
    xq = reference.quantize_input(x, program.model.input_scale)
    expected = reference.run(program, xq)

    work = out_dir / f"sim_{simulator}"
    outputs_path = Path(outputs) if outputs else work / "outputs.npz"
    image = None
    if plan.get("options", {}).get("weights") == "uploaded":
        image = weight_image(program)
    try:
        hw, cycles, intervals = run_rtl(
            out_dir / "sparsemac_top.v", xq, expected.outputs, lanes=program.grid.cols,
            simulator=simulator, work_dir=work, waves=waves, image=image,
            timeout_cycles=20_000 + 2 * dense_cycles(program.model, program.pes))
        failure = None
    except RTLMismatch as e:
        hw, cycles, intervals, failure = e.hw, e.cycles, e.intervals, e
    dequantized = reference.dequantize(hw, program.model.output_scale).reshape(
        len(hw), *program.model.output_shape)
    np.savez(outputs_path, hw=hw, reference=expected.outputs, dequantized=dequantized,
             cycles=cycles, intervals=intervals)
    if failure is not None:
        raise failure
    report = record_simulation(out_dir, report, simulator=simulator, cycles=cycles,
                               intervals=intervals, ideal=expected.ideal_cycles,
                               outputs=str(outputs_path),
                               accuracy=None if y is None else _accuracy(program, x, hw, y))
    return SimulationResult(hw=hw, reference=expected.outputs, dequantized=dequantized,
                            cycles=cycles, intervals=intervals, ideal=expected.ideal_cycles,
                            outputs_path=outputs_path, report=report,
                            accuracy=report.get("accuracy"))


def _accuracy(program, x: np.ndarray, hw: np.ndarray, y: np.ndarray) -> dict:
    """Top-1 accuracy of the RTL's outputs and of the float model (as PyTorch computes it) on
    the same labelled inputs."""
    float_out = float_forward(program.model, x)[-1]
    return {"inputs": int(len(y)),
            "rtl": round(float((hw.reshape(len(hw), -1).argmax(1) == y).mean()), 6),
            "float": round(float((float_out.argmax(1) == y).mean()), 6)}


class RTLMismatch(SparsemacError):
    """The RTL's outputs differ from the reference; carries what the RTL produced."""

    def __init__(self, message, hw, cycles, intervals):
        super().__init__(message)
        self.hw, self.cycles, self.intervals = hw, cycles, intervals


def run_rtl(verilog, xq: np.ndarray, expected: np.ndarray, *, lanes: int, simulator: str,
            work_dir, waves: bool = False, image: bytes | None = None,
            timeout_cycles: int = 20_000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stream integer inputs ``xq`` [N, in] through ``verilog`` (whose input takes ``lanes``
    values a beat) in cocotb, back to back, and return the RTL's ``(outputs [N, out], cycles
    [N], intervals [N])``: each inference's latency and the cycles since the one before
    completed. Raises :class:`RTLMismatch` unless the outputs equal ``expected`` exactly
    (checked in the bench and again here). A design built with uploaded weights gets
    ``image`` (:func:`hw.images.weight_image`) on its weights stream first. No output for
    ``timeout_cycles`` fails the run as a hang."""

    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    bench = work / "bench.npz"
    results = work / "results.npz"
    results.unlink(missing_ok=True)
    extra = {"image": np.frombuffer(image, np.uint8)} if image else {}
    np.savez(bench, inputs=np.asarray(xq, dtype=np.int64), lanes=lanes,
             expected=np.asarray(expected, dtype=np.int64), timeout_cycles=timeout_cycles,
             **extra)
    failure = None
    try:
        run_cocotb(verilog=Path(verilog), toplevel=TOPLEVEL, simulator=simulator,
                   build_dir=work, test_module="sim.bench", waves=waves,
                   extra_env={"SPARSEMAC_BENCH": str(bench.resolve()),
                              "SPARSEMAC_RESULTS": str(results.resolve())})
    except SimulationFailed as e:
        failure = e
    if not results.is_file():
        raise failure or SimulationFailed(f"the bench wrote no results; see {work / 'sim.log'}")
    with np.load(results, allow_pickle=False) as f:
        hw, cycles, intervals = f["hw"], f["cycles"], f["intervals"]
    if failure is None and not np.array_equal(hw, expected):
        n, o = np.argwhere(hw != expected)[0]
        failure = SimulationFailed(f"RTL differs from the reference: inference {n}, output "
                                   f"{o}: RTL {hw[n, o]}, reference {expected[n, o]}")
    if failure is not None:
        raise RTLMismatch(str(failure), hw, cycles, intervals)
    return hw, cycles, intervals
