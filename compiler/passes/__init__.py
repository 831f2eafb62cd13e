"""Compiler passes: each takes IR and returns new IR (see :mod:`compiler.build` for the order)."""
