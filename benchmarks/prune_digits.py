"""Pruning methods on scikit-learn's digits against ``torch.nn.utils.prune``.

    python benchmarks/prune_digits.py    # writes docs/prune_benchmarks.{md,json} and
                                         # docs/prune_accuracy.png (about 6 min on 2 cores)

The bundled example's architecture (MLP 64-128-64-10, ReLU) is trained densely first (100
epochs, Adam 1e-3, batch 64, as ``examples/train_digits_mlp.py`` does). Then, for every target
sparsity, every method of ``python -m compiler prune`` runs from that dense model, and so does
the baseline: ``torch.nn.utils.prune.global_unstructured`` (L1, one shot) followed by the same
fine-tuning (same trainer, epochs, learning rate, batches and seeds). Accuracy is measured on
the digits test split (360 images); each cell is the mean over the seeds.

    python benchmarks/prune_digits.py --budgets 1,3,10,20 --sparsities 0.8,0.9,0.95 --seeds 0

sweeps epoch budgets instead: every method at every budget and sparsity against
``global-magnitude`` at the same budget, printing (and with ``--md PATH`` writing) a Markdown
table of accuracy, the difference to ``global-magnitude`` (flagged where a method is more
than 2 points under it) and whether the zero count is exactly the requested one.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.nn.utils.prune as tprune

from compiler.prune import METHODS, PruneConfig, prune_model
from compiler.prune.data import load_data
from compiler.prune.distributed import Runtime
from compiler.prune.layers import prunable_layers
from compiler.prune.train import Session, deterministic, evaluate, fine_tune

ROOT = Path(__file__).resolve().parent.parent
BASELINE = "torch-prune (baseline)"
SPARSITIES = (0.5, 0.8, 0.9, 0.95, 0.98)


def train_dense(data, seed: int = 0) -> nn.Sequential:
    """The example's recipe: 100 epochs of Adam (1e-3), batch 64."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(),
                          nn.Linear(64, 10))
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(100):
        for idx in torch.randperm(len(x), generator=gen).split(64):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def baseline(dense, data, sparsity: float, epochs: int, seed: int) -> tuple[float, float]:
    """torch.nn.utils.prune global L1 pruning, then the same fine-tuning as the methods."""
    model = copy.deepcopy(dense)
    params = [(m, "weight") for _, m in prunable_layers(model)]
    tprune.global_unstructured(params, pruning_method=tprune.L1Unstructured, amount=sparsity)
    session = Session(data=data, runtime=Runtime(torch.device("cpu")), epochs=epochs, seed=seed,
                      lr=PruneConfig.lr, batch_size=PruneConfig.batch_size)
    with deterministic(torch.device("cpu")):
        fine_tune(model, session, epochs=epochs, phase="fine-tune")
        for m, name in params:
            tprune.remove(m, name)
        acc = evaluate(model, session.tensor("x_eval"), session.tensor("y_eval"))
    zeros = sum(int((m.weight == 0).sum()) for m, _ in params)
    return acc, zeros / sum(m.weight.numel() for m, _ in params)


def run(methods, sparsities, epochs: int, seeds) -> tuple[dict, float, dict]:
    data = load_data("digits")
    with deterministic(torch.device("cpu")):
        dense = train_dense(data)
        dense_acc = evaluate(dense, torch.from_numpy(data.x_eval), torch.from_numpy(data.y_eval))
    print(f"dense accuracy {100 * dense_acc:.2f} %", flush=True)
    results: dict = {}          # (method, sparsity) -> list of (accuracy, sparsity, seconds, info)
    for s in sparsities:
        for method in [*methods, BASELINE]:
            for seed in seeds:
                started = time.perf_counter()
                if method == BASELINE:
                    acc, achieved = baseline(dense, data, s, epochs, seed)
                    info = {}
                else:
                    r = prune_model(dense, PruneConfig(method=method, sparsity=s, epochs=epochs,
                                                       seed=seed, device="cpu"), data=data)
                    acc, achieved, info = r.accuracy_after, r.sparsity.total.parameter, r.info
                took = time.perf_counter() - started
                results.setdefault((method, s), []).append((acc, achieved, took, info))
                print(f"{100 * s:4.0f} % {method:24s} seed {seed}: {100 * acc:6.2f} % "
                      f"(sparsity {100 * achieved:.2f} %, {took:.1f} s)", flush=True)
    env = {"python": platform.python_version(), "torch": torch.__version__,
           "cpu": platform.processor() or platform.machine(),
           "threads": "1 intra-op thread (the trainer's deterministic mode)"}
    return results, dense_acc, env


def to_json(results, dense_acc, env, epochs, seeds) -> dict:
    runs = [{"method": m, "target": s, "seed": seed, "accuracy": acc, "sparsity": achieved,
             "seconds": took, "info": info}
            for (m, s), rows in results.items() for seed, (acc, achieved, took, info)
            in zip(seeds, rows)]
    return {"dense_accuracy": dense_acc, "epochs": epochs, "seeds": list(seeds), "env": env,
            "runs": runs}


def _mean(values):
    return float(np.mean(values))


def plot(results, dense_acc, methods, sparsities, path: Path) -> None:
    """Accuracy against sparsity: every level (left) and the top of the range (right)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), constrained_layout=True)
    xs = range(len(sparsities))             # evenly spaced: the high levels matter most
    for ax, low in zip(axes, (None, 100 * dense_acc - 6)):
        for method in [*methods, BASELINE]:
            ys = [100 * _mean([r[0] for r in results[(method, s)]]) for s in sparsities]
            style = dict(color="black", linestyle="--", linewidth=2) \
                if method == BASELINE else {}
            ax.plot(xs, ys, marker="o", label=method, **style)
        ax.axhline(100 * dense_acc, color="grey", linestyle=":", label="dense")
        ax.axhline(100 * dense_acc - 1, color="grey", linestyle="-.", linewidth=0.8,
                   label="dense - 1 point")
        ax.set_xticks(list(xs), [f"{100 * s:g} %" for s in sparsities])
        ax.set_xlabel("weight sparsity")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
        if low is not None:
            ax.set_ylim(low, 100 * dense_acc + 2)
            ax.set_title("zoom: within 6 points of dense")
        else:
            ax.set_title("digits MLP 64-128-64-10, test accuracy against sparsity")
            ax.legend(fontsize=8, ncol=2, loc="lower left")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def findings(results, dense_acc, methods, sparsities) -> list[str]:
    """The targets of the issue, checked, and how ``learned`` fares; from the numbers."""
    def acc(m, s):
        return _mean([r[0] for r in results[(m, s)]])

    seeds = len(next(iter(results.values())))
    out = [f"Differences under about half a point are within the noise of 360 test images and "
           f"{seeds} seed(s). At moderate sparsity the pruned models beat the dense one: the "
           f"dense recipe is short, and the fine-tuning budget trains further.", ""]
    if 0.9 in sparsities:
        name = max(methods, key=lambda m: acc(m, 0.9))
        loss = 100 * (dense_acc - acc(name, 0.9))
        out.append(f"- Target: at most 1 point lost at 90 % for the best method: `{name}` "
                   f"{'loses' if loss > 0 else 'gains'} {abs(loss):.2f} points - "
                   f"{'met' if loss <= 1 else 'NOT met'}.")
    if 0.95 in sparsities:
        name = max(methods, key=lambda m: acc(m, 0.95))
        gap = 100 * (acc(name, 0.95) - acc(BASELINE, 0.95))
        out.append(f"- Target: the best method beats the baseline at 95 %: `{name}` by "
                   f"{gap:+.2f} points - {'met' if gap > 0 else 'NOT met'}.")
    if "learned" in methods:
        for rival in ("magnitude", "global-magnitude", "gradual"):
            if rival not in methods:
                continue
            wins = [s for s in sparsities if acc("learned", s) > acc(rival, s)]
            ties = [s for s in sparsities if acc("learned", s) == acc(rival, s)]
            out.append(f"- `learned` against `{rival}`: better at {len(wins)} of "
                       f"{len(sparsities)} levels"
                       + (f" ({', '.join(f'{100 * s:g} %' for s in wins)})" if wins else "")
                       + (f", equal at {len(ties)}" if ties else "") + ".")
        overall = [s for s in sparsities
                   if acc("learned", s) > max(acc(m, s) for m in ("magnitude", "global-magnitude")
                                             if m in methods)]
        if len(overall) * 2 <= len(sparsities):
            out.append("- So `learned` does **not** beat magnitude pruning overall (it beats the "
                       f"better of the two magnitude methods at {len(overall)} of "
                       f"{len(sparsities)} levels). Its predicted masks agree with the "
                       "labelling run only slightly more than plain `|w|` does (see below): "
                       "the gradient and row/column features add little to the magnitude, and "
                       "the labelling run costs a third of the budget. Wins over layer-wise "
                       "`magnitude` come from ranking weights across layers, which "
                       "`global-magnitude` does for free.")
        else:
            out.append(f"- `learned` beats the better magnitude method at {len(overall)} of "
                       f"{len(sparsities)} levels.")
    return out


def markdown(results, dense_acc, env, methods, sparsities, epochs, seeds, command,
             png: Path, total_s: float) -> str:
    head = "| method | " + " | ".join(f"{100 * s:g} %" for s in sparsities) + " |"
    lines = [
        "# Pruning benchmark: digits MLP",
        "",
        f"Produced by `{command}` ({total_s / 60:.1f} min; {env['cpu']}, {env['threads']}, "
        f"Python {env['python']}, torch {env['torch']}).",
        "",
        f"Model: the bundled example's architecture, MLP 64-128-64-10 (ReLU), trained densely "
        f"first (100 epochs, Adam 1e-3, batch 64): **{100 * dense_acc:.2f} %** on the digits "
        f"test split (360 images; one image is 0.28 points). Every method then gets the same "
        f"budget of {epochs} epochs (Adam 3e-3 with cosine decay, batch 64, the same batches "
        f"for a seed) for all its phases; seeds {', '.join(map(str, seeds))} (each cell is "
        f"the mean). The baseline is `torch.nn.utils.prune.global_unstructured` (L1, one "
        f"shot) fine-tuned the same way.",
        "",
        "## Test accuracy (%)",
        "",
        head,
        "|---|" + "---|" * len(sparsities),
    ]
    best = {s: max(_mean([r[0] for r in results[(m, s)]]) for m in methods) for s in sparsities}
    for method in [*methods, BASELINE]:
        cells = []
        for s in sparsities:
            acc = _mean([r[0] for r in results[(method, s)]])
            cell = f"{100 * acc:.2f}"
            cells.append(f"**{cell}**" if method != BASELINE and acc == best[s] else cell)
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += ["", f"Dense: {100 * dense_acc:.2f} %. Bold: the best method at that sparsity. "
              "`global-magnitude` and the baseline are the same algorithm on the same trainer "
              "and must agree: they check that the comparison is fair.",
              "", "## Best method against the baseline (accuracy points; a negative loss is a gain)",
              "",
              "| sparsity | best method | its loss vs dense | baseline's loss vs dense "
              "| best - baseline |",
              "|---|---|---|---|---|"]
    for s in sparsities:
        name = max(methods, key=lambda m: _mean([r[0] for r in results[(m, s)]]))
        acc = best[s]
        base = _mean([r[0] for r in results[(BASELINE, s)]])
        lines.append(f"| {100 * s:g} % | {name} | {100 * (dense_acc - acc):+.2f} "
                     f"| {100 * (dense_acc - base):+.2f} | {100 * (acc - base):+.2f} |")
    lines += ["", "## Findings", ""] + findings(results, dense_acc, methods, sparsities)
    lines += ["", f"![accuracy against sparsity]({png.name})", "",
              "## Seconds per run (mean)", "", head, "|---|" + "---|" * len(sparsities)]
    for method in [*methods, BASELINE]:
        lines.append(f"| {method} | " + " | ".join(
            f"{_mean([r[2] for r in results[(method, s)]]):.1f}" for s in sparsities) + " |")
    lines += ["", "## Method details", ""]
    if "l0" in methods:
        lines.append("- `l0`, sparsity of the deterministic gates alone (before the mask is "
                     "set to the target): " + ", ".join(
                         f"{100 * s:g} %: {100 * _mean([r[3]['gate_sparsity'] for r in results[('l0', s)]]):.2f} %"
                         for s in sparsities) + ".")
    if "structured" in methods:
        lines.append("- `structured`, hidden neurons kept (128, 64 dense): " + ", ".join(
            f"{100 * s:g} %: " + "/".join(v.split(" -> ")[1] for v in
                                          results[('structured', s)][0][3]['units'].values())
            for s in sparsities) + ".")
    if "balanced" in methods:
        lines.append("- `balanced` (8 PEs), nonzero weights per PE in the compiled program, "
                     "min..max per layer: " + "; ".join(
                         f"{100 * s:g} %: " + ", ".join(
                             f"{min(c)}..{max(c)}"
                             for c in results[('balanced', s)][0][3]['pe_nonzero'])
                         for s in sparsities) + ".")
    if "learned" in methods:
        lines.append("- `learned`: share of the labelling run's surviving weights that the "
                     "predicted mask keeps, against the share the magnitude mask keeps: " +
                     ", ".join(f"{100 * s:g} %: {100 * _mean([r[3]['overlap_with_labels'] for r in results[('learned', s)]]):.1f} vs "
                               f"{100 * _mean([r[3]['magnitude_overlap_with_labels'] for r in results[('learned', s)]]):.1f}"
                               for s in sparsities) + ".")
    return "\n".join(lines) + "\n"


#: Points under ``global-magnitude`` that the budget table flags.
FLAG_POINTS = 2.0


def sweep(methods, sparsities, budgets, seeds) -> tuple[dict, float]:
    """``(method, budget, sparsity) -> [(accuracy, zeros, requested zeros)]`` per seed."""
    data = load_data("digits")
    with deterministic(torch.device("cpu")):
        dense = train_dense(data)
        dense_acc = evaluate(dense, torch.from_numpy(data.x_eval), torch.from_numpy(data.y_eval))
    print(f"dense accuracy {100 * dense_acc:.2f} %", flush=True)
    weights = sum(m.weight.numel() for _, m in prunable_layers(dense))
    out: dict = {}
    for epochs in budgets:
        for s in sparsities:
            for method in methods:
                for seed in seeds:
                    r = prune_model(dense, PruneConfig(method=method, sparsity=s, epochs=epochs,
                                                       seed=seed, device="cpu"), data=data)
                    zeros = int(round(r.sparsity.total.parameter * weights))
                    want = r.info["projection"]["requested"]
                    out.setdefault((method, epochs, s), []).append(
                        (r.accuracy_after, zeros, want))
                    print(f"{epochs:3d} epochs {100 * s:4.0f} % {method:18s} seed {seed}: "
                          f"{100 * r.accuracy_after:6.2f} % (zeros {zeros}, requested {want})",
                          flush=True)
    return out, dense_acc


def sweep_markdown(out, dense_acc, methods, sparsities, budgets, seeds, command) -> str:
    """The budget table: accuracy (difference to global-magnitude), per budget x sparsity."""
    cols = [(e, s) for e in budgets for s in sparsities]
    lines = [f"Produced by `{command}` (dense {100 * dense_acc:.2f} %, seeds "
             f"{', '.join(map(str, seeds))}; each cell: test accuracy %, and in brackets the "
             f"points against `global-magnitude` at the same budget and sparsity; **bold**: "
             f"more than {FLAG_POINTS:g} points under it).", "",
             "| method | " + " | ".join(f"{e} ep, {100 * s:g} %" for e, s in cols) + " |",
             "|---|" + "---|" * len(cols)]
    flagged, inexact = [], []
    for m in methods:
        cells = []
        for e, s in cols:
            rows = out[(m, e, s)]
            acc = 100 * _mean([r[0] for r in rows])
            ref = 100 * _mean([r[0] for r in out[("global-magnitude", e, s)]]) \
                if ("global-magnitude", e, s) in out else acc
            gap = acc - ref
            cell = f"{acc:.1f} ({gap:+.1f})" if m != "global-magnitude" else f"{acc:.1f}"
            if gap < -FLAG_POINTS:
                cell = f"**{cell}**"
                flagged.append(f"{m} at {e} epochs, {100 * s:g} %: {gap:+.1f}")
            cells.append(cell)
            inexact += [f"{m} {e} ep {100 * s:g} %: {z} zeros, {w} requested"
                        for _, z, w in rows if z != w]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += ["", "Zero count exactly the requested `round(sparsity x weights)` in every run: "
              + ("yes." if not inexact else "NO: " + "; ".join(inexact) + "."),
              "", f"More than {FLAG_POINTS:g} points under `global-magnitude`: "
              + ("none." if not flagged else "; ".join(flagged) + ".")]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(METHODS),
                        help="comma-separated (default: all)")
    parser.add_argument("--sparsities", default=",".join(f"{s:g}" for s in SPARSITIES))
    parser.add_argument("--epochs", type=int, default=PruneConfig.epochs)
    parser.add_argument("--seeds", default="0,1", help="comma-separated seeds (default 0,1)")
    parser.add_argument("--md", type=Path, default=ROOT / "docs" / "prune_benchmarks.md")
    parser.add_argument("--png", type=Path, default=ROOT / "docs" / "prune_accuracy.png")
    parser.add_argument("--budgets", default=None,
                        help="comma-separated epoch budgets: sweep budgets x sparsities x "
                             "methods against global-magnitude instead (prints the table; "
                             "--md writes it only when given)")
    args = parser.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    sparsities = [float(s) for s in args.sparsities.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    command = "python benchmarks/prune_digits.py" + ("" if argv is None and len(sys.argv) == 1
                                                     else " " + " ".join(sys.argv[1:]))
    if args.budgets:
        budgets = [int(e) for e in args.budgets.split(",")]
        if "global-magnitude" not in methods:
            methods = ["global-magnitude", *methods]
        out, dense_acc = sweep(methods, sparsities, budgets, seeds)
        text = sweep_markdown(out, dense_acc, methods, sparsities, budgets, seeds, command)
        print(text)
        if "--md" in (argv if argv is not None else sys.argv):
            args.md.write_text(text)
        return 0
    started = time.perf_counter()
    results, dense_acc, env = run(methods, sparsities, args.epochs, seeds)
    total = time.perf_counter() - started
    args.png.parent.mkdir(parents=True, exist_ok=True)
    plot(results, dense_acc, methods, sparsities, args.png)
    args.md.write_text(markdown(results, dense_acc, env, methods, sparsities, args.epochs, seeds,
                                command, args.png, total))
    raw = args.md.with_suffix(".json")
    raw.write_text(json.dumps(to_json(results, dense_acc, env, args.epochs, seeds), indent=1,
                              default=str) + "\n")
    print(f"wrote {args.md}, {raw} and {args.png} ({total:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
