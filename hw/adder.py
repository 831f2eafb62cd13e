"""A registered adder tree: the sum of ``n`` signed inputs, ``latency`` cycles later.

Integer addition is exact in any order, so the tree's shape never changes a result; it only
bounds the logic between registers (two adder levels per stage).
"""

from amaranth.hdl import Module, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["AdderTree"]


class AdderTree(wiring.Component):
    """``o`` = sum of ``i``, ``latency`` cycles after ``i`` (every cycle a new set).

    Parameters
    ----------
    n : int
        Inputs.
    width : int
        Signed width of each input.
    out_width : int
        Signed width of the sum (the caller proves it holds every sum).
    levels_per_stage : int
        Adder levels between registers.

    Members
    -------
    i : In(ArrayLayout(signed(width), n))
    o : Out(signed(out_width))
    """

    def __init__(self, n: int, width: int, out_width: int, *, levels_per_stage: int = 2):
        for name, value in (("n", n), ("width", width), ("out_width", out_width),
                            ("levels_per_stage", levels_per_stage)):
            if not isinstance(value, int) or value < 1:
                raise TypeError(f"{name} must be a positive integer, not {value!r}")
        self.n, self.width, self.out_width = n, width, out_width
        self.levels_per_stage = levels_per_stage
        levels = max(0, (n - 1).bit_length())
        #: cycles from ``i`` to ``o`` (at least one: the output is a register)
        self.latency = max(1, -(-levels // levels_per_stage))
        super().__init__({"i": In(data.ArrayLayout(signed(width), n)),
                          "o": Out(signed(out_width))})

    def elaborate(self, platform):
        m = Module()
        values = [self.i[k] for k in range(self.n)]
        level = 0
        stage = 0
        while len(values) > 1:
            values = [values[k] + values[k + 1] if k + 1 < len(values) else values[k]
                      for k in range(0, len(values), 2)]
            level += 1
            if level % self.levels_per_stage == 0 and len(values) > 1:
                regs = []
                for k, value in enumerate(values):
                    reg = Signal(signed(self.out_width), name=f"s{stage}_{k}")
                    m.d.sync += reg.eq(value)
                    regs.append(reg)
                values = regs
                stage += 1
        m.d.sync += self.o.eq(values[0])
        return m
