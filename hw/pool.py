"""Pooling of requantized values, window by window: the hardware twin of
:func:`compiler.reference.pool`."""

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from core.arith import MULTIPLIER_BITS

from .requant import Requantizer

__all__ = ["Pooler", "POOL_NONE", "POOL_MAX", "POOL_AVG"]

POOL_NONE, POOL_MAX, POOL_AVG = 0, 1, 2


class Pooler(wiring.Component):
    """Reduces each window of int8 values (marked ``first``/``last``) to one value: the
    maximum, or ``requantize(sum, multiplier, shifts[shift], relu)`` for an average; with
    ``mode`` = ``POOL_NONE`` every value is its own window. Each value carries its own mode
    and settings, so windows of different layers may follow each other back to back, and
    every result leaves exactly :attr:`latency` cycles after its window's last value (in
    order, whatever the modes). Never stalls.

    Parameters
    ----------
    tag_shape : ShapeLike
        Shape of a payload carried with the last value of each window.
    sum_width : int
        Signed width of a window's sum.
    shifts : tuple of int or None
        Shifts of the averaging layers; None builds no averaging datapath.
    deep : bool
        The averaging requantizer's extra stages (see :class:`~hw.requant.Requantizer`).

    Members
    -------
    i : In(stream.Signature(..., always_ready=True))
        ``value`` (signed 8-bit), ``first``, ``last``, ``mode``, ``multiplier``, ``shift``
        (an index into ``shifts``), ``relu``, ``tag``.
    o : Out(stream.Signature(..., always_ready=True))
        ``value`` (signed 8-bit) and the window's ``tag``.
    """

    def __init__(self, *, tag_shape, sum_width: int, shifts=None, deep: bool = False):
        if not isinstance(sum_width, int) or sum_width < 9:
            raise ValueError(f"sum_width must be an integer >= 9, not {sum_width!r}")
        self.tag_shape, self.sum_width, self.deep = tag_shape, sum_width, deep
        self.shifts = None if shifts is None else tuple(shifts)
        #: cycles from a window's last value to its result
        self.latency = 1 + (Requantizer.stages(deep) if self.shifts is not None else 0)
        super().__init__({
            "i": In(stream.Signature(data.StructLayout({
                "value": signed(8), "first": 1, "last": 1, "mode": 2,
                "multiplier": unsigned(MULTIPLIER_BITS),
                "shift": range(max(1, len(self.shifts or ()))), "relu": 1,
                "tag": tag_shape}), always_ready=True)),
            "o": Out(stream.Signature(data.StructLayout({"value": signed(8), "tag": tag_shape}),
                                      always_ready=True)),
        })

    def elaborate(self, platform):
        m = Module()
        p = self.i.payload
        running = Signal(signed(self.sum_width))
        maximum = Mux(p.first | (p.value > running), p.value, running)
        total = Mux(p.first, p.value, running + p.value)
        with m.If(self.i.valid & ~p.last):
            m.d.sync += running.eq(Mux(p.mode == POOL_MAX, maximum, total))

        # stage 1: the window's result (a maximum, or the value itself), or its sum
        done = self.i.valid & (p.last | (p.mode == POOL_NONE))
        s1_valid, s1_avg = Signal(), Signal()
        s1_value, s1_tag = Signal(signed(8)), Signal(self.tag_shape)
        m.d.sync += [s1_valid.eq(done), s1_avg.eq(p.mode == POOL_AVG), s1_tag.eq(p.tag),
                     s1_value.eq(Mux(p.mode == POOL_MAX, maximum, p.value))]
        if self.shifts is None:
            m.d.comb += [self.o.valid.eq(s1_valid), self.o.payload.value.eq(s1_value),
                         self.o.payload.tag.eq(s1_tag)]
            return m
        # averages go through a requantizer; everything else waits beside it as long
        m.submodules.average = avg = Requantizer(
            acc_width=self.sum_width, bias_width=self.sum_width, shifts=self.shifts,
            tag_shape=data.StructLayout({"tag": self.tag_shape, "avg": 1, "value": signed(8)}),
            deep=self.deep)
        s1_sum = Signal(signed(self.sum_width))
        s1_mult, s1_shift = Signal.like(p.multiplier), Signal.like(p.shift)
        s1_relu = Signal()
        m.d.sync += [s1_sum.eq(total), s1_mult.eq(p.multiplier), s1_shift.eq(p.shift),
                     s1_relu.eq(p.relu)]
        m.d.comb += [
            avg.i.valid.eq(s1_valid),
            avg.i.payload.acc.eq(s1_sum),
            avg.i.payload.bias.eq(0),
            avg.i.payload.multiplier.eq(s1_mult),
            avg.i.payload.shift.eq(s1_shift),
            avg.i.payload.relu.eq(s1_relu),
            avg.i.payload.tag.tag.eq(s1_tag),
            avg.i.payload.tag.avg.eq(s1_avg),
            avg.i.payload.tag.value.eq(s1_value),
            self.o.valid.eq(avg.o.valid),
            self.o.payload.value.eq(Mux(avg.o.payload.tag.avg, avg.o.payload.value,
                                        avg.o.payload.tag.value)),
            self.o.payload.tag.eq(avg.o.payload.tag.tag),
        ]
        return m
