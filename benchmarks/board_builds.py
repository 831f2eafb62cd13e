"""Fmax, utilisation and inferences per second per board and P, for the example model and a
LeNet-300-100-shaped one (784-300-100-10, random weights pruned to 92 %), against PyTorch's CPU
batch-1 latency on this machine. Prints a Markdown table (and writes it with --out).

    python benchmarks/board_builds.py                                  # everything (hours)
    python benchmarks/board_builds.py --boards icebreaker --pes 1,2 --models digits
    python benchmarks/board_builds.py --boards icebreaker --pes 1 --seeds 1,2,3  # placements
    python benchmarks/board_builds.py --boards ulx3s --pes 4 --pipeline deep     # a style
    python benchmarks/board_builds.py --fit-only                      # estimates, seconds

Cycles per inference are streaming cycles (inferences overlap in the array): the plan's
prediction from the PE bound over the calibration inputs, or with ``--simulate N`` the RTL's,
measured on Verilator over the first N calibration inputs (every output checked bit-exactly).

    python benchmarks/board_builds.py --boards ulx3s --pes 64 --models lenet --simulate 100
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from compiler.build import BuildConfig, build
from core.errors import FitError
from hw.options import MEMORY_STYLES, PIPELINES

ROOT = Path(__file__).resolve().parent.parent

DEFAULT_PES = {"icebreaker": (1, 2, 4, 8), "ulx3s": (1, 2, 4, 8, 16, 32, 64)}


def lenet_model(work: Path) -> tuple[Path, Path]:
    """784-300-100-10 with random weights, 92 % of them pruned by magnitude, and 256 random
    calibration inputs in [0, 1)."""
    model_path, cal_path = work / "lenet300_100.pt", work / "lenet300_100_cal.npy"
    if model_path.is_file() and cal_path.is_file():
        return model_path, cal_path
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(784, 300), torch.nn.ReLU(),
        torch.nn.Linear(300, 100), torch.nn.ReLU(),
        torch.nn.Linear(100, 10))
    with torch.no_grad():
        for layer in model:
            if isinstance(layer, torch.nn.Linear):
                w = layer.weight
                threshold = w.abs().flatten().kthvalue(int(0.92 * w.numel())).values
                w.mul_((w.abs() > threshold).float())
    torch.save(model, model_path)
    rng = np.random.default_rng(0)
    np.save(cal_path, rng.random((256, 784), dtype=np.float32))
    return model_path, cal_path


def cpu_latency_us(model_path: Path, features: int, runs: int = 2000) -> float:
    """Median PyTorch batch-1 forward time on this machine's CPU (one thread)."""
    torch.set_num_threads(1)
    model = torch.load(model_path, weights_only=False).eval()
    x = torch.rand(1, features)
    times = []
    with torch.no_grad():
        for _ in range(200):
            model(x)
        for _ in range(runs):
            t = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t)
    return 1e6 * float(np.median(times))


def run_one(model, calibration, board, pes, work: Path, fit_only: bool, *,
            memory: str | None = None, pipeline: str | None = None, seed: int = 1,
            simulate: int = 0) -> dict:
    style = "".join(f"-{v}" for v in (memory, pipeline) if v)
    out = work / f"{Path(model).stem}-{board}-p{pes}{style}-s{seed}"
    config = BuildConfig(model=str(model), board=board, pes=pes, calibration=calibration,
                         out=str(out), allow_timing_failure=True, bitstream=not fit_only,
                         memory=memory, pipeline=pipeline, seed=seed)
    started = time.perf_counter()
    try:
        r = build(config).report
    except FitError as e:
        return {"board": board, "pes": pes, "fits": False, "why": str(e)}
    cycles, basis = r["plan"]["predicted_cycles"], "predicted"
    if simulate:
        from compiler.simulate import simulate as run_simulation
        cycles = run_simulation(out, simulator="verilator", limit=simulate).cycles_per_inference
        basis = f"Verilator, {simulate} inputs"
    row = {"board": board, "pes": pes, "fits": True, "fmax": r["fmax_mhz"], "seed": seed,
           "style": f"{r['memory_style']}, {r['accumulators']} acc., {r['pipeline']}",
           "grid": r["grid"], "cycles": cycles, "cycles_basis": basis,
           "ideal": r["cycles"]["ideal"],
           "seconds": round(time.perf_counter() - started, 1), "resources": r["resources"],
           "fit": r.get("fit"), "target": (r.get("timing") or {}).get("target_mhz")}
    return row


def _util(res: dict, *kinds) -> str:
    parts = []
    for kind in kinds:
        v = (res or {}).get(kind)
        if isinstance(v, dict) and "used" in v:
            parts.append(f"{v['used']}/{v['available']}")
        else:
            parts.append("-")
    return " | ".join(parts)


def table(rows, cpu_us) -> str:
    lines = ["| model | board | P | grid | style | seed | Fmax MHz (target) | logic | FF | BRAM "
             "| DSP | cycles/inf (basis) | / ideal | inf/s on board | x PyTorch CPU b=1 "
             "| build s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        model = row["model"]
        if not row["fits"]:
            lines.append(f"| {model} | {row['board']} | {row['pes']} | | | | does not fit "
                         f"| | | | | | | | | |")
            continue
        res = row["resources"] or {}
        if "ICESTORM_LC" in res:
            util = (_util(res, "ICESTORM_LC") + " | (in LCs) | "
                    + _util(res, "ICESTORM_RAM", "ICESTORM_DSP"))
        elif "TRELLIS_COMB" in res:
            util = _util(res, "TRELLIS_COMB", "TRELLIS_FF", "DP16KD", "MULT18X18D")
        else:
            fit = row["fit"] or {}
            util = " | ".join(f"~{fit[k]['used']}/{fit[k]['available']}"
                              for k in ("luts", "ffs", "bram_blocks", "dsps")
                              if k in fit) if fit else "- | - | - | -"
        fmax = row["fmax"]
        rate = fmax * 1e6 / row["cycles"] if fmax else None
        speedup = rate * cpu_us[model] * 1e-6 if rate else None
        lines.append(
            f"| {model} | {row['board']} | {row['pes']} | {row['grid']} | {row['style']} "
            f"| {row['seed']} | {fmax if fmax else '-'} ({row['target'] or '-'}) | {util} "
            f"| {row['cycles']:.1f} ({row['cycles_basis']}) "
            f"| {row['cycles'] / row['ideal']:.3f} | {f'{rate:,.0f}' if rate else '-'} "
            f"| {f'{speedup:.1f}' if speedup else '-'} | {row['seconds']} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--boards", default="icebreaker,ulx3s")
    p.add_argument("--pes", help="comma-separated P (default: 1,2,4,8; ECP5 also 16,32)")
    p.add_argument("--models", default="digits,lenet")
    p.add_argument("--fit-only", action="store_true", help="estimates only, no synthesis")
    p.add_argument("--work", default=str(ROOT / "build" / "bench_boards"))
    p.add_argument("--memory", choices=MEMORY_STYLES, help="default: the board's")
    p.add_argument("--pipeline", choices=PIPELINES, help="default: the board's")
    p.add_argument("--seeds", default="1", help="comma-separated nextpnr seeds (default 1)")
    p.add_argument("--simulate", type=int, default=0, metavar="N",
                   help="measure streaming cycles on Verilator over N inputs (default: the "
                   "plan's prediction)")
    p.add_argument("--out", help="also write the table (Markdown) and rows (JSON) here")
    args = p.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    lenet, lenet_cal = lenet_model(work)
    models = {"digits": (ROOT / "examples" / "digits_mlp.pt", None, 64),
              "lenet": (lenet, str(lenet_cal), 784)}
    cpu_us = {name: cpu_latency_us(path, feat) for name, (path, _, feat) in models.items()}
    rows = []
    for name in args.models.split(","):
        path, cal, _ = models[name]
        for board in args.boards.split(","):
            pes_list = ([int(v) for v in args.pes.split(",")] if args.pes
                        else DEFAULT_PES.get(board, (1, 2, 4, 8)))
            for pes in pes_list:
                for seed in (int(v) for v in args.seeds.split(",")):
                    row = run_one(path, cal, board, pes, work, args.fit_only,
                                  memory=args.memory, pipeline=args.pipeline, seed=seed,
                                  simulate=args.simulate)
                    row["model"] = name
                    rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if k not in ("resources", "fit")}),
                      flush=True)
    text = table(rows, cpu_us)
    cpu = ", ".join(f"{k} {v:.1f} us" for k, v in cpu_us.items())
    print(f"\nPyTorch CPU batch-1 latency (1 thread, median): {cpu}\n")
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
        Path(args.out).with_suffix(".json").write_text(json.dumps(
            {"cpu_us": cpu_us, "rows": rows}, indent=1, default=str))


if __name__ == "__main__":
    main()
