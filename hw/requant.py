"""Integer requantization in gateware: the hardware twin of
:func:`compiler.reference.requantize`.

``y = clamp(((acc + bias) * multiplier + 2**(shift-1)) >> shift, 0 if relu else -128, 127)``,
computed as ``((p >> (shift - 1)) + 1) >> 1`` with ``p = (acc + bias) * multiplier``, which is
the same integer for every ``shift >= 1``. Shifts are per-layer constants (the compiler gives
every channel of a layer one shift), so the shift is a small multiplexer of fixed bit slices,
not a barrel shifter.
"""

from amaranth.hdl import Array, Mux, Signal, signed, unsigned, Module
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from compiler.ir import ACT_MAX, ACT_MIN, MULTIPLIER_BITS, SHIFT_MAX

__all__ = ["Requantizer"]


class Requantizer(wiring.Component):
    """Three-stage requantization pipeline with a pass-through tag. It never stalls: every
    cycle it takes a value if one is offered and delivers one three cycles later.

    Parameters
    ----------
    acc_width : int
        Signed width of the accumulator input.
    bias_width : int
        Signed width of ``acc + bias`` (the compiler proves it from the weights and biases).
    shifts : tuple of int
        The shifts in use (one per layer); the input selects one by index.
    tag_shape : ShapeLike
        Shape of a payload carried alongside, unchanged (row number, fan-out mask ...).

    Members
    -------
    i : In(stream.Signature(..., always_ready=True))
        ``acc``, ``bias``, ``multiplier``, ``shift`` (an index into ``shifts``), ``relu``,
        ``tag``.
    o : Out(stream.Signature(..., always_ready=True))
        ``value`` (signed 8-bit) and ``tag``.
    """

    def __init__(self, *, acc_width: int, bias_width: int, shifts, tag_shape=unsigned(1)):
        for name, width in (("acc_width", acc_width), ("bias_width", bias_width)):
            if not isinstance(width, int) or width < 2:
                raise TypeError(f"{name} must be an integer >= 2, not {width!r}")
        if bias_width < acc_width:
            raise ValueError(f"bias_width ({bias_width}) must be at least acc_width "
                             f"({acc_width})")
        shifts = tuple(shifts)
        if not shifts or any(not isinstance(s, int) or not 1 <= s <= SHIFT_MAX for s in shifts):
            raise ValueError(f"shifts must be integers in 1..{SHIFT_MAX}, not {shifts!r}")
        self.acc_width, self.bias_width, self.shifts = acc_width, bias_width, shifts
        self.product_width = bias_width + MULTIPLIER_BITS + 1
        in_layout = data.StructLayout({
            "acc": signed(acc_width),
            "bias": signed(bias_width),
            "multiplier": unsigned(MULTIPLIER_BITS),
            "shift": range(len(shifts)),
            "relu": unsigned(1),
            "tag": tag_shape,
        })
        out_layout = data.StructLayout({"value": signed(8), "tag": tag_shape})
        super().__init__({
            "i": In(stream.Signature(in_layout, always_ready=True)),
            "o": Out(stream.Signature(out_layout, always_ready=True)),
        })

    def elaborate(self, platform):
        m = Module()
        p = self.i.payload
        tag_shape = p.tag.shape()

        # stage 1: bias
        v1, biased = Signal(), Signal(signed(self.bias_width))
        mult1 = Signal(MULTIPLIER_BITS)
        sel1, relu1, tag1 = Signal(p.shift.shape()), Signal(), Signal(tag_shape)
        m.d.sync += [v1.eq(self.i.valid), biased.eq(p.acc + p.bias), mult1.eq(p.multiplier),
                     sel1.eq(p.shift), relu1.eq(p.relu), tag1.eq(p.tag)]

        # stage 2: multiply
        v2, product = Signal(), Signal(signed(self.product_width))
        sel2, relu2, tag2 = Signal(p.shift.shape()), Signal(), Signal(tag_shape)
        m.d.sync += [v2.eq(v1), product.eq(biased * mult1), sel2.eq(sel1), relu2.eq(relu1),
                     tag2.eq(tag1)]

        # stage 3: shift by a per-layer constant, round half up, saturate
        halved = Signal(signed(max(self.product_width, 10)))
        m.d.comb += halved.eq(Array([product >> (s - 1) for s in self.shifts])[sel2])
        # rounded = (halved + 1) >> 1; decide saturation on `halved` itself
        above = halved >= 2 * ACT_MAX + 1                       # rounded > 127
        below = Mux(relu2, halved <= -2, halved <= 2 * ACT_MIN - 2)   # rounded < 0 / -128
        low = Mux(relu2, 0, ACT_MIN)
        small = Signal(signed(10))
        m.d.comb += small.eq((halved[:10].as_signed() + 1) >> 1)
        v3, value, tag3 = Signal(), Signal(signed(8)), Signal(tag_shape)
        m.d.sync += [v3.eq(v2), tag3.eq(tag2),
                     value.eq(Mux(above, ACT_MAX, Mux(below, low, small)))]
        m.d.comb += [
            self.o.valid.eq(v3),
            self.o.payload.value.eq(value),
            self.o.payload.tag.eq(tag3),
        ]
        return m
