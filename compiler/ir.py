"""The compiler's intermediate representation.

Small frozen dataclasses: a float model straight from the frontend, the same model after
quantization, and the sparse memory images the hardware and the reference model both consume.
Every pass returns a new object; ``verify()`` checks the invariants a pass may rely on.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

__all__ = [
    "LayerKind", "Quantization", "Layer", "Model", "Widths", "LaneImage", "SparseProgram",
    "IRError", "ACT_MIN", "ACT_MAX", "WEIGHT_MAX", "MULTIPLIER_BITS", "SHIFT_MAX",
]

#: Activations are signed 8-bit; zero point 0 so that a real zero is an integer zero (skippable).
ACT_MIN, ACT_MAX = -128, 127
#: Weights are symmetric int8: -127..127 (no -128, so negation never overflows).
WEIGHT_MAX = 127
#: Requantization multipliers are unsigned fixed-point numbers below ``2**MULTIPLIER_BITS``.
MULTIPLIER_BITS = 15
#: Largest right shift a requantization may use.
SHIFT_MAX = 62


class IRError(ValueError):
    """An IR object breaks one of its invariants."""


class LayerKind(enum.Enum):
    LINEAR = "linear"


@dataclass(frozen=True, eq=False)
class Quantization:
    """Integer parameters of one layer.

    ``weight`` holds int8 values, ``bias`` int32 values in units of ``in_scale * weight_scale``;
    the output of row ``r`` is ``requantize(acc + bias[r], multiplier[r], shift[r], relu)``.
    """
    weight: np.ndarray        # int8 [out, in]
    bias: np.ndarray          # int64 [out], within int32
    multiplier: np.ndarray    # int64 [out], 0 <= m < 2**MULTIPLIER_BITS
    shift: np.ndarray         # int64 [out], 1 <= s <= SHIFT_MAX
    weight_scale: np.ndarray  # float64 [out]
    in_scale: float
    out_scale: float


@dataclass(frozen=True, eq=False)
class Layer:
    name: str
    kind: LayerKind
    in_features: int
    out_features: int
    weight: np.ndarray        # float32 [out, in]
    bias: np.ndarray          # float32 [out]
    relu: bool
    quant: Quantization | None = None

    @property
    def nnz(self) -> int:
        if self.quant is not None:
            return int(np.count_nonzero(self.quant.weight))
        return int(np.count_nonzero(self.weight))

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nnz / (self.in_features * self.out_features)


@dataclass(frozen=True, eq=False)
class Model:
    name: str
    layers: tuple[Layer, ...]

    @property
    def in_features(self) -> int:
        return self.layers[0].in_features

    @property
    def out_features(self) -> int:
        return self.layers[-1].out_features

    @property
    def quantized(self) -> bool:
        return all(layer.quant is not None for layer in self.layers)

    @property
    def input_scale(self) -> float:
        return self.layers[0].quant.in_scale

    @property
    def output_scale(self) -> float:
        return self.layers[-1].quant.out_scale

    def verify(self) -> "Model":
        if not self.layers:
            raise IRError("model has no layers")
        for prev, layer in zip(self.layers, self.layers[1:]):
            if prev.out_features != layer.in_features:
                raise IRError(f"layer {layer.name!r} takes {layer.in_features} features but "
                              f"{prev.name!r} produces {prev.out_features}")
        for layer in self.layers:
            _verify_layer(layer)
        for prev, layer in zip(self.layers, self.layers[1:]):
            if prev.quant is not None and layer.quant is not None:
                if prev.quant.out_scale != layer.quant.in_scale:
                    raise IRError(f"scale mismatch between {prev.name!r} and {layer.name!r}")
        return self


def _verify_layer(layer: Layer):
    shape = (layer.out_features, layer.in_features)
    if layer.weight.shape != shape or layer.bias.shape != (layer.out_features,):
        raise IRError(f"layer {layer.name!r}: weight {layer.weight.shape} / bias "
                      f"{layer.bias.shape} do not match {shape}")
    if not (np.isfinite(layer.weight).all() and np.isfinite(layer.bias).all()):
        raise IRError(f"layer {layer.name!r} has NaN or Inf parameters")
    q = layer.quant
    if q is None:
        return
    if q.weight.shape != shape or q.weight.dtype != np.int8:
        raise IRError(f"layer {layer.name!r}: quantized weight must be int8 {shape}")
    if np.abs(q.weight.astype(np.int64)).max(initial=0) > WEIGHT_MAX:
        raise IRError(f"layer {layer.name!r}: weight -128 is not allowed (symmetric int8)")
    if np.abs(q.bias).max(initial=0) >= 2 ** 31:
        raise IRError(f"layer {layer.name!r}: bias exceeds int32")
    if ((q.multiplier < 0) | (q.multiplier >= 2 ** MULTIPLIER_BITS)).any():
        raise IRError(f"layer {layer.name!r}: multiplier out of range")
    if ((q.shift < 1) | (q.shift > SHIFT_MAX)).any():
        raise IRError(f"layer {layer.name!r}: shift out of range")


@dataclass(frozen=True)
class Widths:
    """Datapath widths proven from the memory images (worst case over all int8 inputs)."""
    accumulator: int   # signed bits of the running sum of products
    biased: int        # signed bits of accumulator + bias
    product: int       # signed bits of (accumulator + bias) * multiplier + rounding term


@dataclass(frozen=True, eq=False)
class LaneImage:
    """Everything one processing element stores, for all layers.

    Layer ``m``'s rows owned by this lane are ``rows[m]`` (original row numbers, in local order).
    Column ``c`` of layer ``m`` (see :attr:`SparseProgram.column_count`) has its entries at
    ``entry_value/entry_index[ptr_start[p] : ptr_start[p] + ptr_count[p]]`` with
    ``p = ptr_base[m] + c``. ``entry_index`` is EIE's relative row index: the number of local
    rows skipped since the previous entry of the column (or since row 0); an entry whose value
    is 0 is padding, inserted where a gap does not fit the index field.
    """
    rows: tuple[np.ndarray, ...]
    entry_value: np.ndarray   # int8
    entry_index: np.ndarray   # uint, < 2**index_bits
    ptr_start: np.ndarray     # int64
    ptr_count: np.ndarray     # int64
    bias: np.ndarray          # int64, indexed by row_base[m] + local row
    multiplier: np.ndarray    # int64
    shift: np.ndarray         # int64
    fanout: np.ndarray        # int64 bit masks (bit j: lane j has entries in this output's column)

    def row_count(self, layer: int) -> int:
        return len(self.rows[layer])


@dataclass(frozen=True, eq=False)
class SparseProgram:
    """The memory images of the whole accelerator: the contract between compiler, reference
    model and hardware. Built by :func:`compiler.passes.encode.encode`."""
    model: Model
    pes: int
    index_bits: int
    row_slots: tuple[int, ...]     # per layer: max rows any lane owns (local row address space)
    row_base: tuple[int, ...]      # per layer: offset into the per-lane row tables
    ptr_base: tuple[int, ...]      # per layer: offset into the per-lane pointer memory
    lanes: tuple[LaneImage, ...]
    input_fanout: np.ndarray       # int64 [in_features]: lanes with entries in each input column
    output_lane: np.ndarray        # int64 [out_features]
    output_row: np.ndarray         # int64 [out_features]
    widths: "Widths"
    skip_zero_activations: bool = True

    @property
    def layers(self) -> tuple[Layer, ...]:
        return self.model.layers

    def column_count(self, layer: int) -> int:
        """Size of layer ``layer``'s column address space."""
        if layer == 0:
            return self.model.in_features
        return self.pes * self.row_slots[layer - 1]

    def column_of(self, layer: int, lane: int, local_row: int) -> int:
        """Column address, in layer ``layer``, of the output ``local_row`` of ``lane`` in the
        layer before it."""
        return lane * self.row_slots[layer - 1] + local_row

    def verify(self) -> "SparseProgram":
        self.model.verify()
        if not self.model.quantized:
            raise IRError("sparse program needs a quantized model")
        if len(self.lanes) != self.pes:
            raise IRError("one lane image per PE expected")
        for m, layer in enumerate(self.layers):
            owned = np.concatenate([lane.rows[m] for lane in self.lanes])
            if sorted(owned.tolist()) != list(range(layer.out_features)):
                raise IRError(f"layer {layer.name!r}: rows not partitioned over the PEs")
            if max(len(lane.rows[m]) for lane in self.lanes) > self.row_slots[m]:
                raise IRError(f"layer {layer.name!r}: a PE owns more rows than row_slots")
        for lane in self.lanes:
            if (lane.entry_index >= 2 ** self.index_bits).any():
                raise IRError("relative index overflows the index field")
        return self
