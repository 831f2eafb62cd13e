"""Verilog for a compiled program (Amaranth's backend with its built-in Yosys)."""

from pathlib import Path

from amaranth.back import verilog

from compiler.ir import SparseProgram

from .top import SparseAccelerator

__all__ = ["TOPLEVEL", "generate_verilog"]

#: Module name of the generated top level.
TOPLEVEL = "sparsemac_top"


def generate_verilog(program: SparseProgram, path, *, queue_depth: int | None = None) -> Path:
    """Write the accelerator for ``program`` to ``path``; returns the path."""
    top = SparseAccelerator(program, queue_depth=queue_depth)
    text = verilog.convert(top, name=TOPLEVEL, emit_src=False)
    path = Path(path)
    path.write_text(text)
    return path
