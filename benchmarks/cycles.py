"""Cycles and accuracy of the bundled examples, measured in RTL simulation.

    python benchmarks/cycles.py                      # the MLP, P = 8, the whole test split
    python benchmarks/cycles.py --model cnn          # the CNN
    python benchmarks/cycles.py --pes 1 2 4 8 16     # a sweep
    python benchmarks/cycles.py --memory block       # block RAM (the ECP5 default)
    python benchmarks/cycles.py --memory block --pipeline deep   # the iCE40 default
    python benchmarks/cycles.py --limit 50           # fewer inputs

For each P it builds the example twice - sparse (zero weights and zero activations skipped) and
dense (every weight stored, every input processed: the same array doing dense work) - runs the
test split through the generated Verilog under cocotb, checks every output against the
reference model bit-exactly, and prints cycles per inference against the ideal
``sum over layers of ceil(nnz_active / P)``, the dense/sparse ratio, and the accuracy of the
RTL against float PyTorch. "gather bound" is what an im2col/gather dataflow would need at
least on the same P MACs (every nonzero weight at every output position: zero activations
cannot be skipped without an intersection unit), computed from the model, not simulated.
"""

from __future__ import annotations

import argparse
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
from hw.options import MEMORY_STYLES, PIPELINES, HardwareOptions
from hw.verilog import generate_verilog

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = {"mlp": ROOT / "examples" / "digits_mlp.pt", "cnn": ROOT / "examples" / "digits_cnn.pt"}


def measure(model, calibration, x, pes, simulator, work, memory, dense=False,
            pipeline="short"):
    program = compile_model(model, calibration, pes, dense=dense)
    xq = reference.quantize_input(x, program.model.input_scale)
    expected = reference.run(program, xq)
    verilog = generate_verilog(program, work / f"p{pes}{'d' if dense else ''}.v",
                               HardwareOptions(memory=memory, pipeline=pipeline))
    hw, cycles = run_rtl(verilog, xq, expected.outputs, simulator=simulator,
                         work_dir=work / f"sim_p{pes}{'d' if dense else ''}")
    return program, expected, hw, cycles


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(EXAMPLES), default="mlp")
    parser.add_argument("--pes", type=int, nargs="+", default=[8])
    parser.add_argument("--memory", choices=MEMORY_STYLES, default="distributed",
                        help="distributed: LUT RAM (the Arty default); block: block RAM "
                        "(the iCE40 and ECP5 default)")
    parser.add_argument("--pipeline", choices=PIPELINES, default="short",
                        help="deep: the iCE40 default (registered control, a few more cycles)")
    parser.add_argument("--simulator", default="verilator", choices=["icarus", "verilator"])
    parser.add_argument("--limit", type=int, default=None, help="first N test inputs only")
    parser.add_argument("--no-dense", action="store_true", help="skip the dense baseline")
    args = parser.parse_args(argv)

    x_train, x_test, _, y_test = digits_split()
    if args.limit:
        x_test, y_test = x_test[: args.limit], y_test[: args.limit]
    shape = DIGITS_IMAGE if args.model == "cnn" else None
    model = load_model(EXAMPLES[args.model], input_shape=shape)
    module = load_module(EXAMPLES[args.model])
    with torch.no_grad():
        images = x_test.reshape(-1, *DIGITS_IMAGE) if shape else x_test
        float_pred = module(torch.from_numpy(images)).argmax(1).numpy()
    float_acc = float((float_pred == y_test).mean())

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for pes in args.pes:
            started = time.perf_counter()
            program, expected, hw, cycles = measure(model, x_train, x_test, pes,
                                                    args.simulator, work, args.memory,
                                                    pipeline=args.pipeline)
            ideal = expected.ideal_cycles
            bound = expected.lane_entries.max(axis=2).sum(axis=1)
            acc = float((hw.argmax(1) == y_test).mean())
            # a gather (im2col) dataflow visits every nonzero weight at every output position:
            # it cannot skip zero activations without an intersection unit
            gather = sum(-(-int(np.count_nonzero(layer.matrix(quantized=True))) // pes)
                         for layer in program.layers)
            row = {"pes": pes, "ideal": ideal.mean(), "bound": bound.mean(), "gather": gather,
                   "measured": cycles.mean(), "ratio": (cycles / ideal).mean(),
                   "worst_ratio": (cycles / ideal).max(), "rtl_acc": acc,
                   "dense_formula": reference.dense_cycles(program.model, pes)}
            if not args.no_dense:
                _, _, hw_dense, dense_cycles = measure(model, x_train, x_test, pes,
                                                       args.simulator, work, args.memory,
                                                       pipeline=args.pipeline,
                                                       dense=True)
                assert np.array_equal(hw_dense, hw)
                row["dense_measured"] = dense_cycles.mean()
            row["seconds"] = time.perf_counter() - started
            rows.append(row)

    print(f"{args.model} example, digits test split: {len(x_test)} inputs, simulator "
          f"{args.simulator}, {args.memory} memories, {args.pipeline} pipeline; every RTL output equals the reference "
          f"model (np.array_equal)")
    print(f"accuracy: float PyTorch {100 * float_acc:.2f} %")
    print()
    print("| P | ideal | PE-assignment bound | measured | measured / ideal (mean, worst) "
          "| gather bound | dense measured | dense / sparse | RTL accuracy |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        dense = r.get("dense_measured")
        dense_text = f"{dense:.0f}" if dense else "-"
        speedup = f"{dense / r['measured']:.1f}" if dense else "-"
        print(f"| {r['pes']} | {r['ideal']:.1f} | {r['bound']:.1f} | {r['measured']:.1f} "
              f"| {r['ratio']:.3f}, {r['worst_ratio']:.3f} | {r['gather']} | {dense_text} "
              f"| {speedup} "
              f"| {100 * r['rtl_acc']:.2f} % |")


if __name__ == "__main__":
    main()
