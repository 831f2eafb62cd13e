"""The integer arithmetic's constants: what every layer of sparsemac agrees on (the quantizer,
the reference model, the gateware, the fit check)."""

__all__ = ["ACT_MIN", "ACT_MAX", "WEIGHT_MAX", "MULTIPLIER_BITS", "SHIFT_MAX"]

#: Activations are signed 8-bit; zero point 0 so that a real zero is an integer zero (skippable).
ACT_MIN, ACT_MAX = -128, 127
#: Weights are symmetric int8: -127..127 (no -128, so negation never overflows).
WEIGHT_MAX = 127
#: Requantization multipliers are unsigned fixed-point numbers below ``2**MULTIPLIER_BITS``.
MULTIPLIER_BITS = 15
#: Largest right shift a requantization may use.
SHIFT_MAX = 62
