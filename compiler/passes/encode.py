"""Sparsity encoding: EIE-style per-PE column-compressed memory images.

Each PE stores, for every column of every layer, its nonzero weights in that column as
(int8 value, relative row index) words, plus a column pointer (start, count). A relative index
counts the PE's local rows skipped since the previous entry; where a gap does not fit
``index_bits``, a padding entry (value 0, index ``2**index_bits - 1``) bridges it.

Hidden layers are renumbered: the input column of layer ``m`` that carries output ``i`` of PE
``j`` in layer ``m-1`` is ``j * row_slots[m-1] + i``. The compiler is free to permute hidden
neurons, so each PE can send its outputs without any global reordering.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..ir import ACT_MIN, MULTIPLIER_BITS, LaneImage, Model, SparseProgram, Widths
from .assign import assign_rows

__all__ = ["encode"]


def _encode_column(local_rows: np.ndarray, values: np.ndarray, index_bits: int):
    """Relative-index encoding of one column of one PE: ([values], [indices])."""
    limit = (1 << index_bits) - 1
    out_v, out_i = [], []
    prev = -1
    for row, value in zip(local_rows.tolist(), values.tolist()):
        gap = row - prev - 1
        while gap > limit:
            out_v.append(0)
            out_i.append(limit)
            prev += limit + 1
            gap = row - prev - 1
        out_v.append(value)
        out_i.append(gap)
        prev = row
    return out_v, out_i


def _choose_index_bits(gaps: list[int], entries: int, row_slots) -> int:
    """Narrowest relative-index field whose padding costs at most 1 % more entries (a padding
    entry costs a cycle and a word), never wider than the deepest PE needs."""
    gaps = np.asarray(gaps, dtype=np.int64)
    widest = max(1, int(max(row_slots) - 1).bit_length())
    for bits in range(1, widest):
        if int((gaps >> bits).sum()) <= 0.01 * max(entries, 1):
            return bits
    return widest


def _structure(layer) -> np.ndarray:
    """Where the layer's matrix can be nonzero at all (every weight present)."""
    ones = dataclasses.replace(layer, weight=np.ones_like(layer.weight), quant=None)
    return ones.matrix() != 0


def _offsets(sizes) -> tuple[int, ...]:
    return tuple(int(x) for x in np.concatenate([[0], np.cumsum(sizes)[:-1]]))


def encode(model: Model, pes: int, *, index_bits: int | None = None, activity=None,
           skip_zero_activations: bool = True) -> SparseProgram:
    """Build the memory images of ``model`` (quantized) for ``pes`` processing elements.

    ``index_bits``: width of the relative row index (None: the narrowest with <= 1 % padding).

    ``activity``: optional list, per layer, of bool [S, in_features] (which inputs are nonzero
    on calibration data, model order), used to balance the PEs. With
    ``skip_zero_activations=False`` the images describe a dense array: every weight is stored
    and every input column is processed, zero or not (the baseline for benchmarks).
    """
    if not model.quantized:
        raise ValueError("encode needs a quantized model")
    if pes < 1:
        raise ValueError(f"pes must be at least 1, not {pes}")
    if index_bits is not None and not 1 <= index_bits <= 16:
        raise ValueError(f"index_bits must be in 1..16, not {index_bits}")
    dense = not skip_zero_activations
    layers = model.layers
    n_layers = len(layers)
    matrices = [layer.matrix(quantized=True) for layer in layers]
    stored = [_structure(layer) if dense else mat != 0 for layer, mat in zip(layers, matrices)]

    # PEs own whole outputs: all rows of a pooling window stay together, window by window.
    owners = []
    for m, layer in enumerate(layers):
        per_output = stored[m].reshape(layer.out_features, layer.group, -1).sum(axis=1)
        act = None if activity is None else np.asarray(activity[m], dtype=bool)
        outputs = assign_rows(per_output, pes, act)
        owners.append([(np.repeat(o, layer.group) * layer.group
                        + np.tile(np.arange(layer.group), len(o))) for o in outputs])
    row_slots = tuple(max(1, max(len(r) for r in owners[m])) for m in range(n_layers))
    out_slots = tuple(max(1, max(len(r) // layer.group for r in owners[m]))
                      for m, layer in enumerate(layers))
    row_base, out_base = _offsets(row_slots), _offsets(out_slots)

    # model input feature feeding each program column of each layer (-1: an unused slot)
    col_source = [np.arange(layers[0].in_features)]
    for m in range(1, n_layers):
        src = np.full(pes * out_slots[m - 1], -1, dtype=np.int64)
        group = layers[m - 1].group
        for j, rows in enumerate(owners[m - 1]):
            outs = rows[::group] // group
            src[j * out_slots[m - 1]: j * out_slots[m - 1] + len(outs)] = outs
        col_source.append(src)
    col_counts = [len(s) for s in col_source]
    ptr_base = _offsets(col_counts)

    if index_bits is None:
        gaps, entries = [], 0
        for m in range(n_layers):
            for rows in owners[m]:
                for src in col_source[m]:
                    if src >= 0 and len(rows):
                        local = np.flatnonzero(stored[m][rows, src])
                        gaps += np.diff(local, prepend=-1).tolist()
                        entries += len(local)
        index_bits = _choose_index_bits([g - 1 for g in gaps], entries, row_slots)

    lanes_v = [[] for _ in range(pes)]
    lanes_i = [[] for _ in range(pes)]
    ptr_start = np.zeros((pes, sum(col_counts)), dtype=np.int64)
    ptr_count = np.zeros((pes, sum(col_counts)), dtype=np.int64)
    for m in range(n_layers):
        for k, rows in enumerate(owners[m]):
            for c, src in enumerate(col_source[m]):
                p = ptr_base[m] + c
                ptr_start[k, p] = len(lanes_v[k])
                if src < 0 or len(rows) == 0:
                    continue
                local = np.flatnonzero(stored[m][rows, src])
                values, indices = _encode_column(local, matrices[m][rows[local], src],
                                                 index_bits)
                lanes_v[k] += values
                lanes_i[k] += indices
                ptr_count[k, p] = len(values)

    channels = [layer.row_channel() for layer in layers]
    widths = _widths([np.abs(mat).sum(axis=1) for mat in matrices],
                     [layer.quant.bias[rc] for layer, rc in zip(layers, channels)])
    lanes = []
    for k in range(pes):
        bias = np.zeros(sum(row_slots), dtype=np.int64)
        mult = np.zeros(sum(row_slots), dtype=np.int64)
        shift = np.ones(sum(row_slots), dtype=np.int64)
        fanout = np.zeros(sum(out_slots), dtype=np.int64)
        for m, layer in enumerate(layers):
            rows = owners[m][k]
            q, rc = layer.quant, channels[m][rows]
            sl = slice(row_base[m], row_base[m] + len(rows))
            bias[sl] = q.bias[rc]
            mult[sl] = q.multiplier[rc]
            shift[row_base[m]: row_base[m] + row_slots[m]] = q.shift[0]
            if m + 1 < n_layers:
                for i in range(len(rows) // layer.group):
                    p = ptr_base[m + 1] + k * out_slots[m] + i
                    fanout[out_base[m] + i] = sum(1 << j for j in range(pes)
                                                  if ptr_count[j, p] > 0)
        lanes.append(LaneImage(
            rows=tuple(np.asarray(owners[m][k], dtype=np.int64) for m in range(n_layers)),
            entry_value=np.array(lanes_v[k], dtype=np.int8),
            entry_index=np.array(lanes_i[k], dtype=np.int64),
            ptr_start=ptr_start[k], ptr_count=ptr_count[k],
            bias=bias, multiplier=mult, shift=shift, fanout=fanout))

    input_fanout = np.array([sum(1 << j for j in range(pes) if ptr_count[j, c] > 0)
                             for c in range(layers[0].in_features)], dtype=np.int64)
    out_lane = np.zeros(model.out_features, dtype=np.int64)
    out_row = np.zeros(model.out_features, dtype=np.int64)
    for k, rows in enumerate(owners[-1]):
        outs = rows[::layers[-1].group] // layers[-1].group
        out_lane[outs] = k
        out_row[outs] = np.arange(len(outs))
    return SparseProgram(
        model=model, pes=pes, index_bits=index_bits, row_slots=row_slots, row_base=row_base,
        out_slots=out_slots, out_base=out_base, ptr_base=ptr_base, lanes=tuple(lanes),
        input_fanout=input_fanout, output_lane=out_lane, output_row=out_row, widths=widths,
        skip_zero_activations=skip_zero_activations).verify()


def _signed_bits(bound: int) -> int:
    """Bits of a signed integer holding every value in [-bound, bound]."""
    return max(2, int(bound).bit_length() + 1)


def _widths(mats_abs_sums, biases) -> Widths:
    """Worst case over all int8 inputs: |x| <= 128 for every input."""
    worst_input = -ACT_MIN
    acc_bound = max((int(s.max(initial=0)) for s in mats_abs_sums), default=0) * worst_input
    biased_bound = max((int((s * worst_input + np.abs(b)).max(initial=0))
                        for s, b in zip(mats_abs_sums, biases)), default=0)
    biased = _signed_bits(biased_bound)
    return Widths(accumulator=_signed_bits(acc_bound), biased=biased,
                  product=biased + MULTIPLIER_BITS + 1)
