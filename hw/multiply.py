"""A registered multiplier: ``p = a * b``, two cycles after ``a`` and ``b``.

Both operands go into registers, and the product into a register behind the multiply. Written
this way (rather than as registers around a ``*`` in the caller) so that a family whose DSP
tiles have registers of their own can put all three inside the tile: on a large chip the DSP
tiles sit in a few rows, and fabric registers are placed beside the logic that feeds them, not
beside the DSP, so the hops to and from the tile stay long (docs/benchmarks.md, section 0).

The design does not say which tile: a platform's ``get_multiplier()`` hook may return an
implementation of the component (the ECP5 family returns a MULT18X18D with its input and output
registers enabled, ``boards/families/ecp5.py``), as Amaranth's own ``get_memory()`` hook does
for memories. Without a hook, or when it returns None, the registers are fabric flip-flops
around a ``*`` that the synthesiser maps to a DSP as it would any product.
"""

from __future__ import annotations

from amaranth.hdl import Module, Shape, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["Multiplier", "product_shape"]


def product_shape(a: Shape, b: Shape) -> Shape:
    """The shape of ``a * b``, as Amaranth gives it: as wide as both operands together, signed
    when either is."""
    a, b = Shape.cast(a), Shape.cast(b)
    width = a.width + b.width
    return signed(width) if a.signed or b.signed else unsigned(width)


class Multiplier(wiring.Component):
    """Members
    -------
    a : In(a_shape), b : In(b_shape)
        The operands, taken every cycle (no enable: the pipelines around it never stall).
    p : Out(product_shape(a_shape, b_shape))
        ``a * b`` of two cycles before, from a register.
    """

    #: cycles from the operands to their product
    latency = 2

    def __init__(self, a_shape, b_shape):
        self.a_shape, self.b_shape = Shape.cast(a_shape), Shape.cast(b_shape)
        super().__init__({"a": In(self.a_shape), "b": In(self.b_shape),
                          "p": Out(product_shape(self.a_shape, self.b_shape))})

    def elaborate(self, platform):
        hook = getattr(platform, "get_multiplier", None)
        if hook is not None:
            implementation = hook(self)
            if implementation is not None:
                return implementation
        m = Module()
        a = Signal(self.a_shape, name="a_reg", reset_less=True)
        b = Signal(self.b_shape, name="b_reg", reset_less=True)
        p = Signal(self.p.shape(), name="p_reg", reset_less=True)
        m.d.sync += [a.eq(self.a), b.eq(self.b), p.eq(a * b)]
        m.d.comb += self.p.eq(p)
        return m
