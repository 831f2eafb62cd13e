"""Pooling of requantized values, window by window: the hardware twin of
:func:`compiler.reference.pool`."""

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from compiler.ir import MULTIPLIER_BITS, SHIFT_MAX

from .requant import Requantizer

__all__ = ["Pooler", "POOL_NONE", "POOL_MAX", "POOL_AVG"]

POOL_NONE, POOL_MAX, POOL_AVG = 0, 1, 2


class Pooler(wiring.Component):
    """Reduces each window of int8 values (marked ``first``/``last``) to one value: the maximum,
    or ``requantize(sum, multiplier, shift, relu)`` for an average. With ``mode`` =
    ``POOL_NONE`` values pass straight through, in the same cycle.

    Parameters
    ----------
    tag_shape : ShapeLike
        Shape of a payload carried with the last value of each window.
    sum_width : int
        Signed width of a window's sum.
    average : bool
        Whether an averaging datapath is built at all.

    Members
    -------
    i : In(stream.Signature(...))
        ``value`` (signed 8-bit), ``first``, ``last``, ``tag``.
    o : Out(stream.Signature(...))
        ``value`` (signed 8-bit) and the window's ``tag``.
    mode, multiplier, shift, relu : In
        The layer's pooling; must not change while a window is in flight.
    """

    def __init__(self, *, tag_shape, sum_width: int, average: bool):
        if not isinstance(sum_width, int) or sum_width < 9:
            raise ValueError(f"sum_width must be an integer >= 9, not {sum_width!r}")
        self.tag_shape, self.sum_width, self.average = tag_shape, sum_width, average
        super().__init__({
            "i": In(stream.Signature(data.StructLayout({
                "value": signed(8), "first": 1, "last": 1, "tag": tag_shape}))),
            "o": Out(stream.Signature(data.StructLayout({"value": signed(8), "tag": tag_shape}))),
            "mode": In(2),
            "multiplier": In(MULTIPLIER_BITS),
            "shift": In(range(SHIFT_MAX + 1)),
            "relu": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        p = self.i.payload
        running = Signal(signed(self.sum_width))
        value = p.value
        maximum = Mux(p.first | (value > running), value, running)
        total = Mux(p.first, value, running + value)
        with m.If(self.i.valid & self.i.ready & ~p.last):
            m.d.sync += running.eq(Mux(self.mode == POOL_MAX, maximum, total))

        # the maximum: one output register
        max_valid = Signal()
        max_value = Signal(signed(8))
        max_tag = Signal(self.tag_shape)
        max_free = ~max_valid | (self.o.ready & (self.mode == POOL_MAX))
        with m.If(max_free):
            m.d.sync += max_valid.eq(0)
        with m.If(self.i.valid & p.last & (self.mode == POOL_MAX) & max_free):
            m.d.sync += [max_valid.eq(1), max_value.eq(maximum), max_tag.eq(p.tag)]

        avg_ready = Signal()
        if self.average:
            m.submodules.average = avg = Requantizer(acc_width=self.sum_width,
                                                     bias_width=self.sum_width,
                                                     tag_shape=self.tag_shape)
            m.d.comb += [
                avg.i.valid.eq(self.i.valid & p.last & (self.mode == POOL_AVG)),
                avg.i.payload.acc.eq(total),
                avg.i.payload.bias.eq(0),
                avg.i.payload.multiplier.eq(self.multiplier),
                avg.i.payload.shift.eq(self.shift),
                avg.i.payload.relu.eq(self.relu),
                avg.i.payload.tag.eq(p.tag),
                avg.o.ready.eq(self.o.ready & (self.mode == POOL_AVG)),
                avg_ready.eq(avg.i.ready),
            ]

        with m.Switch(self.mode):
            with m.Case(POOL_NONE):
                m.d.comb += [
                    self.o.valid.eq(self.i.valid),
                    self.o.payload.value.eq(p.value),
                    self.o.payload.tag.eq(p.tag),
                    self.i.ready.eq(self.o.ready),
                ]
            with m.Case(POOL_MAX):
                m.d.comb += [
                    self.o.valid.eq(max_valid),
                    self.o.payload.value.eq(max_value),
                    self.o.payload.tag.eq(max_tag),
                    self.i.ready.eq(~p.last | max_free),
                ]
            if self.average:
                with m.Case(POOL_AVG):
                    m.d.comb += [
                        self.o.valid.eq(avg.o.valid),
                        self.o.payload.value.eq(avg.o.payload.value),
                        self.o.payload.tag.eq(avg.o.payload.tag),
                        self.i.ready.eq(~p.last | avg_ready),
                    ]
        return m
