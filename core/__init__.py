"""The ground layer of sparsemac: the IR (``core.ir``), the integer arithmetic's constants
(``core.arith``) and the user-facing errors (``core.errors``).

Every other package (``hw``, ``boards``, ``sim``, ``compiler``) may import it; it imports
nothing of ours. ``python -m compiler.layers`` prints the import graph of the packages.
"""
