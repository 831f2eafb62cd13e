"""Pooling of requantized values, window by window: the hardware twin of
:func:`compiler.reference.pool`."""

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from compiler.ir import MULTIPLIER_BITS

from .requant import Requantizer

__all__ = ["Pooler", "POOL_NONE", "POOL_MAX", "POOL_AVG"]

POOL_NONE, POOL_MAX, POOL_AVG = 0, 1, 2


class Pooler(wiring.Component):
    """Reduces each window of int8 values (marked ``first``/``last``) to one value: the maximum
    (one cycle later), or ``requantize(sum, multiplier, shifts[shift], relu)`` for an average
    (three cycles later). With ``mode`` = ``POOL_NONE`` values pass straight through in the same
    cycle. Never stalls.

    Parameters
    ----------
    tag_shape : ShapeLike
        Shape of a payload carried with the last value of each window.
    sum_width : int
        Signed width of a window's sum.
    shifts : tuple of int or None
        Shifts of the averaging layers; None builds no averaging datapath.
    deep : bool
        The averaging requantizer's extra stage (see :class:`~hw.requant.Requantizer`).

    Members
    -------
    i : In(stream.Signature(..., always_ready=True))
        ``value`` (signed 8-bit), ``first``, ``last``, ``tag``.
    o : Out(stream.Signature(..., always_ready=True))
        ``value`` (signed 8-bit) and the window's ``tag``.
    mode, multiplier, shift, relu : In
        The layer's pooling; must not change while a window is in flight.
    """

    def __init__(self, *, tag_shape, sum_width: int, shifts=None, deep: bool = False):
        if not isinstance(sum_width, int) or sum_width < 9:
            raise ValueError(f"sum_width must be an integer >= 9, not {sum_width!r}")
        self.tag_shape, self.sum_width, self.deep = tag_shape, sum_width, deep
        self.shifts = None if shifts is None else tuple(shifts)
        super().__init__({
            "i": In(stream.Signature(data.StructLayout({
                "value": signed(8), "first": 1, "last": 1, "tag": tag_shape}),
                always_ready=True)),
            "o": Out(stream.Signature(data.StructLayout({"value": signed(8), "tag": tag_shape}),
                                      always_ready=True)),
            "mode": In(2),
            "multiplier": In(MULTIPLIER_BITS),
            "shift": In(range(max(1, len(self.shifts or ())))),
            "relu": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        p = self.i.payload
        running = Signal(signed(self.sum_width))
        maximum = Mux(p.first | (p.value > running), p.value, running)
        total = Mux(p.first, p.value, running + p.value)
        with m.If(self.i.valid & ~p.last):
            m.d.sync += running.eq(Mux(self.mode == POOL_MAX, maximum, total))

        max_valid = Signal()
        max_value = Signal(signed(8))
        max_tag = Signal(self.tag_shape)
        m.d.sync += [max_valid.eq(self.i.valid & p.last & (self.mode == POOL_MAX)),
                     max_value.eq(maximum), max_tag.eq(p.tag)]

        if self.shifts is not None:
            m.submodules.average = avg = Requantizer(
                acc_width=self.sum_width, bias_width=self.sum_width, shifts=self.shifts,
                tag_shape=self.tag_shape, deep=self.deep)
            m.d.comb += [
                avg.i.valid.eq(self.i.valid & p.last & (self.mode == POOL_AVG)),
                avg.i.payload.acc.eq(total),
                avg.i.payload.bias.eq(0),
                avg.i.payload.multiplier.eq(self.multiplier),
                avg.i.payload.shift.eq(self.shift),
                avg.i.payload.relu.eq(self.relu),
                avg.i.payload.tag.eq(p.tag),
            ]

        with m.Switch(self.mode):
            with m.Case(POOL_NONE):
                m.d.comb += [
                    self.o.valid.eq(self.i.valid),
                    self.o.payload.value.eq(p.value),
                    self.o.payload.tag.eq(p.tag),
                ]
            with m.Case(POOL_MAX):
                m.d.comb += [
                    self.o.valid.eq(max_valid),
                    self.o.payload.value.eq(max_value),
                    self.o.payload.tag.eq(max_tag),
                ]
            if self.shifts is not None:
                with m.Case(POOL_AVG):
                    m.d.comb += [
                        self.o.valid.eq(avg.o.valid),
                        self.o.payload.value.eq(avg.o.payload.value),
                        self.o.payload.tag.eq(avg.o.payload.tag),
                    ]
        return m
