"""The digits MLP trained with quantization (QAT, 4- and 8-bit weights, 90 % sparse: the
models ``examples/train_qat_digits.py`` ships) built with their own scales, against our int8
post-training quantization of the same weights (``--requantize``).

    python benchmarks/quantized_digits.py            # prints a Markdown table (Icarus, ~min)
    python benchmarks/quantized_digits.py --limit 40 # fewer test images through the RTL

For each model: the graph's own fake-quant accuracy (``onnx.reference``) on the digits test
split (360 images), the share of its integer outputs the reference reproduces, the RTL's
accuracy (Icarus, bit-exact against the reference or the run fails), and the bits of the
PEs' weight-entry memories (value + relative index, all PEs, padding entries included) at
8 PEs; then the same for our calibration (int8 PTQ) of the dequantized weights.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from compiler import reference
from compiler.build import compile_model
from compiler.datasets import digits_split
from compiler.frontend import load_module, to_ir
from compiler.passes.imported import agreement, quantize_imported
from compiler.simulate import run_rtl
from hw.images import geometry, memories
from hw.options import HardwareOptions
from hw.verilog import generate_verilog

ROOT = Path(__file__).resolve().parents[1]
MODELS = [("4-bit QAT (QONNX)", "digits_mlp_w4.qonnx.onnx"),
          ("8-bit QAT (QDQ)", "digits_mlp_w8_qdq.onnx")]


def weight_bits(program) -> tuple[int, int]:
    """(bits of the weight-entry memories, bits of one entry)."""
    geo = geometry(program, HardwareOptions())
    specs = [m for m in memories(geo) if m.kind == "weights"]
    return sum(m.bits for m in specs), specs[0].width


def measure(program, x, y, limit, work) -> dict:
    xq = reference.quantize_input(x, program.model.input_scale)
    ref = reference.run(program, xq).outputs
    Path(work).mkdir(parents=True, exist_ok=True)
    verilog = generate_verilog(program, Path(work) / "top.v", HardwareOptions())
    hw, _, _ = run_rtl(verilog, xq[:limit], ref[:limit], lanes=program.grid.cols,
                       simulator="icarus", work_dir=Path(work) / "icarus")
    bits, entry = weight_bits(program)
    return {"reference": float((ref.argmax(1) == y).mean()),
            "rtl": float((hw.argmax(1) == y[:limit]).mean()), "rtl_inputs": len(hw),
            "weight_bits": bits, "entry_bits": entry,
            "nnz": sum(layer.nnz for layer in program.layers),
            "sparsity": 1 - sum(layer.nnz for layer in program.layers)
            / sum(layer.weight.size for layer in program.layers)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--limit", type=int, default=360, help="test images through the RTL")
    p.add_argument("--pes", type=int, default=8)
    args = p.parse_args(argv)
    x_train, x_test, _, y_test = digits_split()
    rows = []
    for label, name in MODELS:
        module = load_module(ROOT / "examples" / name)
        model = to_ir(module, Path(name).stem)
        quantized, notes = quantize_imported(model, module.quantization, x_train)
        assert not notes, notes
        with torch.no_grad():
            fake = module(torch.from_numpy(x_test)).numpy()
        agree = agreement(module, quantized, x_test)
        with tempfile.TemporaryDirectory() as work:
            own = measure(compile_model(model, x_train, args.pes,
                                        quantization=module.quantization),
                          x_test, y_test, args.limit, Path(work) / "own")
            ptq = measure(compile_model(model, x_train, args.pes), x_test, y_test, args.limit,
                          Path(work) / "ptq")
        rows.append((label, float((fake.argmax(1) == y_test).mean()), agree, own, ptq))
    print("| model | sparsity | fake-quant acc. | integer outputs equal | RTL acc. (own scales) "
          "| weight memory bits (entry) | int8 PTQ RTL acc. | int8 PTQ weight bits (entry) |")
    print("|---|---|---|---|---|---|---|---|")
    for label, fake, agree, own, ptq in rows:
        print(f"| {label} | {100 * own['sparsity']:.1f} % | {100 * fake:.2f} % | "
              f"{100 * agree['equal_outputs']:.2f} % | {100 * own['rtl']:.2f} % "
              f"({own['rtl_inputs']}) | {own['weight_bits']} ({own['entry_bits']}) | "
              f"{100 * ptq['rtl']:.2f} % | {ptq['weight_bits']} ({ptq['entry_bits']}) |")


if __name__ == "__main__":
    main()
