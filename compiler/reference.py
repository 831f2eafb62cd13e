"""The one bit-exact integer model of the accelerator.

Rounding, saturation and shift rules are written here and nowhere else. Hardware tests, cocotb
benches, the CLI and the benchmarks all compare against :func:`run` with ``np.array_equal``.

Arithmetic of one layer, for output row ``r`` and integer input vector ``x``::

    acc[r] = sum_c weight[r, c] * x[c]                        (exact, any order)
    y[r]   = requantize(acc[r] + bias[r], multiplier[r], shift[r], relu)
    requantize(v, m, s, relu) = clamp((v * m + 2**(s-1)) >> s, 0 if relu else -128, 127)

``>>`` is an arithmetic shift (floor division by ``2**s``), so ties round toward +infinity.
:func:`run` computes this from the sparse memory images themselves (pointers, relative indices,
padding), so a wrong image gives a wrong answer here too; :func:`run_dense` computes it from the
quantized weight matrices, and the tests hold the two equal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .ir import ACT_MAX, ACT_MIN, Layer, Model, SparseProgram

__all__ = [
    "quantize_input", "dequantize", "requantize", "pool", "run_dense", "run", "decode_lanes",
    "RunResult", "ideal_cycles", "dense_cycles",
]


def quantize_input(x: np.ndarray, scale: float) -> np.ndarray:
    """Float inputs to the int8 values the hardware takes (round half to even, saturate)."""
    q = np.rint(np.asarray(x, dtype=np.float64) / scale)
    return np.clip(q, ACT_MIN, ACT_MAX).astype(np.int64)


def dequantize(q: np.ndarray, scale: float) -> np.ndarray:
    return np.asarray(q, dtype=np.float64) * scale


def requantize(value, multiplier, shift, relu: bool) -> np.ndarray:
    """Integer-only requantization: fixed-point multiply, rounding shift, saturation, ReLU."""
    value = np.asarray(value, dtype=np.int64)
    multiplier = np.asarray(multiplier, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    product = value * multiplier                      # |value| < 2**33, multiplier < 2**15
    rounded = (product + (np.int64(1) << (shift - 1))) >> shift
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
                                     layer.relu))
        activations.append(act)
    out = act[0] if single else act
    return (out, activations) if return_activations else out


def decode_lanes(program: SparseProgram) -> tuple[tuple[np.ndarray, ...], ...]:
    """Walk every lane's pointers and relative indices back into per-lane dense matrices.

    Returns ``mats[m][k]``: int64 [row_slots[m], column_count(m)] for lane ``k`` and layer ``m``.
    Raises ``ValueError`` on a malformed image (an entry past the lane's rows).
    """
    return _decode_cached(program)


@lru_cache(maxsize=8)
def _decode_cached(program: SparseProgram):
    mats = []
    for m in range(len(program.layers)):
        cols = program.column_count(m)
        per_lane = []
        for lane in program.lanes:
            mat = np.zeros((program.row_slots[m], cols), dtype=np.int64)
            for c in range(cols):
                p = program.ptr_base[m] + c
                start, count = int(lane.ptr_start[p]), int(lane.ptr_count[p])
                row = -1
                for e in range(start, start + count):
                    row += int(lane.entry_index[e]) + 1
                    if row >= lane.row_count(m):
                        raise ValueError(f"lane image decodes to row {row} beyond the lane's "
                                         f"{lane.row_count(m)} rows (layer {m}, column {c})")
                    mat[row, c] += int(lane.entry_value[e])
            per_lane.append(mat)
        mats.append(tuple(per_lane))
    return tuple(mats)


@dataclass(frozen=True, eq=False)
class RunResult:
    outputs: np.ndarray        # int64 [N, out]: what the hardware streams out
    activations: list          # per layer input (model order), int64 [N, features]; last = outputs
    lane_entries: np.ndarray   # int64 [N, layers, P]: entries (with padding) each PE walks
    lane_jobs: np.ndarray      # int64 [N, layers, P]: columns each PE receives
    nnz_active: np.ndarray     # int64 [N, layers]: nonzero weights in columns of nonzero inputs

    @property
    def ideal_cycles(self) -> np.ndarray:
        pes = self.lane_entries.shape[2]
        return np.ceil(self.nnz_active / pes).astype(np.int64).sum(axis=1)


def run(program: SparseProgram, x: np.ndarray) -> RunResult:
    """Run integer inputs ``x`` (int [N, in] or [in]) through the sparse memory images."""
    x = np.atleast_2d(np.asarray(x, dtype=np.int64))
    if x.shape[1] != program.model.in_features:
        raise ValueError(f"input has {x.shape[1]} features, the model takes "
                         f"{program.model.in_features}")
    if ((x < ACT_MIN) | (x > ACT_MAX)).any():
        raise ValueError("integer inputs must lie in [-128, 127]")
    mats = decode_lanes(program)
    n, pes, layers = len(x), program.pes, program.layers
    lane_entries = np.zeros((n, len(layers), pes), dtype=np.int64)
    lane_jobs = np.zeros_like(lane_entries)
    nnz_active = np.zeros((n, len(layers)), dtype=np.int64)
    activations = [x]
    cols = x                                   # layer input in the program's column order
    for m, layer in enumerate(layers):
        active = (cols != 0 if program.skip_zero_activations
                  else np.ones_like(cols, dtype=bool)).astype(np.int64)
        col_nnz = np.count_nonzero(layer.matrix(quantized=True), axis=0)
        nnz_active[:, m] = (activations[-1] != 0) @ col_nnz
        ptr = slice(program.ptr_base[m], program.ptr_base[m] + program.column_count(m))
        out_model = np.zeros((n, layer.out_features), dtype=np.int64)
        slots = program.out_slots[m]
        next_cols = np.zeros((n, pes * slots), dtype=np.int64)
        for k, lane in enumerate(program.lanes):
            counts = lane.ptr_count[ptr]
            lane_entries[:, m, k] = active @ counts
            lane_jobs[:, m, k] = active @ (counts > 0).astype(np.int64)
            rows = lane.rows[m]
            base = program.row_base[m]
            acc = cols @ mats[m][k][: len(rows)].T
            local = slice(base, base + len(rows))
            y = pool(layer, requantize(acc + lane.bias[local], lane.multiplier[local],
                                       lane.shift[local], layer.relu))
            out_model[:, program.lane_outputs(k, m)] = y
            next_cols[:, k * slots: k * slots + y.shape[1]] = y
        activations.append(out_model)
        cols = next_cols
    return RunResult(activations[-1], activations, lane_entries, lane_jobs, nnz_active)


def ideal_cycles(nnz_active: np.ndarray, pes: int) -> np.ndarray:
    """``sum over layers of ceil(nnz_active / P)`` for each inference."""
    return np.ceil(np.asarray(nnz_active) / pes).astype(np.int64).sum(axis=-1)


def dense_cycles(model: Model, pes: int) -> int:
    """Cycles a dense array of ``pes`` MACs needs: every weight, every input (for a
    convolution: every kernel tap at every output position)."""
    return sum(math.ceil(layer.structural_macs / pes) for layer in model.layers)
