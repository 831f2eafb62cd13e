"""sparsemac: pruned PyTorch model -> zero-skipping sparse MAC array -> Verilog and bitstreams.

The library lives here; ``python -m compiler`` (and the ``sparsemac`` console script) is a thin
CLI over it.
"""

__version__ = "0.1.0"
