"""Calibration data for the fit check's logic model (boards/families/<family>.py): synthesises one PE and one
reducer of a design with Yosys (``synth_ecp5`` / ``synth_ice40``, not flattened) for a sweep of
models, P and options, prints their cells and the model's prediction beside them, and the
least-squares coefficients those measurements give.

    python benchmarks/fit_model.py                    # ECP5, the default sweep (minutes)
    python benchmarks/fit_model.py --family ice40
    python benchmarks/fit_model.py --quick            # three designs

Placed builds (benchmarks/board_builds.py) check the model on whole designs; this script
explains the per-component terms.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from amaranth.back import verilog
from amaranth.hdl import Signal, Value

from boards.families import get_family
from boards.fit import component_logic, logic_terms
from boards.toolchain import find_tool
from compiler.build import compile_model
from compiler.datasets import digits_split
from compiler.frontend import load_model
from hw.images import geometry
from hw.options import HardwareOptions
from hw.pe import SparsePE
from hw.reducer import Reducer

ROOT = Path(__file__).resolve().parent.parent

#: model, P, banks
SWEEP = [("digits", 4, 2), ("digits", 8, 2), ("digits", 16, 2), ("digits", 64, 2),
         ("digits", 16, 1), ("lenet", 8, 2), ("lenet", 16, 2), ("lenet", 32, 2),
         ("lenet", 64, (2, 1, 1)), ("lenet", 64, 1)]
QUICK = [("digits", 8, 2), ("lenet", 64, (2, 1, 1)), ("lenet", 16, 1)]


def _program(name: str, pes: int, work: Path):
    if name == "lenet":
        from board_builds import lenet_model
        model_path, cal_path = lenet_model(work)
        return compile_model(load_model(str(model_path)), np.load(cal_path), pes)
    return compile_model(load_model(str(ROOT / "examples" / "digits_mlp.pt")),
                         digits_split()[0], pes)


def _synth(component, name: str, family: str, work: Path) -> dict:
    ports = [Value.cast(v) for _, _, v in component.signature.flatten(component)]
    ports = [p for p in ports if isinstance(p, Signal)]
    (work / f"{name}.v").write_text(verilog.convert(component, name=name, emit_src=False,
                                                    ports=ports))
    flags = "-dsp -device u " if family == "ice40" else ""
    subprocess.run([find_tool("yosys"), "-q", "-l", f"{name}.log", "-p",
                    f"read_verilog {name}.v; synth_{family} {flags}-top {name}; stat"],
                   cwd=work, check=True)
    log = (work / f"{name}.log").read_text()
    stat = log[log.rindex("Printing statistics"):]
    return {kind: int(n) for n, kind in re.findall(r"^\s+(\d+)\s+(\S+)\s*$", stat, re.M)}


def comb(cells: dict, family: str) -> int:
    """What nextpnr will count: ECP5 TRELLIS_COMB (a CCU2C or a DPR16X4 fills two), iCE40
    LUT4s."""
    if family == "ice40":
        return cells.get("SB_LUT4", 0)
    return (cells.get("LUT4", 0) + 2 * cells.get("CCU2C", 0)
            + 2 * cells.get("TRELLIS_DPR16X4", 0))


def flops(cells: dict) -> int:
    return sum(n for kind, n in cells.items() if "FF" in kind or kind.startswith("SB_DFF"))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=["ecp5", "ice40"], default="ecp5")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    family = args.family
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name, pes, banks in (QUICK if args.quick else SWEEP):
            program = _program(name, pes, work)
            options = HardwareOptions(banks=banks, **({"accumulators": "block",
                                                        "pipeline": "deep", "fifo_depth": 8}
                                                       if family == "ice40" else {}))
            if isinstance(banks, tuple) and len(banks) != len(program.layers):
                continue
            geo = geometry(program, options)
            pe = _synth(SparsePE(program, geo, 0, 0), "pe", family, work)
            red = _synth(Reducer(program, geo, 0), "reducer", family, work)
            model = component_logic(geo, get_family(family))
            rows.append((name, pes, str(program.grid), banks, comb(pe, family), flops(pe),
                         comb(red, family), flops(red), model,
                         logic_terms(geo, get_family(family))))
    print("| model | P | grid | banks | PE LUT (model) | PE FF (model) | reducer LUT (model) "
          "| reducer FF (model) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, pes, grid, banks, pl, pf, rl, rf, mod, _ in rows:
        print(f"| {name} | {pes} | {grid} | {banks} | {pl} ({mod['pe_lut']}) | {pf} "
              f"({mod['pe_ff']}) | {rl} ({mod['reducer_lut']}) | {rf} ({mod['reducer_ff']}) |")
    print()
    print(f"least-squares coefficients (boards/families/{family}.py logic_model):")
    for key, column in (("pe_lut", 4), ("pe_ff", 5), ("reducer_lut", 6), ("reducer_ff", 7)):
        terms = np.array([r[9][key] for r in rows], dtype=float)
        measured = np.array([r[column] for r in rows], dtype=float)
        coef, *_ = np.linalg.lstsq(terms, measured, rcond=None)
        worst = np.abs(terms @ coef / measured - 1).max()
        print(f"  {key}: {tuple(round(float(c), 3) for c in coef)}  (worst error "
              f"{100 * worst:.1f} %)")


if __name__ == "__main__":
    main()
