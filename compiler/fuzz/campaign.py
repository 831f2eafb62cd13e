"""The fuzz campaign runner: build every generated model (Verilog only, no bitstream), simulate
its cases on Verilator or Icarus, and compare.

Each model's cases are checked twice: the RTL's integer outputs against the reference model
(:func:`compiler.reference.run`) with ``np.array_equal`` (any difference is a *mismatch*), and
the dequantized outputs against float PyTorch (correlation and argmax agreement, reported, not
judged: quantization is lossy). A build the compiler refuses with a user-facing error (a fit
or quantization limit) is counted as refused; an internal error, a mismatch or a simulator
failure is a failure and is written out as a self-contained reproducer in
``OUT/failures/model_NNNNN/`` (model, calibration, inputs, options, ``command.sh``).
"""

from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from core.errors import SparsemacError, ToolError
from sim.runner import VERILATOR_OPT_ENV

from .. import reference
from ..build import BuildConfig, build
from ..serialize import load_program
from ..simulate import RTLMismatch, simulate
from .generate import FuzzModel, generate_model

__all__ = ["CampaignResult", "run_campaign", "run_model", "expected_outputs", "BOARD",
           "CASES_PER_MODEL", "IN_RANGE_KINDS"]

#: The board every model is built for: the largest supported one, so that the fit check
#: refuses as little as possible (no bitstream is made).
BOARD = "ulx3s_85f"
#: Cases (input vectors) simulated per model: one build amortised over all of them.
CASES_PER_MODEL = 50
#: Input kinds within the calibration range, on which float agreement is measured.
IN_RANGE_KINDS = ("random", "sparse", "zero")


def expected_outputs(program, xq: np.ndarray) -> np.ndarray:
    """What the RTL must stream out for integer inputs ``xq``: the reference model's outputs."""
    return reference.run(program, xq).outputs


@dataclass
class CampaignResult:
    summary: dict
    out_dir: Path

    @property
    def failed(self) -> bool:
        return bool(self.summary["failures"])


def _write_case(model: FuzzModel, folder: Path) -> dict:
    """The model's files: model.pt, calibration.npy, inputs.npy, options.json, command.sh."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(model.module, folder / "model.pt")
    np.save(folder / "calibration.npy", model.calibration)
    np.save(folder / "inputs.npy", model.inputs)
    options = {"board": BOARD, **model.options}
    (folder / "options.json").write_text(json.dumps(
        {"seed": model.seed, "model": model.index, "options": options,
         "input_kinds": model.input_kinds, "features": model.features}, indent=2) + "\n")
    return options


def _command(options: dict, simulator: str) -> str:
    flags = []
    for key, value in options.items():
        flags += [f"--{key.replace('_', '-')}", str(value)]
    build_cmd = ["python", "-m", "compiler", "build", "model.pt", *flags,
                 "--calibration", "calibration.npy", "--no-bitstream", "--out", "build"]
    sim_cmd = ["python", "-m", "compiler", "simulate", "build", "--simulator", simulator,
               "--inputs", "inputs.npy"]
    return " ".join(map(shlex.quote, build_cmd)) + "\n" + " ".join(map(shlex.quote, sim_cmd))


def _write_reproducer(model: FuzzModel, out_dir: Path, simulator: str, record: dict) -> Path:
    folder = out_dir / "failures" / model.name
    if folder.exists():
        shutil.rmtree(folder)
    options = _write_case(model, folder)
    commands = _command(options, simulator).replace("python ", '"${PYTHON:-python}" ')
    script = folder / "command.sh"
    script.write_text(
        "#!/bin/sh\n"
        f"# sparsemac fuzz: seed {model.seed}, {model.name}: {record['status']}\n"
        f"# {record.get('error', '').splitlines()[0] if record.get('error') else ''}\n"
        "# Rebuilds and re-simulates this case with the public CLI; run it with sparsemac\n"
        "# installed (or PYTHON=... and PYTHONPATH=<the repository>). A mismatch exits 1.\n"
        "set -e\ncd \"$(dirname \"$0\")\"\n" + commands + "\n")
    script.chmod(0o755)
    (folder / "failure.json").write_text(json.dumps(record, indent=2) + "\n")
    return folder


def _float_agreement(model: FuzzModel, dequantized: np.ndarray) -> dict:
    """Correlation and argmax agreement of the dequantized RTL outputs with float PyTorch, on
    the cases within the calibration range."""
    keep = np.array([k in IN_RANGE_KINDS for k in model.input_kinds])
    with torch.no_grad():
        want = model.module(torch.from_numpy(model.inputs[keep])).double().numpy()
    want = want.reshape(len(want), -1)
    got = np.asarray(dequantized, dtype=np.float64)[keep].reshape(len(want), -1)
    corr = None
    if want.size > 1 and want.std() > 0 and got.std() > 0:
        corr = float(np.corrcoef(want.ravel(), got.ravel())[0, 1])
    argmax = None
    if want.shape[1] > 1 and len(want):
        argmax = float((want.argmax(1) == got.argmax(1)).mean())
    return {"correlation": corr, "argmax_agreement": argmax}


def run_model(seed: int, index: int, cases: int, out_dir: str, simulator: str,
              keep: bool = False, max_size: int | None = None) -> dict:
    """Generate, build, simulate and check model ``index`` of campaign ``seed``; returns its
    record (``status``: ok, refused, mismatch, crash or tool_error). Top-level, so that a
    process pool can run it."""
    started = time.perf_counter()
    out_dir = Path(out_dir)
    model = generate_model(seed, index, cases=cases, max_size=max_size)
    work = out_dir / "models" / model.name
    record = {"model": index, "kind": model.features["kind"], "options": model.options,
              "input_shape": list(model.input_shape), "cases": cases,
              "sizes": model.features.get("sizes", []),
              "sparsities": model.features.get("sparsities", []),
              "outliers": model.features.get("outliers", 0),
              "shared_layers": model.features.get("shared", 0)}
    options = _write_case(model, work)
    try:
        result = build(BuildConfig(model=str(work / "model.pt"), board=BOARD,
                                   calibration=str(work / "calibration.npy"),
                                   out=str(work / "build"), bitstream=False,
                                   **{k: v for k, v in options.items() if k != "board"}))
    except SparsemacError as e:
        record.update(status="refused", error=str(e))
        return _finish(record, model, out_dir, work, simulator, started, keep)
    except Exception as e:     # an internal error of the compiler: a failure
        record.update(status="crash", error=f"{type(e).__name__}: {e}",
                      traceback=traceback.format_exc(limit=8))
        return _finish(record, model, out_dir, work, simulator, started, keep)
    record["warnings"] = result.report.get("warnings", [])
    record["pes"] = result.report["pes"]
    record["weight_bits"] = result.report.get("weight_bits")
    # a model's few dozen inputs run in far less time than Verilator's optimised C++ build
    # takes: build it unoptimised, unless the user chose a level (sim/runner.py)
    saved = os.environ.get(VERILATOR_OPT_ENV)
    os.environ.setdefault(VERILATOR_OPT_ENV, "-O0")
    try:
        sim = simulate(work / "build", simulator=simulator, inputs=str(work / "inputs.npy"))
        hw, dequantized = sim.hw, sim.dequantized
    except RTLMismatch as e:
        record.update(status="mismatch", error=str(e))
        return _finish(record, model, out_dir, work, simulator, started, keep)
    except ToolError as e:
        record.update(status="tool_error", error=str(e))
        return _finish(record, model, out_dir, work, simulator, started, keep)
    finally:
        if saved is None:
            os.environ.pop(VERILATOR_OPT_ENV, None)
    program = load_program(work / "build" / "program.npz")
    x = model.inputs.reshape(len(model.inputs), -1)
    expected = expected_outputs(program, reference.quantize_input(x, program.model.input_scale))
    if not np.array_equal(hw, expected):
        record.update(status="mismatch", error=_difference(hw, expected))
        return _finish(record, model, out_dir, work, simulator, started, keep)
    record.update(status="ok", **_float_agreement(model, dequantized))
    return _finish(record, model, out_dir, work, simulator, started, keep)


def _difference(hw: np.ndarray, expected: np.ndarray) -> str:
    if hw.shape != expected.shape:
        return f"RTL outputs have shape {hw.shape}, the reference's {expected.shape}"
    n, o = np.argwhere(hw != expected)[0]
    return (f"RTL differs from the reference in {int((hw != expected).any(axis=1).sum())} of "
            f"{len(hw)} cases; first: case {n}, output {o}: RTL {hw[n, o]}, reference "
            f"{expected[n, o]}")


def _finish(record, model, out_dir, work, simulator, started, keep) -> dict:
    if record["status"] in ("mismatch", "crash", "tool_error"):
        record["reproducer"] = str(_write_reproducer(model, out_dir, simulator, record))
    if not keep:
        shutil.rmtree(work, ignore_errors=True)
    record["seconds"] = round(time.perf_counter() - started, 2)
    return record


def _stats(values) -> dict | None:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return None
    return {"median": round(float(np.median(values)), 6), "worst": round(float(min(values)), 6),
            "models": len(values)}


def summarize(records: list, *, seed: int, cases: int, simulator: str, wall_s: float) -> dict:
    ok = [r for r in records if r["status"] == "ok"]
    checked = [r for r in records if r["status"] in ("ok", "mismatch")]
    sizes = [s for r in records for s in r["sizes"]]
    sparsities = [s for r in records for s in r["sparsities"]]
    return {
        "seed": seed, "simulator": simulator, "board": BOARD,
        "cases": cases, "models": len(records),
        "cases_checked": sum(r["cases"] for r in checked),
        "models_checked": len(checked),
        "refused": len([r for r in records if r["status"] == "refused"]),
        "mismatches": len([r for r in records if r["status"] == "mismatch"]),
        "crashes": len([r for r in records if r["status"] == "crash"]),
        "tool_errors": len([r for r in records if r["status"] == "tool_error"]),
        "failures": [{"model": r["model"], "status": r["status"], "error": r.get("error"),
                      "reproducer": r.get("reproducer")}
                     for r in records if r["status"] in ("mismatch", "crash", "tool_error")],
        "pes_covered": sorted({r["pes"] for r in records if "pes" in r}),
        "kinds": {k: len([r for r in records if r["kind"] == k]) for k in ("mlp", "cnn")},
        "warned_builds": len([r for r in records if r.get("warnings")]),
        "codebook_builds": len([r for r in records if (r.get("weight_bits") or 8) < 8]),
        "correlation": _stats(r.get("correlation") for r in ok),
        "argmax_agreement": _stats(r.get("argmax_agreement") for r in ok),
        "layer_sizes": {"min": min(sizes, default=None), "max": max(sizes, default=None),
                        "median": float(np.median(sizes)) if sizes else None},
        "sparsity": {"min": min(sparsities, default=None), "max": max(sparsities, default=None),
                     "layers_at_least_99pct": len([s for s in sparsities if s >= 0.99])},
        "wall_s": round(wall_s, 1),
        "per_model": records,
    }


def run_campaign(*, cases: int, seed: int, out_dir, jobs: int = 1,
                 simulator: str = "verilator", cases_per_model: int = CASES_PER_MODEL,
                 keep: bool = False, max_size: int | None = None,
                 on_model=None) -> CampaignResult:
    """Run ``cases`` cases (in models of ``cases_per_model``) of campaign ``seed`` on ``jobs``
    processes; writes ``out_dir/summary.json``. ``on_model(record)``: called as each model
    finishes."""
    if cases < 1 or jobs < 1 or cases_per_model < 1:
        raise SparsemacError(f"--cases, --jobs and --cases-per-model must be at least 1, not "
                             f"{cases}, {jobs}, {cases_per_model}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise SparsemacError(f"--out {out_dir} is a file, not a folder; choose another --out")
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = [min(cases_per_model, cases - start) for start in range(0, cases, cases_per_model)]
    started = time.perf_counter()
    args = [(seed, i, n, str(out_dir), simulator, keep, max_size)
            for i, n in enumerate(counts)]
    records = []
    if jobs == 1:
        for a in args:
            records.append(run_model(*a))
            if on_model:
                on_model(records[-1])
    else:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            for record in pool.map(run_model, *zip(*args)):
                records.append(record)
                if on_model:
                    on_model(record)
    summary = summarize(records, seed=seed, cases=cases, simulator=simulator,
                        wall_s=time.perf_counter() - started)
    summary["cases_per_model"], summary["max_size"] = cases_per_model, max_size
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if not keep:
        shutil.rmtree(out_dir / "models", ignore_errors=True)
    return CampaignResult(summary=summary, out_dir=out_dir)
