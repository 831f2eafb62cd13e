"""The ``prune`` and ``inspect`` commands: argument parsing and printing only."""

from __future__ import annotations

import argparse

from ..argtypes import real_number, whole_number

__all__ = ["add_commands"]


_positive = whole_number(1)
_count = whole_number(0)
_non_negative = real_number(at_least=0)
_positive_float = real_number(above=0)


def _weight_bits(text: str) -> int:
    value = _positive(text)
    if not 2 <= value <= 7:
        raise argparse.ArgumentTypeError(f"must be in 2..7, not {value}")
    return value


def _sparsity(text: str):
    from core.errors import InputError
    from .api import parse_sparsity
    try:
        return parse_sparsity(text)
    except InputError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--sparsity ")) from None


def _percent(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


def _sparsity_table(report, title: str):
    from rich.table import Table

    table = Table(title=title, title_justify="left", caption_justify="left",
                  caption="param.: share of zero weights; struct.: share of output units "
                          "(neurons, channels) all zero or removed; mag.-w.: share of the "
                          "dense weights' L1 mass removed")
    for column in ("layer", "type", "shape", "nonzero", "param.", "struct.", "mag.-w."):
        table.add_column(column, justify="left" if column in ("layer", "type") else "right")
    for s in report.layers:
        shape = "x".join(map(str, s.shape))
        if s.shape != s.reference_shape:
            shape = f"{'x'.join(map(str, s.reference_shape))}->{shape}"
        table.add_row(s.name, s.kind, shape, f"{s.nonzero}/{s.weights}", _percent(s.parameter),
                      _percent(s.structural), _percent(s.magnitude))
    t = report.total
    table.add_row("total", "", "", f"{t.nonzero}/{t.weights}", _percent(t.parameter),
                  _percent(t.structural), _percent(t.magnitude), style="bold")
    return table


def _fit_line(final: dict) -> str:
    """``--fit-board``: the pruned model's fit on the board, as build would plan it."""
    if not final["fits"]:
        return f"fit: does NOT fit {final['board']}: {final['problem']}"
    e = final["estimate"]
    used = ", ".join(f"{name} {e[key]['used']}/{e[key]['available']}" for key, name in
                     (("luts", "LUT"), ("ffs", "FF"), ("bram_blocks", "block RAM"),
                      ("spram_blocks", "SPRAM"), ("dsps", "DSP"))
                     if key != "spram_blocks" or e[key]["available"])
    return (f"fit: {final['board']} at P = {final['pes']} ({final['grid']}, weights in "
            f"{e['weights']}): {used} (estimate before synthesis)")


def cmd_prune(args) -> int:
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn)

    from core.errors import InputError
    from .api import PruneConfig, prune_file
    from .distributed import torchrun_env
    from .train import Progress as ProgressSink

    if args.sparsity is None and args.fit_board is None:
        raise InputError("prune needs --sparsity S (a share in [0, 1), or auto) or "
                         "--fit-board BOARD (the sparsity at which the model fits it)")
    config = PruneConfig(method=args.method, sparsity=args.sparsity, data=args.data,
                         val=args.val, epochs=args.epochs, device=args.device, pes=args.pes,
                         seed=args.seed, max_accuracy_drop=args.max_accuracy_drop,
                         force=args.force, lr=args.lr, batch_size=args.batch_size,
                         fit_board=args.fit_board, weight_bits=args.weight_bits)
    env = torchrun_env()
    main = env is None or env[0] == 0
    console = Console(highlight=False, soft_wrap=True)
    errors = Console(stderr=True, highlight=False, soft_wrap=True)
    bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=errors, disable=not main)

    class _Bars(ProgressSink):
        """Rich progress bars, drawn from the first training phase on (errors found before
        it leave stderr to the one-line message)."""
        task = None
        live = False

        def start(self, phase, total):
            if not self.live:
                bars.start()
                self.live = True
            self.task = bars.add_task(phase, total=max(total, 1))
            if total == 0:
                bars.update(self.task, completed=1)

        def advance(self, steps=1):
            bars.advance(self.task, steps)

        def done(self, phase, text=""):
            bars.update(self.task, completed=bars.tasks[self.task].total)

    def warn(text):
        errors.print(f"warning: {text}", markup=False)

    sink = _Bars()
    try:
        result = prune_file(args.model, config, out=args.out, trust_pickle=args.trust_pickle,
                            progress=sink, warn=warn)
    except BaseException:
        if sink.live:               # clear the bars (no final render, no blank line after
            sink.live = False       # them): the one-line error stands alone
            bars.live.transient = True
            bars.live.stop()
        raise
    finally:
        if sink.live:
            bars.stop()
    if not main:
        return 0
    sparsity = result.config.sparsity
    target = "auto" if sparsity == "auto" else f"{100 * float(sparsity):.1f} %"
    console.print(_sparsity_table(result.sparsity, f"{args.method}, target {target}"))
    change = 100 * (result.accuracy_after - result.accuracy_before)
    console.print(f"accuracy on {result.eval_name}: dense {100 * result.accuracy_before:.2f} % "
                  f"-> pruned {100 * result.accuracy_after:.2f} % ({change:+.2f} points; "
                  f"--max-accuracy-drop {args.max_accuracy_drop:g})")
    if result.targets.per_layer is not None:
        what = "share of units removed" if args.method == "structured" else "sparsity"
        console.print(f"per-layer targets ({what}; sensitivity analysis, one-shot within "
                      f"{args.max_accuracy_drop:g} points): " + ", ".join(
                          f"{k} {100 * v:.0f} %" for k, v in result.targets.per_layer.items()))
    sharing = result.info.get("weight_sharing")
    if sharing:
        values = sharing["distinct_nonzero"]
        console.print(f"weight sharing: {sharing['bits']}-bit codebooks, "
                      f"{sharing['steps']} steps of centroid fine-tuning; distinct nonzero "
                      f"values: " + ", ".join(f"{k} {v}" for k, v in values.items()))
    procs = f", {result.world_size} processes" if result.world_size > 1 else ""
    console.print(f"time {result.seconds:.1f} s on {result.device}{procs}; "
                  f"{args.epochs} epochs, seed {args.seed}")
    for note in result.notes:
        console.print(f"note: {note}")
    if "fit" in result.info:
        console.print(_fit_line(result.info["fit"]["final"]))
    console.print(f"saved {result.out}")
    return 0


def cmd_inspect(args) -> int:
    from rich.console import Console

    from .inspection import inspect_file

    report, png = inspect_file(args.model, reference=args.reference, png=args.png,
                               trust_pickle=args.trust_pickle)
    console = Console(highlight=False, soft_wrap=True)
    console.print(_sparsity_table(report, str(args.model)))
    if args.reference is None:
        console.print("magnitude-weighted sparsity needs the dense model: --reference DENSE.pt")
    console.print(f"heatmap {png}")
    return 0


def add_commands(sub) -> None:
    """Add ``prune`` and ``inspect`` to the CLI's subparsers."""
    from .api import DEFAULT_MAX_DROP
    from .distributed import DEVICES
    from .methods import METHODS

    p = sub.add_parser("prune", help="prune and fine-tune a model (torchrun for several "
                                     "processes)")
    p.add_argument("model", help="torch.save(model) file (a dense, trained classifier)")
    p.add_argument("--method", required=True, choices=list(METHODS),
                   help="pruning method")
    p.add_argument("--sparsity", type=_sparsity,
                   help="share of weights to remove, in [0, 1), or 'auto' (per-layer targets "
                        "from a sensitivity analysis within --max-accuracy-drop); required "
                        "unless --fit-board, where it is the least to prune to")
    p.add_argument("--fit-board", metavar="BOARD",
                   help="search the lowest sparsity at which the model fits BOARD (build's "
                        "fit check, no synthesis), prune to it and report the resources")
    p.add_argument("--max-accuracy-drop", type=_non_negative, default=DEFAULT_MAX_DROP,
                   help="accuracy points the pruned model may lose against the dense one on "
                        "the same validation samples; beyond it nothing is saved (exit 2) "
                        "unless --force; also the budget of --sparsity auto (default "
                        f"{DEFAULT_MAX_DROP:g})")
    p.add_argument("--force", action="store_true",
                   help="save the pruned model even when it lost more than "
                        "--max-accuracy-drop (with a warning)")
    p.add_argument("--data", default="digits",
                   help="'digits' (default) or PATH.npz with X (float32) and y (int64); "
                        "without --val a seeded 20 %% of the file is held out for accuracy")
    p.add_argument("--val", metavar="PATH.npz",
                   help="a separate validation split (X, y as for --data): both accuracies "
                        "are measured on it and all of --data trains")
    p.add_argument("--epochs", type=_count, default=60,
                   help="fine-tuning budget in epochs, the whole method (default 60)")
    p.add_argument("--device", choices=DEVICES, default="auto",
                   help="auto: CUDA when present (default)")
    p.add_argument("--pes", type=_positive,
                   help="processing elements: balanced balances for them (default 8); "
                        "--fit-board fits at them (default: build's --pes auto)")
    p.add_argument("--out", help="pruned model (default <model>-<method>-<sparsity>.pt)")
    p.add_argument("--seed", type=_count, default=0, help="seed (default 0)")
    p.add_argument("--lr", type=_positive_float, default=3e-3,
                   help="Adam learning rate, decayed by a cosine (default 3e-3)")
    p.add_argument("--batch-size", type=_positive, default=64,
                   help="global batch, split the same way on any number of processes "
                        "(default 64)")
    p.add_argument("--weight-bits", type=_weight_bits, default=None, metavar="B",
                   help="weight sharing (Deep Compression): cluster each layer's nonzero "
                        "weights into a 2**B-entry codebook (2**B - 1 values and 0; B in "
                        "2..7) and fine-tune it in the last quarter of the --epochs budget; "
                        "build then stores B-bit indices")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow a pickle that needs arbitrary classes (runs its code!)")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("inspect", help="sparsity of a model: table and heatmap PNG")
    p.add_argument("model", help="torch.save(model) file")
    p.add_argument("--reference", help="the dense model it was pruned from (for the "
                                       "magnitude-weighted sparsity)")
    p.add_argument("--png", help="heatmap path (default <model>-sparsity.png beside it)")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow a pickle that needs arbitrary classes (runs its code!)")
    p.set_defaults(func=cmd_inspect)
