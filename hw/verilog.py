"""Verilog for a compiled program (Amaranth's backend with its built-in Yosys)."""

from pathlib import Path

from amaranth.back import verilog

from core.ir import SparseProgram

from .options import HardwareOptions
from .top import SparseAccelerator

__all__ = ["TOPLEVEL", "generate_verilog"]

#: Module name of the generated top level.
TOPLEVEL = "sparsemac_top"


def generate_verilog(program: SparseProgram, path, options: HardwareOptions | None = None
                     ) -> Path:
    """Write the accelerator for ``program`` to ``path``; returns the path."""
    top = SparseAccelerator(program, options)
    text = verilog.convert(top, name=TOPLEVEL, emit_src=False)
    path = Path(path)
    path.write_text(text)
    return path
