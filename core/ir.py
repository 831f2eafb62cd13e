"""The compiler's intermediate representation.

Small frozen dataclasses: a float model straight from the frontend, the same model after
quantization, and the sparse memory images the hardware and the reference model both consume.
Every pass returns a new object; ``verify()`` checks the invariants a pass may rely on.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
from dataclasses import dataclass

import numpy as np

from .arith import MULTIPLIER_BITS, SHIFT_MAX, WEIGHT_MAX

__all__ = [
    "LayerKind", "Conv2dShape", "Pool", "Quantization", "Layer", "Model", "Widths", "Grid",
    "PEImage", "ReducerImage", "SparseProgram", "column_sources",
    "IRError",
]


class IRError(ValueError):
    """An IR object breaks one of its invariants."""


class LayerKind(enum.Enum):
    LINEAR = "linear"
    CONV2D = "conv2d"


@dataclass(frozen=True)
class Conv2dShape:
    """Geometry of a 2-D convolution (groups = 1, dilation = 1, zero padding)."""
    in_channels: int
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    in_hw: tuple[int, int]

    @property
    def out_hw(self) -> tuple[int, int]:
        return tuple((n + 2 * p - k) // s + 1 for n, k, s, p in
                     zip(self.in_hw, self.kernel, self.stride, self.padding))


@dataclass(frozen=True)
class Pool:
    """Non-overlapping 2-D pooling (kernel = stride, no padding, floor mode) fused after a
    convolution. ``relu_after``: a ReLU that follows an average pool (for max pooling the
    order does not matter and the layer's ``relu`` covers it)."""
    kind: str                    # "max" | "avg"
    size: tuple[int, int]
    in_hw: tuple[int, int]
    relu_after: bool = False

    @property
    def out_hw(self) -> tuple[int, int]:
        return tuple(n // k for n, k in zip(self.in_hw, self.size))

    @property
    def window(self) -> int:
        return self.size[0] * self.size[1]


@dataclass(frozen=True, eq=False)
class Quantization:
    """Integer parameters of one layer, per output channel.

    ``weight`` holds int8 values (the layer's weight shape), ``bias`` int32 values in units of
    ``in_scale * weight_scale``; every output of channel ``k`` is
    ``requantize(acc + bias[k], multiplier[k], shift[k], relu)``. All channels of a layer share
    one shift (the hardware shifts by a per-layer constant). An average pool then
    requantizes the sum of each window with ``pool_multiplier``/``pool_shift`` (scale 1/window).
    ``half_even``: the layer's requantization rounds ties to even, as ONNX ``QuantizeLinear``
    does (a model imported with its own scales); otherwise ties round up (our calibration).
    """
    weight: np.ndarray        # int8
    bias: np.ndarray          # int64 [channels], within int32
    multiplier: np.ndarray    # int64 [channels], 0 <= m < 2**MULTIPLIER_BITS
    shift: np.ndarray         # int64 [channels], 1 <= s <= SHIFT_MAX
    weight_scale: np.ndarray  # float64 [channels]
    in_scale: float
    out_scale: float
    pool_multiplier: int = 0
    pool_shift: int = 1
    half_even: bool = False


@dataclass(frozen=True, eq=False)
class Layer:
    """A Linear layer, or a Conv2d with an optional fused pool. Activations are flattened
    (C, H, W order, as ``torch.flatten``); ``out_features`` counts outputs after pooling.

    The accelerator sees every layer as a matrix (:meth:`matrix`): one row per accumulator
    (for a pooled convolution, grouped window by window), one column per input feature.
    """
    name: str
    kind: LayerKind
    in_features: int
    out_features: int
    weight: np.ndarray        # float32 [out, in] or [K, C, kh, kw]
    bias: np.ndarray          # float32 [channels]
    relu: bool
    quant: Quantization | None = None
    conv: Conv2dShape | None = None
    pool: Pool | None = None

    @property
    def channels(self) -> int:
        return self.conv.out_channels if self.conv else self.out_features

    @property
    def group(self) -> int:
        """Accumulator rows per output (the pooling window, 1 without pooling)."""
        return self.pool.window if self.pool else 1

    @property
    def rows(self) -> int:
        return self.out_features * self.group

    @property
    def output_shape(self) -> tuple[int, ...]:
        if self.conv is None:
            return (self.out_features,)
        hw = self.pool.out_hw if self.pool else self.conv.out_hw
        return (self.conv.out_channels, *hw)

    @property
    def nnz(self) -> int:
        """Nonzero weights (parameters)."""
        weight = self.quant.weight if self.quant is not None else self.weight
        return int(np.count_nonzero(weight))

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nnz / self.weight.size

    @property
    def structural_macs(self) -> int:
        """Multiply-accumulates per inference with every weight nonzero and every input used:
        the entries of :meth:`matrix` for a layer without zeros."""
        if self.conv is None:
            return self.in_features * self.out_features
        ones = dataclasses.replace(self, weight=np.ones_like(self.weight), quant=None)
        return int(np.count_nonzero(ones.matrix()))

    @functools.cached_property
    def row_positions(self) -> np.ndarray:
        """For a convolution: (channel, oy, ox) of every accumulator row, int [rows, 3]."""
        k_, oh, ow = self.conv.out_channels, *self.conv.out_hw
        if self.pool is None:
            k, y, x = np.meshgrid(np.arange(k_), np.arange(oh), np.arange(ow), indexing="ij")
            return np.stack([k.ravel(), y.ravel(), x.ravel()], axis=1)
        (ph, pw), (qh, qw) = self.pool.out_hw, self.pool.size
        k, py, px, i, j = np.meshgrid(np.arange(k_), np.arange(ph), np.arange(pw),
                                      np.arange(qh), np.arange(qw), indexing="ij")
        return np.stack([k.ravel(), (py * qh + i).ravel(), (px * qw + j).ravel()], axis=1)

    def row_channel(self) -> np.ndarray:
        """Output channel of every accumulator row."""
        if self.conv is None:
            return np.arange(self.out_features)
        return self.row_positions[:, 0]

    def matrix(self, *, quantized: bool = False) -> np.ndarray:
        """The layer as a matrix [rows, in_features]: the weights themselves for a Linear
        layer, the unrolled (Toeplitz) kernel for a convolution. int64 when ``quantized``."""
        weight = self.quant.weight if quantized else self.weight
        dtype = np.int64 if quantized else np.float64
        if self.conv is None:
            return weight.astype(dtype)
        return _unroll(self, weight.astype(dtype))


def _unroll(layer: Layer, kernel: np.ndarray) -> np.ndarray:
    conv = layer.conv
    (h, w), (kh, kw) = conv.in_hw, conv.kernel
    (sh, sw), (ph, pw) = conv.stride, conv.padding
    pos = layer.row_positions
    out = np.zeros((len(pos), layer.in_features), dtype=kernel.dtype)
    rows = np.arange(len(pos))
    for c in range(conv.in_channels):
        for dy in range(kh):
            for dx in range(kw):
                y = pos[:, 1] * sh - ph + dy
                x = pos[:, 2] * sw - pw + dx
                ok = (y >= 0) & (y < h) & (x >= 0) & (x < w)
                out[rows[ok], c * h * w + y[ok] * w + x[ok]] = kernel[pos[ok, 0], c, dy, dx]
    return out


@dataclass(frozen=True, eq=False)
class Model:
    name: str
    layers: tuple[Layer, ...]
    input_shape: tuple[int, ...] = ()

    @property
    def in_features(self) -> int:
        return self.layers[0].in_features

    @property
    def out_features(self) -> int:
        return self.layers[-1].out_features

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.layers[-1].output_shape

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
    if layer.kind is LayerKind.LINEAR:
        if layer.conv is not None or layer.pool is not None:
            raise IRError(f"layer {layer.name!r}: a Linear layer has no convolution or pool")
        shape = (layer.out_features, layer.in_features)
    else:
        conv = layer.conv
        if conv is None:
            raise IRError(f"layer {layer.name!r}: a Conv2d layer needs its geometry")
        shape = (conv.out_channels, conv.in_channels, *conv.kernel)
        if layer.in_features != conv.in_channels * conv.in_hw[0] * conv.in_hw[1]:
            raise IRError(f"layer {layer.name!r}: in_features does not match its input")
        if min(conv.out_hw) < 1:
            raise IRError(f"layer {layer.name!r}: the kernel is larger than its padded input")
        hw = conv.out_hw
        if layer.pool is not None:
            if layer.pool.in_hw != hw or min(layer.pool.out_hw) < 1:
                raise IRError(f"layer {layer.name!r}: the pool does not fit the convolution")
            hw = layer.pool.out_hw
        if layer.out_features != conv.out_channels * hw[0] * hw[1]:
            raise IRError(f"layer {layer.name!r}: out_features does not match its output")
    if layer.weight.shape != shape or layer.bias.shape != (layer.channels,):
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
    if len(set(q.shift.tolist())) > 1:
        raise IRError(f"layer {layer.name!r}: channels must share one shift")


@dataclass(frozen=True)
class Widths:
    """Datapath widths proven from the memory images (worst case over all int8 inputs)."""
    partial: int       # signed bits of one PE's partial sum (its column group only)
    accumulator: int   # signed bits of a whole row's sum (the reducer's adder tree)
    biased: int        # signed bits of accumulator + bias
    product: int       # signed bits of (accumulator + bias) * multiplier + rounding term


@dataclass(frozen=True)
class Grid:
    """The PEs on an ``rows`` x ``cols`` grid (R x C, R >= C).

    PE ``(r, c)`` holds the weights of row group ``r`` and column group ``c`` of every layer.
    Grid column ``c`` shares one activation bus; grid row ``r`` shares one reducer, which adds
    the C partial sums of each of its rows and drives bus ``r % C`` with the next layer's
    activations (so row group ``r`` of layer ``m`` is part of column group ``r % C`` of layer
    ``m + 1``: no crossbar anywhere).
    """
    rows: int
    cols: int

    def __post_init__(self):
        for name in ("rows", "cols"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise IRError(f"grid {name} must be a whole number >= 1, not {value!r}")
        if self.rows < self.cols:
            raise IRError(f"grid {self.rows}x{self.cols}: needs at least as many rows as "
                          f"columns (every bus is driven by one reducer or more)")

    @property
    def pes(self) -> int:
        return self.rows * self.cols

    def pe(self, r: int, c: int) -> int:
        """PE number of grid position (r, c): row-major."""
        return r * self.cols + c

    def bus_of(self, r: int) -> int:
        """The bus reducer ``r`` drives."""
        return r % self.cols

    def rank(self, r: int) -> int:
        """Position of reducer ``r`` among the reducers of its bus."""
        return r // self.cols

    def reducers_on(self, c: int) -> list[int]:
        return list(range(c, self.rows, self.cols))

    @property
    def bus_reducers(self) -> int:
        """The most reducers any bus has."""
        return -(-self.rows // self.cols)

    def __str__(self) -> str:
        return f"{self.rows}x{self.cols}"

    @staticmethod
    def parse(text: str) -> "Grid":
        rows, sep, cols = str(text).lower().partition("x")
        if not sep or not rows.isdigit() or not cols.isdigit():
            raise IRError(f"a grid is written RxC, e.g. 8x8, not {text!r}")
        return Grid(int(rows), int(cols))

    @staticmethod
    def shapes(pes: int) -> list["Grid"]:
        """Every R x C = ``pes`` with R >= C, squarest first."""
        if not isinstance(pes, int) or pes < 1:
            raise IRError(f"pes must be a whole number >= 1, not {pes!r}")
        cols = [c for c in range(1, int(pes ** 0.5) + 1) if pes % c == 0]
        return [Grid(pes // c, c) for c in reversed(cols)]


def column_sources(grid: "Grid", c: int, slots: int, in_features: int, prev_outputs=None,
                   prev_out_slots: int = 0) -> np.ndarray:
    """The input feature (model order) of each of the ``slots`` local columns of group ``c``
    (-1: an unused slot). Layer 0 (``prev_outputs`` None): input ``t * C + c`` is local
    column ``t``. Later layers: ``prev_outputs[r]``, the outputs of reducer ``r`` in the layer
    before in local order, fill the columns ``rank(r) * prev_out_slots`` on of bus ``r % C``."""
    src = np.full(slots, -1, dtype=np.int64)
    if prev_outputs is None:
        features = np.arange(c, in_features, grid.cols)
        src[:len(features)] = features
        return src
    for r in grid.reducers_on(c):
        outs = prev_outputs[r]
        q = grid.rank(r) * prev_out_slots
        src[q:q + len(outs)] = outs
    return src


@dataclass(frozen=True, eq=False)
class PEImage:
    """Everything one processing element stores: its nonzero weights, column by column, for
    all layers (CSC).

    Column ``t`` (local to the PE's column group, see :meth:`SparseProgram.column_sources`) of
    layer ``m`` has its entries at ``entry_value/entry_index[ptr[p] : ptr[p + 1]]`` with
    ``p = ptr_base[m] + t``. ``entry_index`` is EIE's relative row index: the number of the
    row group's local rows skipped since the previous entry of the column (or since row 0); an
    entry whose value is 0 is padding, inserted where a gap does not fit the index field.
    """
    entry_value: np.ndarray   # int8
    entry_index: np.ndarray   # uint, < 2**index_bits
    ptr: np.ndarray           # int64, sum(col_slots) + 1 column starts
    entry_code: np.ndarray | None = None   # codebook programs: each entry's index into its
                                           # layer's table (``SparseProgram.codebooks``)

    def layer_of_entries(self, ptr_base, col_slots) -> np.ndarray:
        """The layer of each entry (entries are stored layer after layer)."""
        ends = [int(self.ptr[b + n]) for b, n in zip(ptr_base, col_slots)]
        return np.searchsorted(np.array(ends), np.arange(len(self.entry_value)), side="right")


@dataclass(frozen=True, eq=False)
class ReducerImage:
    """What the reducer of one grid row stores: which rows of every layer are its own, and
    their requantization parameters.

    Layer ``m``'s accumulator rows of this row group are ``rows[m]`` (row numbers of the
    layer's matrix, in local order; the rows of one pooled output are consecutive);
    ``bias``/``multiplier`` of local row ``i`` sit at ``row_base[m] + i``.
    """
    rows: tuple[np.ndarray, ...]
    bias: np.ndarray          # int64
    multiplier: np.ndarray    # int64

    def row_count(self, layer: int) -> int:
        return len(self.rows[layer])


@dataclass(frozen=True, eq=False)
class SparseProgram:
    """The memory images of the whole accelerator: the contract between compiler, reference
    model and hardware. Built by :func:`compiler.passes.encode.encode`.

    Columns of layer 0 in group ``c`` are the model inputs ``t * C + c`` (local column ``t``):
    the input arrives C values a beat, one per bus. Columns of layer ``m + 1`` in group ``c``
    are the outputs of the reducers on bus ``c``: local output ``k`` of reducer ``r`` is local
    column ``grid.rank(r) * out_slots[m] + k``.
    """
    model: Model
    grid: Grid
    index_bits: int
    row_slots: tuple[int, ...]     # per layer: max accumulator rows any row group holds
    row_base: tuple[int, ...]      # per layer: offset into the reducers' row tables
    out_slots: tuple[int, ...]     # per layer: max outputs any row group produces
    col_slots: tuple[int, ...]     # per layer: local columns of a column group
    ptr_base: tuple[int, ...]      # per layer: offset into every PE's pointer table
    pe_images: tuple[PEImage, ...]            # PE (r, c) at r * C + c
    reducers: tuple[ReducerImage, ...]        # one per grid row
    widths: "Widths"
    skip_zero_activations: bool = True
    # weight sharing (compiler.passes.codebook): per layer, the table that entry codes index
    # (2**weight_bits int8 values; unused slots 0); None: entries hold int8 weights themselves
    codebooks: tuple[np.ndarray, ...] | None = None

    @property
    def weight_bits(self) -> int:
        """Bits of an entry's weight field: a codebook index, or 8 (an int8 weight)."""
        if self.codebooks is None:
            return 8
        return max(1, (len(self.codebooks[0]) - 1).bit_length())

    @property
    def layers(self) -> tuple[Layer, ...]:
        return self.model.layers

    @property
    def pes(self) -> int:
        return self.grid.pes

    def outputs_of(self, r: int, layer: int) -> np.ndarray:
        """Output indices (model order) reducer ``r`` produces in ``layer``, in local order."""
        group = self.layers[layer].group
        return self.reducers[r].rows[layer][::group] // group

    def column_sources(self, layer: int, c: int) -> np.ndarray:
        """For each local column of group ``c`` in ``layer``: the input feature (model order) it
        carries, -1 for an unused slot."""
        prev = None
        if layer:
            prev = [self.outputs_of(r, layer - 1) for r in range(self.grid.rows)]
        return column_sources(self.grid, c, self.col_slots[layer], self.model.in_features,
                              prev, self.out_slots[layer - 1] if layer else 0)

    def output_place(self) -> tuple[np.ndarray, np.ndarray]:
        """For each model output: (reducer, local index) of the last layer."""
        last = len(self.layers) - 1
        group = np.zeros(self.model.out_features, dtype=np.int64)
        local = np.zeros(self.model.out_features, dtype=np.int64)
        for r in range(self.grid.rows):
            outs = self.outputs_of(r, last)
            group[outs] = r
            local[outs] = np.arange(len(outs))
        return group, local

    def verify(self) -> "SparseProgram":
        self.model.verify()
        if not self.model.quantized:
            raise IRError("sparse program needs a quantized model")
        if len(self.pe_images) != self.pes or len(self.reducers) != self.grid.rows:
            raise IRError("one image per PE and one per reducer expected")
        if self.col_slots[0] != -(-self.model.in_features // self.grid.cols):
            raise IRError("layer 0 must have ceil(in_features / C) columns per group")
        for m, layer in enumerate(self.layers):
            owned = np.concatenate([red.rows[m] for red in self.reducers])
            if sorted(owned.tolist()) != list(range(layer.rows)):
                raise IRError(f"layer {layer.name!r}: rows not partitioned over the row groups")
            for r, red in enumerate(self.reducers):
                rows = red.rows[m]
                firsts = rows[::layer.group]
                if len(rows) % layer.group or (firsts % layer.group).any() or not np.array_equal(
                        rows, np.repeat(firsts, layer.group)
                        + np.tile(np.arange(layer.group), len(firsts))):
                    raise IRError(f"layer {layer.name!r}: row group {r} splits a pooling window")
                if len(rows) > self.row_slots[m] or len(rows) // layer.group > self.out_slots[m]:
                    raise IRError(f"layer {layer.name!r}: a row group owns more rows than its "
                                  f"slots")
            if m and self.col_slots[m] != self.grid.bus_reducers * self.out_slots[m - 1]:
                raise IRError(f"layer {layer.name!r}: column slots do not match the layer "
                              f"before")
        depth = sum(self.col_slots) + 1
        for pe in self.pe_images:
            if (pe.entry_index >= 2 ** self.index_bits).any():
                raise IRError("relative index overflows the index field")
            if len(pe.ptr) != depth or pe.ptr[0] != 0 or (np.diff(pe.ptr) < 0).any() \
                    or pe.ptr[-1] != len(pe.entry_value):
                raise IRError("a PE's column pointers are not a CSC pointer table")
        self._verify_codebooks()
        return self

    def _verify_codebooks(self):
        """Every entry's code decodes, through its layer's table, to its int8 value."""
        if self.codebooks is None:
            if any(pe.entry_code is not None for pe in self.pe_images):
                raise IRError("entry codes without codebooks")
            return
        size = 1 << self.weight_bits
        if len(self.codebooks) != len(self.layers) or any(
                len(t) != size for t in self.codebooks) or not 1 <= self.weight_bits <= 7:
            raise IRError("one codebook of 2**B entries (B in 1..7) per layer expected")
        for t in self.codebooks:
            if np.abs(np.asarray(t, dtype=np.int64)).max(initial=0) > WEIGHT_MAX:
                raise IRError("a codebook value is outside the symmetric int8 range")
        tables = np.asarray(self.codebooks, dtype=np.int64)
        for pe in self.pe_images:
            code = pe.entry_code
            if code is None or len(code) != len(pe.entry_value) or (
                    (code < 0) | (code >= size)).any():
                raise IRError("every entry of a codebook program needs a code < 2**B")
            layer = pe.layer_of_entries(self.ptr_base, self.col_slots)
            if len(code) and not np.array_equal(tables[layer, code],
                                                pe.entry_value.astype(np.int64)):
                raise IRError("an entry's code does not decode to its weight")
