"""The one bit-exact integer model of the accelerator.

Rounding, saturation and shift rules are written here and nowhere else. Hardware tests, cocotb
benches, the CLI and the benchmarks all compare against :func:`run` with ``np.array_equal``.

Arithmetic of one layer, for output row ``r`` and integer input vector ``x``::

    acc[r] = sum_c weight[r, c] * x[c]                        (exact, any order)
    y[r]   = requantize(acc[r] + bias[r], multiplier[r], shift[r], relu)
    requantize(v, m, s, relu) = clamp((v * m + 2**(s-1)) >> s, 0 if relu else -128, 127)

``>>`` is an arithmetic shift (floor division by ``2**s``), so ties round toward +infinity.
A layer imported with the model's own quantization (``quant.half_even``: QONNX, ONNX QDQ)
rounds ties to even instead, as ``QuantizeLinear`` does:
``(v * m + 2**(s-1) - 1 + ((v * m >> s) & 1)) >> s``.
:func:`run` computes this from the sparse memory images themselves (pointers, relative indices,
padding), so a wrong image gives a wrong answer here too; :func:`run_dense` computes it from the
quantized weight matrices, and the tests hold the two equal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from core.arith import ACT_MAX, ACT_MIN
from core.ir import Layer, Model, SparseProgram

__all__ = [
    "quantize_input", "dequantize", "requantize", "pool", "run_dense", "run", "decode_pes",
    "RunResult", "ideal_cycles", "dense_cycles", "synthetic_run",
]


def quantize_input(x: np.ndarray, scale: float) -> np.ndarray:
    """Float inputs to the int8 values the hardware takes (round half to even, saturate)."""
    q = np.rint(np.asarray(x, dtype=np.float64) / scale)
    return np.clip(q, ACT_MIN, ACT_MAX).astype(np.int64)


def dequantize(q: np.ndarray, scale: float) -> np.ndarray:
    return np.asarray(q, dtype=np.float64) * scale


def requantize(value, multiplier, shift, relu: bool, half_even: bool = False) -> np.ndarray:
    """Integer-only requantization: fixed-point multiply, rounding shift, saturation, ReLU.
    Ties round up, or to even with ``half_even``."""
    value = np.asarray(value, dtype=np.int64)
    multiplier = np.asarray(multiplier, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    product = value * multiplier                      # |value| < 2**33, multiplier < 2**15
    half = np.int64(1) << (shift - 1)
    if half_even:
        half = half - 1 + ((product >> shift) & 1)
    rounded = (product + half) >> shift
    return np.clip(rounded, 0 if relu else ACT_MIN, ACT_MAX)


def pool(layer: Layer, values: np.ndarray) -> np.ndarray:
    """Requantized rows [N, windows * group], window by window, to outputs [N, windows]: the
    maximum, or the rounded average ``requantize(sum, pool_multiplier, pool_shift)``."""
    if layer.pool is None:
        return values
    windows = values.reshape(len(values), -1, layer.group)
    if layer.pool.kind == "max":
        return windows.max(axis=2)
    q = layer.quant
    return requantize(windows.sum(axis=2), q.pool_multiplier, q.pool_shift,
                      layer.pool.relu_after)


def run_dense(model: Model, x: np.ndarray, *, return_activations: bool = False):
    """Run the quantized model from its weight matrices. ``x``: int [N, in] or [in]."""
    x = np.asarray(x, dtype=np.int64)
    single = x.ndim == 1
    act = np.atleast_2d(x)
    activations = [act]
    for layer in model.layers:
        q = layer.quant
        rc = layer.row_channel()
        acc = act @ layer.matrix(quantized=True).T
        act = pool(layer, requantize(acc + q.bias[rc], q.multiplier[rc], q.shift[rc],
                                     layer.relu, q.half_even))
        activations.append(act)
    out = act[0] if single else act
    return (out, activations) if return_activations else out


def decode_pes(program: SparseProgram) -> tuple[tuple[np.ndarray, ...], ...]:
    """Walk every PE's column pointers and relative indices back into dense blocks.

    Returns ``mats[m][k]``: int64 [row_slots[m], col_slots[m]] for PE ``k`` (grid position
    ``(k // C, k % C)``) and layer ``m``. Raises ``ValueError`` on a malformed image (an entry
    past its row group's rows).
    """
    return _decode_cached(program)


@lru_cache(maxsize=8)
def _decode_cached(program: SparseProgram):
    mats = []
    C = program.grid.cols
    for m in range(len(program.layers)):
        cols = program.col_slots[m]
        per_pe = []
        for k, pe in enumerate(program.pe_images):
            rows = program.reducers[k // C].row_count(m)
            weights = _entry_weights(program, pe, m)
            mat = np.zeros((program.row_slots[m], cols), dtype=np.int64)
            for c in range(cols):
                p = program.ptr_base[m] + c
                row = -1
                for e in range(int(pe.ptr[p]), int(pe.ptr[p + 1])):
                    row += int(pe.entry_index[e]) + 1
                    if row >= rows:
                        raise ValueError(f"PE {k}'s image decodes to row {row} beyond its row "
                                         f"group's {rows} rows (layer {m}, column {c})")
                    mat[row, c] += int(weights[e])
            per_pe.append(mat)
        mats.append(tuple(per_pe))
    return tuple(mats)


def _entry_weights(program: SparseProgram, pe, layer: int) -> np.ndarray:
    """The int8 weight of each of ``pe``'s entries, as the hardware sees it: the entry itself,
    or (weight sharing) its code looked up in ``layer``'s codebook."""
    if program.codebooks is None:
        return pe.entry_value.astype(np.int64)
    return np.asarray(program.codebooks[layer], dtype=np.int64)[pe.entry_code]


@dataclass(frozen=True, eq=False)
class RunResult:
    outputs: np.ndarray        # int64 [N, out]: what the hardware streams out
    activations: list          # per layer input (model order), int64 [N, features]; last = outputs
    pe_entries: np.ndarray     # int64 [N, layers, P]: entries (with padding) each PE walks
    pe_lookups: np.ndarray     # int64 [N, layers, P]: activations each PE's bus brings it
    nnz_active: np.ndarray     # int64 [N, layers]: nonzero weights in columns of nonzero inputs

    @property
    def ideal_cycles(self) -> np.ndarray:
        pes = self.pe_entries.shape[2]
        return np.ceil(self.nnz_active / pes).astype(np.int64).sum(axis=1)

    @property
    def pe_bound(self) -> np.ndarray:
        """Cycles per inference of the busiest PE, all layers together: what a pipelined array
        needs at least, inference after inference, with this assignment."""
        return self.pe_entries.sum(axis=1).max(axis=1)

    @property
    def layer_bound(self) -> np.ndarray:
        """Sum over layers of the busiest PE's work: a layer-by-layer array's least."""
        return self.pe_entries.max(axis=2).sum(axis=1)


def run(program: SparseProgram, x: np.ndarray) -> RunResult:
    """Run integer inputs ``x`` (int [N, in] or [in]) through the sparse memory images."""
    x = np.atleast_2d(np.asarray(x, dtype=np.int64))
    if x.shape[1] != program.model.in_features:
        raise ValueError(f"input has {x.shape[1]} features, the model takes "
                         f"{program.model.in_features}")
    if ((x < ACT_MIN) | (x > ACT_MAX)).any():
        raise ValueError("integer inputs must lie in [-128, 127]")
    mats = decode_pes(program)
    grid, layers = program.grid, program.layers
    n, C = len(x), grid.cols
    pe_entries = np.zeros((n, len(layers), grid.pes), dtype=np.int64)
    pe_lookups = np.zeros_like(pe_entries)
    nnz_active = np.zeros((n, len(layers)), dtype=np.int64)
    act = x
    activations = [x]
    for m, layer in enumerate(layers):
        col_nnz = np.count_nonzero(layer.matrix(quantized=True), axis=0)
        nnz_active[:, m] = (act != 0) @ col_nnz
        ptr = slice(program.ptr_base[m], program.ptr_base[m] + program.col_slots[m] + 1)
        # each column group's inputs, in its local order (0 in unused slots)
        groups = []
        for c in range(C):
            src = program.column_sources(m, c)
            cols = np.where(src >= 0, act[:, np.maximum(src, 0)], 0)
            real = src >= 0
            sent = (cols != 0) & real if program.skip_zero_activations else np.broadcast_to(
                real, cols.shape)
            groups.append((cols, sent.astype(np.int64)))
        out = np.zeros((n, layer.out_features), dtype=np.int64)
        for r, red in enumerate(program.reducers):
            rows = red.row_count(m)
            acc = np.zeros((n, rows), dtype=np.int64)
            for c in range(C):
                k = grid.pe(r, c)
                cols, sent = groups[c]
                acc += cols @ mats[m][k][:rows].T
                counts = np.diff(program.pe_images[k].ptr[ptr])
                pe_entries[:, m, k] = sent @ counts
                pe_lookups[:, m, k] = sent.sum(axis=1)
            local = slice(program.row_base[m], program.row_base[m] + rows)
            y = pool(layer, requantize(acc + red.bias[local], red.multiplier[local],
                                       layer.quant.shift[0], layer.relu,
                                       layer.quant.half_even))
            out[:, program.outputs_of(r, m)] = y
        activations.append(out)
        act = out
    return RunResult(act, activations, pe_entries, pe_lookups, nnz_active)


def synthetic_run(program: SparseProgram, *, seed: int = 0) -> RunResult:
    """A run of ``program`` on 16 synthetic dense inputs: a calibration run for the fit
    check's plan (``boards.fit.plan``) where no calibration data is at hand (tests,
    benchmarks)."""
    rng = np.random.default_rng(seed)
    return run(program, rng.integers(-64, 64, (16, program.model.in_features)))


def ideal_cycles(nnz_active: np.ndarray, pes: int) -> np.ndarray:
    """``sum over layers of ceil(nnz_active / P)`` for each inference."""
    return np.ceil(np.asarray(nnz_active) / pes).astype(np.int64).sum(axis=-1)


def dense_cycles(model: Model, pes: int) -> int:
    """Cycles a dense array of ``pes`` MACs needs: every weight, every input (for a
    convolution: every kernel tap at every output position)."""
    return sum(math.ceil(layer.structural_macs / pes) for layer in model.layers)
