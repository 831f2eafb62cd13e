"""Integer requantization in gateware: the hardware twin of
:func:`compiler.reference.requantize`.

``y = clamp(((acc + bias) * multiplier + 2**(shift-1)) >> shift, 0 if relu else -128, 127)``,
computed as ``((p >> (shift - 1)) + 1) >> 1`` with ``p = (acc + bias) * multiplier``, which is
the same integer for every ``shift >= 1``. A layer marked ``half_even`` (imported with the
model's own QONNX/QDQ quantization) rounds ties to even instead: a tie (``halved`` odd, the
bits below it zero) whose lower neighbour is even (bit 1 of ``halved`` clear) rounds down.
Shifts are per-layer constants (the compiler gives
every channel of a layer one shift), so the shift is a small multiplexer of fixed bit slices,
not a barrel shifter.
"""

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from core.arith import ACT_MAX, ACT_MIN, MULTIPLIER_BITS, SHIFT_MAX

from .multiply import Multiplier

__all__ = ["Requantizer"]


class Requantizer(wiring.Component):
    """Three-stage requantization pipeline (eight when ``deep``) with a pass-through tag. It never
    stalls: every cycle it takes a value if one is offered and delivers one ``latency`` cycles
    later.

    Parameters
    ----------
    acc_width : int
        Signed width of the accumulator input.
    bias_width : int
        Signed width of ``acc + bias`` (the compiler proves it from the weights and biases).
    shifts : tuple of int
        The shifts in use (one per layer); the input selects one by index.
    half_even : tuple of bool or None
        Per entry of ``shifts``: ties round to even there (None: every tie rounds up, and no
        logic for it is built).
    tag_shape : ShapeLike
        Shape of a payload carried alongside, unchanged (row number, fan-out mask ...).
    deep : bool
        Six stages instead of three, for slow fabric: the product in two halves, each
        registered, summed a stage later; the shifted product registered before rounding and
        saturation; the saturation flags registered before the choice.

    Members
    -------
    i : In(stream.Signature(..., always_ready=True))
        ``acc``, ``bias``, ``multiplier``, ``shift`` (an index into ``shifts``), ``relu``,
        ``tag``.
    o : Out(stream.Signature(..., always_ready=True))
        ``value`` (signed 8-bit) and ``tag``.
    """

    def __init__(self, *, acc_width: int, bias_width: int, shifts, tag_shape=unsigned(1),
                 deep: bool = False, half_even=None):
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
        if half_even is not None:
            half_even = tuple(bool(h) for h in half_even)
            if len(half_even) != len(shifts):
                raise ValueError(f"half_even needs one flag per shift ({len(shifts)}), not "
                                 f"{half_even!r}")
            if not any(half_even):
                half_even = None
        self.half_even = half_even
        self.deep = deep
        self.latency = self.stages(deep)
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

    @staticmethod
    def stages(deep: bool) -> int:
        """Cycles from an input to its output."""
        return 8 if deep else 3

    def elaborate(self, platform):
        m = Module()
        p = self.i.payload

        def register(**values):
            """One pipeline register for each value (Signal copies of the same shape)."""
            regs = {}
            for name, value in values.items():
                regs[name] = Signal(value.shape(), name=f"{name}_{len(stages)}")
                m.d.sync += regs[name].eq(value)
            stages.append(regs)
            return regs

        stages = []
        # stage 1: bias
        s1 = register(valid=self.i.valid, biased=p.acc + p.bias, multiplier=p.multiplier,
                      shift=p.shift, relu=p.relu, tag=p.tag)
        # stage 2: multiply. Deep: in two halves (the low 16 bits of `biased` and the rest),
        # each a DSP tile of its own with a register behind it, summed a stage later
        if self.deep:
            # the multiply in registered multipliers (hw/multiply.py: operands and product in
            # the DSP tile's own registers where the family's tile has them; the P = 32 ECP5
            # critical path ran from the row parameters' register through a MULT18 into the
            # product's, docs/benchmarks.md, section 0), the side values in registers beside
            biased, multiplier = s1["biased"], s1["multiplier"]
            halves = ({"lo": biased[:16], "hi": biased[16:].as_signed()} if len(biased) > 16
                      else {"product": biased})
            products = {}
            for name, operand in halves.items():
                mul = Multiplier(operand.shape(), multiplier.shape())
                m.submodules[f"multiplier_{name}"] = mul
                m.d.comb += [mul.a.eq(operand), mul.b.eq(multiplier)]
                products[name] = mul.p
            side = {k: s1[k] for k in ("valid", "shift", "relu", "tag")}
            for _ in range(Multiplier.latency):
                side = register(**side)
            # and the products again, beside the reducer's logic
            s2a = register(**products, **side)
            product = ((s2a["hi"] << 16) + s2a["lo"]) if "hi" in s2a else s2a["product"]
            s2 = register(valid=s2a["valid"], product=product, shift=s2a["shift"],
                          relu=s2a["relu"], tag=s2a["tag"])
        else:
            s2 = register(valid=s1["valid"], product=s1["biased"] * s1["multiplier"],
                          shift=s1["shift"], relu=s1["relu"], tag=s1["tag"])
        # stage 3 (and 3b when deep): shift by a per-layer constant, round half up, saturate
        shifted = Array([s2["product"] >> (s - 1) for s in self.shifts])[s2["shift"]]
        # round half to even: a tie (no bits below the half bit) rounds down when the value
        # below it is even; never at a saturation edge (there the rounded-up value is even)
        if self.half_even is not None:
            exact = Array([Const(1) if s == 1 else ~s2["product"][:s - 1].any()
                           for s in self.shifts])[s2["shift"]]
            even = Array([Const(int(h)) for h in self.half_even])[s2["shift"]]
            down = even & exact & shifted[0] & ~shifted[1]
        else:
            down = Const(0)
        if self.deep:
            s3 = register(valid=s2["valid"], halved=shifted, relu=s2["relu"], tag=s2["tag"],
                          down=down)
            halved, relu, last, down = s3["halved"], s3["relu"], s3, s3["down"]
        else:
            halved, relu, last = shifted, s2["relu"], s2
        # rounded = (halved + 1) >> 1; decide saturation on `halved` itself:
        # rounded > 127 <=> halved >= 255; rounded < 0 <=> halved <= -2; rounded < -128 <=>
        # halved <= -258. Not as comparisons (carry chains; over the whole width, as long as
        # the product, LeNet-300-100's 30 bits: 31 MHz on iCE40) but as bit tests: the bits
        # above the low ten either repeat the sign (`fits`: halved is its low ten bits) or the
        # value saturates by its sign; within ten bits, halved >= 255 (non-negative) and
        # halved >= -257 (negative) both say "bit 8, or bits 0-7 all ones".
        halved = halved.as_signed()
        sign = halved[-1]
        if len(halved) > 10:
            low = halved[:10]
            rest = halved[9:-1]
            fits = Mux(sign, rest.all(), ~rest.any())
        else:
            low = Cat(halved, sign.replicate(10 - len(halved)))
            fits = Const(1)
        high_half = low[8] | low[:8].all()
        above = ~sign & (~fits | high_half)
        below = sign & Mux(relu, ~(fits & low.all()), ~fits | ~high_half)
        small = Signal(signed(10))
        m.d.comb += small.eq((low.as_signed() + Mux(down, 0, 1)) >> 1)
        if self.deep:
            # deep: the saturation flags into registers, the choice a stage later
            s4 = register(valid=last["valid"], above=above, below=below, small=small,
                          relu=relu, tag=last["tag"])
            above, below, small, relu, last = (s4["above"], s4["below"], s4["small"],
                                               s4["relu"], s4)
        low = Mux(relu, 0, ACT_MIN)
        out = register(valid=last["valid"],
                       value=Mux(above, ACT_MAX, Mux(below, low, small)).as_signed()[:8].as_signed(),
                       tag=last["tag"])
        m.d.comb += [
            self.o.valid.eq(out["valid"]),
            self.o.payload.value.eq(out["value"]),
            self.o.payload.tag.eq(out["tag"]),
        ]
        return m
