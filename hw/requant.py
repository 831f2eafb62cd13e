"""Integer requantization in gateware: the hardware twin of
:func:`compiler.reference.requantize`.

``y = clamp(((acc + bias) * multiplier + 2**(shift-1)) >> shift, 0 if relu else -128, 127)``,
computed as ``((p >> (shift - 1)) + 1) >> 1`` with ``p = (acc + bias) * multiplier``, which is
the same integer for every ``shift >= 1`` and needs no wide rounding constant.
"""

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from compiler.ir import ACT_MAX, ACT_MIN, MULTIPLIER_BITS, SHIFT_MAX

__all__ = ["Requantizer"]


class Requantizer(wiring.Component):
    """Three-stage requantization pipeline with stream handshakes and a pass-through tag.

    Parameters
    ----------
    acc_width : int
        Signed width of the accumulator input.
    bias_width : int
        Signed width of ``acc + bias`` (the compiler proves it from the weights and biases).
    tag_shape : ShapeLike
        Shape of a payload carried alongside, unchanged (row number, fan-out mask ...).

    Members
    -------
    i : In(stream.Signature(...))
        ``acc``, ``bias``, ``multiplier``, ``shift``, ``relu`` and ``tag``.
    o : Out(stream.Signature(...))
        ``value`` (signed 8-bit) and ``tag``.
    """

    def __init__(self, *, acc_width: int, bias_width: int, tag_shape=unsigned(1)):
        for name, width in (("acc_width", acc_width), ("bias_width", bias_width)):
            if not isinstance(width, int) or width < 2:
                raise TypeError(f"{name} must be an integer >= 2, not {width!r}")
        if bias_width < acc_width:
            raise ValueError(f"bias_width ({bias_width}) must be at least acc_width "
                             f"({acc_width})")
        self.acc_width = acc_width
        self.bias_width = bias_width
        self.product_width = bias_width + MULTIPLIER_BITS + 1
        in_layout = data.StructLayout({
            "acc": signed(acc_width),
            "bias": signed(bias_width),
            "multiplier": unsigned(MULTIPLIER_BITS),
            "shift": unsigned(SHIFT_MAX.bit_length()),
            "relu": unsigned(1),
            "tag": tag_shape,
        })
        out_layout = data.StructLayout({"value": signed(8), "tag": tag_shape})
        super().__init__({
            "i": In(stream.Signature(in_layout)),
            "o": Out(stream.Signature(out_layout)),
        })

    def elaborate(self, platform):
        m = Module()
        advance = ~self.o.valid | self.o.ready
        m.d.comb += self.i.ready.eq(advance)

        def stage(payload_fields, valid_in):
            regs = {name: Signal(shape, name=f"{name}_{len(stages)}")
                    for name, (shape, _) in payload_fields.items()}
            valid = Signal(name=f"valid_{len(stages)}")
            with m.If(advance):
                m.d.sync += valid.eq(valid_in)
                m.d.sync += [regs[name].eq(value) for name, (_, value) in payload_fields.items()]
            stages.append(valid)
            return valid, regs

        stages = []
        p = self.i.payload
        shift_shape = unsigned(SHIFT_MAX.bit_length())
        v1, s1 = stage({
            "biased": (signed(self.bias_width), p.acc + p.bias),
            "multiplier": (unsigned(MULTIPLIER_BITS), p.multiplier),
            "shift": (shift_shape, (p.shift - 1)[:shift_shape.width]),   # shift >= 1
            "relu": (unsigned(1), p.relu),
            "tag": (p.tag.shape(), p.tag),
        }, self.i.valid)
        v2, s2 = stage({
            "product": (signed(self.product_width), s1["biased"] * s1["multiplier"]),
            "shift": (shift_shape, s1["shift"]),
            "relu": (unsigned(1), s1["relu"]),
            "tag": (p.tag.shape(), s1["tag"]),
        }, v1)
        halved = Signal(signed(self.product_width))
        m.d.comb += halved.eq(s2["product"] >> s2["shift"])
        rounded = Signal(signed(self.product_width))
        m.d.comb += rounded.eq((halved + 1) >> 1)
        low = Mux(s2["relu"], 0, ACT_MIN)
        clamped = Mux(rounded > ACT_MAX, ACT_MAX, Mux(rounded < low, low, rounded))
        v3, s3 = stage({
            "value": (signed(8), clamped),
            "tag": (p.tag.shape(), s2["tag"]),
        }, v2)
        m.d.comb += [
            self.o.valid.eq(v3),
            self.o.payload.value.eq(s3["value"]),
            self.o.payload.tag.eq(s3["tag"]),
        ]
        return m
