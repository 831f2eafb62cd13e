"""Quantizers in ONNX graphs: QONNX ``Quant`` nodes (as Brevitas exports them) and ONNX QDQ
(``QuantizeLinear``/``DequantizeLinear``).

While :func:`.onnx_graph.onnx_ops` reads the graph, a quantizer on a weight is evaluated (the
layer gets the dequantized weights, exactly ``scale * integer``) and remembered; a quantizer on
the activation path is an identity for the float IR and is remembered with its position (how
many Linear/Conv layers come before it). :class:`GraphQuantization` is what it collected; the
quantize step (:mod:`compiler.passes.imported`) turns it into the layers' integer parameters,
or says why it cannot.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from onnx.reference.op_run import OpRun

__all__ = ["Quantizer", "GraphQuantization", "QUANT_OPS", "QONNX_DOMAINS", "REFERENCE_OPS",
           "quant", "read_quantizer"]

#: The domains Brevitas/QONNX write ``Quant`` nodes in.
QONNX_DOMAINS = ("qonnx.custom_op.general", "finn.custom_op.general")
#: The operators read as quantizers.
QUANT_OPS = ("Quant", "QuantizeLinear", "DequantizeLinear")

#: QONNX rounding modes, as numpy functions on y / scale + zero point.
_ROUNDING = {"ROUND": np.round, "HALF_EVEN": np.round, "CEIL": np.ceil, "FLOOR": np.floor,
             "ROUND_TO_ZERO": np.trunc,
             "HALF_UP": lambda v: np.sign(v) * np.floor(np.abs(v) + 0.5)}

#: QuantizeLinear's integer range by its zero point's element type (ONNX TensorProto).
_QDQ_RANGES = {2: (0, 255, False, 8), 3: (-128, 127, True, 8), 4: (0, 65535, False, 16),
               5: (-32768, 32767, True, 16), 21: (0, 15, False, 4), 22: (-8, 7, True, 4),
               6: (-2 ** 31, 2 ** 31 - 1, True, 32), 12: (0, 2 ** 32 - 1, False, 32)}


def _int_range(bits: int, signed: bool, narrow: bool) -> tuple[int, int]:
    if signed:
        return -2 ** (bits - 1) + int(narrow), 2 ** (bits - 1) - 1
    return 0, 2 ** bits - 1 - int(narrow)


def _as_str(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def quant(x, scale, zeropt, bitwidth, signed=1, narrow=0, rounding_mode="ROUND"):
    """QONNX ``Quant``: clamp ``x / scale + zeropt`` to the integer range, round, dequantize."""
    bits = int(np.asarray(bitwidth).reshape(-1)[0])
    lo, hi = _int_range(bits, bool(signed), bool(narrow))
    mode = _as_str(rounding_mode).upper()
    if mode not in _ROUNDING:
        raise ValueError(f"rounding_mode {mode!r}")
    y = np.clip(np.asarray(x, np.float64) / scale + zeropt, lo, hi)
    return ((_ROUNDING[mode](y) - zeropt) * scale).astype(np.asarray(x).dtype)


class _Quant(OpRun):
    op_domain = QONNX_DOMAINS[0]

    def _run(self, x, scale, zeropt, bitwidth, signed=1, narrow=0, rounding_mode="ROUND"):
        return (quant(x, scale, zeropt, bitwidth, signed, narrow, rounding_mode),)


class _FinnQuant(_Quant):
    op_domain = QONNX_DOMAINS[1]


#: Custom operators for ``onnx.reference.ReferenceEvaluator(..., new_ops=REFERENCE_OPS)``.
REFERENCE_OPS = [_Quant, _FinnQuant]
_Quant.__name__ = _FinnQuant.__name__ = "Quant"


@dataclass(frozen=True, eq=False)
class Quantizer:
    """One quantizer of the graph: ``q = clamp(round(x / scale) + zero_point, lo, hi)``."""
    node: str               # "node 'name' (Quant)", for messages
    scale: np.ndarray       # float64, scalar or per channel
    zero_point: np.ndarray  # float64, same shape
    lo: int
    hi: int
    bits: int
    rounding: str           # "HALF_EVEN" (QuantizeLinear, QONNX ROUND) or a QONNX mode
    axis: int | None = None

    @property
    def per_channel(self) -> bool:
        return self.scale.size > 1

    def same_as(self, other: "Quantizer") -> bool:
        return (self.lo, self.hi, self.rounding) == (other.lo, other.hi, other.rounding) and \
            np.array_equal(self.scale, other.scale) and \
            np.array_equal(self.zero_point, other.zero_point)


def read_quantizer(node, values: list, attrs: dict, label: str) -> Quantizer:
    """The quantizer a ``Quant``/``QuantizeLinear``/``DequantizeLinear`` node applies
    (``values``: its inputs, None where not a constant)."""
    where = f"{label} ({node.op_type})"
    if node.op_type == "Quant":
        if len(values) < 4 or any(v is None for v in values[1:4]):
            raise ValueError(f"{where}: scale, zero point and bit width must be constants")
        bits = float(np.asarray(values[3]).reshape(-1)[0])
        if bits != int(bits) or bits < 2:
            raise ValueError(f"{where}: bit width {bits:g}")
        lo, hi = _int_range(int(bits), bool(attrs.get("signed", 1)),
                            bool(attrs.get("narrow", 0)))
        mode = _as_str(attrs.get("rounding_mode", "ROUND")).upper()
        rounding = "HALF_EVEN" if mode in ("ROUND", "HALF_EVEN") else mode
        return Quantizer(where, np.asarray(values[1], np.float64),
                         np.asarray(values[2], np.float64), lo, hi, int(bits), rounding)
    if len(values) < 2 or values[1] is None or (len(values) > 2 and node.input[2]
                                                and values[2] is None):
        raise ValueError(f"{where}: scale and zero point must be constants")
    zero = values[2] if len(values) > 2 and values[2] is not None else None
    if node.op_type == "DequantizeLinear" and zero is None and values[0] is not None:
        zero = np.zeros((), values[0].dtype)    # a weight's own integer type
    dtype = {np.dtype(np.uint8): 2, np.dtype(np.int8): 3, np.dtype(np.uint16): 4,
             np.dtype(np.int16): 5, np.dtype(np.int32): 6,
             np.dtype(np.uint32): 12}.get(np.asarray(zero).dtype if zero is not None
                                          else np.dtype(np.uint8))
    attr_type = attrs.get("output_dtype") or None
    lo, hi, _, bits = _QDQ_RANGES.get(attr_type or dtype, (None, None, None, None))
    if lo is None:
        raise ValueError(f"{where}: an integer type this frontend does not read")
    zero = np.zeros_like(values[1], dtype=np.float64) if zero is None else zero
    scale = np.asarray(values[1], np.float64)
    return Quantizer(where, scale, np.asarray(zero, np.float64), lo, hi, bits, "HALF_EVEN",
                     attrs.get("axis", 1) if scale.size > 1 else None)


@dataclass
class GraphQuantization:
    """What a quantized ONNX graph says about its own integer arithmetic.

    ``weights[i]``: the quantizer of IR layer ``i``'s weights (None: float weights).
    ``activations[k]``: the quantizer of the activation between layers ``k - 1`` and ``k``
    (``0``: the graph's input, ``len(weights)``: its output); max pooling and ReLU commute with
    it, so it may sit before or after them."""
    weights: list = field(default_factory=list)
    activations: dict = field(default_factory=dict)
    weight_inputs: dict = field(default_factory=dict)   # tensor name -> its quantizer

    @property
    def present(self) -> bool:
        return bool(self.activations) or any(w is not None for w in self.weights)

    def add_activation(self, position: int, quantizer: Quantizer):
        """Remember an activation quantizer; a second, different one at the same place (one
        before a ReLU, one after) cannot be represented."""
        have = self.activations.get(position)
        if have is not None and not have.same_as(quantizer):
            raise ValueError(f"{quantizer.node} quantizes the activation that {have.node} "
                             f"quantized already, differently")
        self.activations.setdefault(position, quantizer)
