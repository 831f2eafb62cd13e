"""Cycles and accuracy of the bundled examples (and LeNet-300-100), measured in RTL simulation.

    python benchmarks/cycles.py                      # the MLP, P = 8, the whole test split
    python benchmarks/cycles.py --model cnn          # the CNN
    python benchmarks/cycles.py --model lenet --pes 64 --limit 100   # LeNet-300-100
    python benchmarks/cycles.py --pes 1 2 4 8 16     # a sweep
    python benchmarks/cycles.py --memory block --accumulators block --pointers counted
                                                     # the iCE40 gateware
    python benchmarks/cycles.py --banks 1            # one accumulator bank a layer

For each P it builds the model twice - sparse (zero weights and zero activations skipped) and
dense (every weight stored, every input processed: the same array doing dense work) - streams
the inputs back to back through the generated Verilog under cocotb, checks every output
against the reference model bit-exactly, and prints cycles per inference (streaming: all the
cycles over the number of inferences; inferences overlap in the array) against the ideal
``sum over layers of ceil(nnz_active / P)``, the latency of one inference, the dense/sparse
ratio, and the accuracy of the RTL against float PyTorch (the examples). "gather bound" is what
an im2col/gather dataflow would need at least on the same P MACs (every nonzero weight at every
output position: zero activations cannot be skipped without an intersection unit), computed
from the model, not simulated. LeNet-300-100 is 92 % magnitude-pruned random weights with
random inputs (``benchmarks/board_builds.py``): cycles, not accuracy.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from compiler import reference
from compiler.build import compile_model
from compiler.datasets import DIGITS_IMAGE, digits_split
from compiler.frontend import load_model, load_module
from compiler.simulate import run_rtl
from hw.options import (
    ACCUMULATOR_STYLES,
    MEMORY_STYLES,
    PIPELINES,
    POINTER_STYLES,
    HardwareOptions,
)
from hw.verilog import generate_verilog

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = {"mlp": ROOT / "examples" / "digits_mlp.pt", "cnn": ROOT / "examples" / "digits_cnn.pt"}


def measure(model, calibration, x, pes, simulator, work, options, dense=False, grid=None):
    program = compile_model(model, calibration, pes, dense=dense, grid=grid)
    xq = reference.quantize_input(x, program.model.input_scale)
    expected = reference.run(program, xq)
    tag = f"p{pes}{'d' if dense else ''}"
    verilog = generate_verilog(program, work / f"{tag}.v", options)
    hw, cycles, intervals = run_rtl(verilog, xq, expected.outputs, lanes=program.grid.cols,
                                    simulator=simulator, work_dir=work / f"sim_{tag}")
    return program, expected, hw, cycles, intervals


def _inputs(name, limit):
    """(model, calibration, inputs, labels or None, float accuracy or None)."""
    if name == "lenet":
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from board_builds import lenet_model
        model_path, cal_path = lenet_model(Path(tempfile.gettempdir()) / "sparsemac_lenet")
        rng = np.random.default_rng(1)
        x = rng.random((limit or 100, 784), dtype=np.float32)
        return load_model(model_path), np.load(cal_path), x, None, None
    x_train, x_test, _, y_test = digits_split()
    if limit:
        x_test, y_test = x_test[:limit], y_test[:limit]
    shape = DIGITS_IMAGE if name == "cnn" else None
    model = load_model(EXAMPLES[name], input_shape=shape)
    module = load_module(EXAMPLES[name])
    with torch.no_grad():
        images = x_test.reshape(-1, *DIGITS_IMAGE) if shape else x_test
        float_pred = module(torch.from_numpy(images)).argmax(1).numpy()
    return model, x_train, x_test, y_test, float((float_pred == y_test).mean())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(EXAMPLES) + ["lenet"], default="mlp")
    parser.add_argument("--pes", type=int, nargs="+", default=[8])
    parser.add_argument("--grid", default=None, help="R x C (one P only; default: squarest)")
    parser.add_argument("--memory", choices=MEMORY_STYLES, default="block",
                        help="weight and pointer memories: block (the ECP5 default) or "
                        "distributed (LUT RAM)")
    parser.add_argument("--accumulators", choices=ACCUMULATOR_STYLES, default="distributed")
    parser.add_argument("--pointers", choices=POINTER_STYLES, default="csc")
    parser.add_argument("--pipeline", choices=PIPELINES, default="short",
                        help="deep: the iCE40 default (registered control, a few more cycles)")
    parser.add_argument("--banks", type=int, default=2, help="accumulator banks a layer")
    parser.add_argument("--simulator", default="verilator", choices=["icarus", "verilator"])
    parser.add_argument("--limit", type=int, default=None, help="first N test inputs only")
    parser.add_argument("--no-dense", action="store_true", help="skip the dense baseline")
    args = parser.parse_args(argv)
    options = HardwareOptions(memory=args.memory, pipeline=args.pipeline, banks=args.banks,
                              accumulators=args.accumulators, pointers=args.pointers)
    model, calibration, x, labels, float_acc = _inputs(args.model, args.limit)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for pes in args.pes:
            started = time.perf_counter()
            program, expected, hw, cycles, intervals = measure(
                model, calibration, x, pes, args.simulator, work, options, grid=args.grid)
            ideal = expected.ideal_cycles
            streaming = float(intervals.sum()) / len(intervals)
            # a gather (im2col) dataflow visits every nonzero weight at every output position:
            # it cannot skip zero activations without an intersection unit
            gather = sum(-(-int(np.count_nonzero(layer.matrix(quantized=True))) // pes)
                         for layer in program.layers)
            row = {"pes": pes, "grid": str(program.grid), "ideal": ideal.mean(),
                   "bound": expected.pe_bound.mean(), "gather": gather,
                   "streaming": streaming, "ratio": streaming / ideal.mean(),
                   "latency": cycles.mean(),
                   "rtl_acc": None if labels is None else float(
                       (hw.argmax(1) == labels).mean())}
            if not args.no_dense:
                _, _, hw_dense, _, dense_intervals = measure(
                    model, calibration, x, pes, args.simulator, work, options, dense=True,
                    grid=args.grid)
                assert np.array_equal(hw_dense, hw)
                row["dense"] = float(dense_intervals.sum()) / len(dense_intervals)
            row["seconds"] = time.perf_counter() - started
            rows.append(row)

    print(f"{args.model}: {len(x)} inputs streamed, simulator {args.simulator}, options "
          f"{options}; every RTL output equals the reference model (np.array_equal)")
    if float_acc is not None:
        print(f"accuracy: float PyTorch {100 * float_acc:.2f} %")
    print()
    print("| P | grid | ideal | PE bound | streaming cycles/inference | streaming / ideal "
          "| latency | gather bound | dense streaming | dense / sparse | RTL accuracy |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        dense = r.get("dense")
        dense_text = f"{dense:.0f}" if dense else "-"
        speedup = f"{dense / r['streaming']:.1f}" if dense else "-"
        acc = "-" if r["rtl_acc"] is None else f"{100 * r['rtl_acc']:.2f} %"
        print(f"| {r['pes']} | {r['grid']} | {r['ideal']:.1f} | {r['bound']:.1f} "
              f"| {r['streaming']:.1f} | {r['ratio']:.3f} | {r['latency']:.0f} | {r['gather']} "
              f"| {dense_text} | {speedup} | {acc} |")


if __name__ == "__main__":
    main()
