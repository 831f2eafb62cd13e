"""Weight-side storage against float32 dense, plain int8 and with weight sharing (B = 4, 5).

    python benchmarks/storage.py [--sparsity 0.95] [--method l1] [--epochs 60] [--pes 1,8]

* digits: the bundled example's architecture (MLP 64-128-64-10) trained densely as
  ``benchmarks/prune_digits.py`` does, pruned with ``--method`` to ``--sparsity`` (plain), and
  again with ``--weight-bits 4`` and ``5`` (same method, sparsity and budget); each built with
  ``build --no-bitstream`` at every ``--pes``, ``--weight-bits off`` for the plain model and
  ``--weight-bits B`` for the shared ones; accuracy of the reference
  model (bit-exact with the RTL) on the digits test split against the dense float model.
* LeNet-300-100 (``benchmarks/board_builds.py``'s ``lenet_model()``: random weights, 92 %
  pruned): storage only (a random model has no accuracy), its weights clustered by the same
  k-means and snapping with no fine-tuning.

Prints a Markdown table (what docs/benchmarks.md's "Storage" subsection shows).
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from board_builds import lenet_model  # noqa: E402
from prune_digits import train_dense  # noqa: E402

from compiler import reference  # noqa: E402
from compiler.build import BuildConfig, build  # noqa: E402
from compiler.datasets import digits_split  # noqa: E402
from compiler.prune import PruneConfig, prune_model  # noqa: E402
from compiler.prune.data import load_data  # noqa: E402
from compiler.prune.sharing import share_weights  # noqa: E402
from compiler.prune.train import evaluate  # noqa: E402


def _build(model_path, pes, work, bits, calibration=None) -> tuple[dict, object]:
    """``build --no-bitstream``: plain (``bits`` None: ``--weight-bits off``) or with B-bit
    codes forced (what B costs, even where ``auto`` would keep int8 entries)."""
    config = BuildConfig(model=str(model_path), board="arty_a7", pes=pes, bitstream=False,
                         calibration=str(calibration) if calibration else None,
                         weight_bits="off" if bits is None else bits,
                         out=str(work / f"{Path(model_path).stem}-p{pes}"))
    result = build(config)
    return result.report, result.program


def _rtl_accuracy(program) -> float:
    _, x_test, _, y_test = digits_split()
    x = reference.quantize_input(x_test, program.model.input_scale)
    return float((reference.run(program, x).outputs.argmax(axis=1) == y_test).mean())


def _row(name, bits, pes, report, accuracy="") -> str:
    st = report["storage"]
    p = st["parts"]
    kind = f"B = {st['weight_bits']}" if st["weight_bits"] < 8 else "int8"
    return (f"| {name} | {bits} | {kind} | {pes} | {st['nonzero']} | {p['values']} | "
            f"{p['indices']} | {p['pointers']} | {p['codebooks']} | {p['row_parameters']} | "
            f"{st['total']} | {st['bits_per_nonzero']:.2f} | {st['compression']:.1f} x | "
            f"{accuracy} |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sparsity", type=float, default=0.95)
    ap.add_argument("--method", default="l1")
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--pes", default="1,8")
    args = ap.parse_args(argv)
    pes_list = [int(p) for p in args.pes.split(",")]
    work = Path(tempfile.mkdtemp(prefix="sparsemac-storage-"))
    data = load_data("digits")
    dense = train_dense(data)
    x_eval, y_eval = torch.from_numpy(data.x_eval), torch.from_numpy(data.y_eval)
    dense_acc = evaluate(dense, x_eval, y_eval)
    rows = []
    for bits in (None, 4, 5):
        config = PruneConfig(method=args.method, sparsity=args.sparsity, epochs=args.epochs,
                             weight_bits=bits)
        result = prune_model(copy.deepcopy(dense), config, data=data)
        path = work / f"digits-{'plain' if bits is None else f'b{bits}'}.pt"
        torch.save(result.model, path)
        for pes in pes_list:
            report, program = _build(path, pes, work, bits)
            acc = f"{100 * _rtl_accuracy(program):.2f} (float {100 * result.accuracy_after:.2f})"
            rows.append(_row("digits MLP", bits or "-", pes, report, acc))
    model_path, cal_path = lenet_model(work)
    lenet = torch.load(model_path, weights_only=False)
    for bits in (None, 4, 5):
        path = model_path
        if bits is not None:
            shared = copy.deepcopy(lenet)
            share_weights(shared, None, bits, 0)
            path = work / f"lenet-b{bits}.pt"
            torch.save(shared, path)
        for pes in pes_list:
            report, _ = _build(path, pes, work, bits, cal_path)
            rows.append(_row("LeNet-300-100", bits or "-", pes, report, "n/a (random)"))
    print(f"dense float digits MLP: {100 * dense_acc:.2f} % on the digits test split; "
          f"{args.method} at {100 * args.sparsity:g} %, {args.epochs} epochs")
    print("| model | prune --weight-bits | entry weight | P | nonzero | values | indices | "
          "pointers | codebooks | row params | total bits | bits / nonzero | vs float32 "
          "dense | accuracy, RTL (%) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
