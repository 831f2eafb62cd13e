"""Amaranth 0.5 gateware of the sparse MAC array. Every parameter comes from the compiler's
:class:`~core.ir.SparseProgram`."""
