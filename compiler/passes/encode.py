"""Sparsity encoding: EIE-style column-compressed memory images for an R x C grid of PEs.

PE ``(r, c)`` stores, for every local column of group ``c`` of every layer, its nonzero
weights of row group ``r`` in that column as (int8 value, relative row index) words, behind a
CSC pointer table (one start per column, and one end). A relative index counts the row group's
local rows skipped since the previous entry; where a gap does not fit ``index_bits``, a
padding entry (value 0, index ``2**index_bits - 1``) bridges it.

Columns are numbered so that nothing crosses the chip: layer 0's input ``j`` is column
``j // C`` of group ``j % C`` (the input arrives C values a beat, lane ``c`` on bus ``c``), and
local output ``k`` of reducer ``r`` in layer ``m`` is column ``(r // C) * out_slots[m] + k`` of
group ``r % C`` in layer ``m + 1`` (the bus that reducer drives). The compiler is free to
permute hidden neurons, so every reducer sends its outputs without any global reordering.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from core.arith import ACT_MIN, MULTIPLIER_BITS
from core.ir import Grid, Model, PEImage, ReducerImage, SparseProgram, Widths, column_sources
from .assign import assign_rows, interleaved, nnz_balanced, pe_work

__all__ = ["encode", "choose_grid"]


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


def _choose_index_bits(gaps: np.ndarray, entries: int, row_slots) -> int:
    """Narrowest relative-index field whose padding costs at most 1 % more entries (a padding
    entry costs a cycle and a word), never wider than the deepest row group needs."""
    widest = max(1, int(max(row_slots) - 1).bit_length())
    for bits in range(1, widest):
        if int((gaps >> bits).sum()) <= 0.01 * max(entries, 1):
            return bits
    return widest


def _activity(activity, m: int, features: int) -> np.ndarray:
    """bool [S, features]: which inputs of layer ``m`` the calibration data makes nonzero (all,
    as one pattern, when unknown)."""
    if activity is None:
        return np.ones((1, features), dtype=bool)
    return np.asarray(activity[m], dtype=bool)[:256]


def _structure(layer) -> np.ndarray:
    """Where the layer's matrix can be nonzero at all (every weight present)."""
    ones = dataclasses.replace(layer, weight=np.ones_like(layer.weight), quant=None)
    return ones.matrix() != 0


def _offsets(sizes) -> tuple[int, ...]:
    return tuple(int(x) for x in np.concatenate([[0], np.cumsum(sizes)[:-1]]))


def choose_grid(pes: int, grid: Grid | str | None = None) -> Grid:
    """``grid`` itself (checked against ``pes``), or the squarest R x C = ``pes`` with R >= C."""
    if grid is None:
        return Grid.shapes(pes)[0]
    grid = Grid.parse(grid) if isinstance(grid, str) else grid
    if grid.pes != pes:
        raise ValueError(f"grid {grid} has {grid.pes} PEs, not {pes}")
    return grid


def encode(model: Model, pes: int, *, grid: Grid | str | None = None,
           index_bits: int | None = None, activity=None,
           skip_zero_activations: bool = True) -> SparseProgram:
    """Build the memory images of ``model`` (quantized) for ``pes`` processing elements.

    ``grid``: their R x C shape (default :func:`choose_grid`). ``index_bits``: width of the
    relative row index (None: the narrowest with <= 1 % padding).

    ``activity``: optional list, per layer, of bool [S, in_features] (which inputs are nonzero
    on calibration data, model order), used to balance the PEs' work
    (:func:`~compiler.passes.assign.assign_rows`). A layer whose nonzero weights already fall
    evenly on the PEs under interleaved rows (a load-balance-aware pruned model) keeps that
    assignment. With
    ``skip_zero_activations=False`` the images describe a dense array: every weight is stored
    and every input column is processed, zero or not (the baseline for benchmarks).
    """
    if not model.quantized:
        raise ValueError("encode needs a quantized model")
    if pes < 1:
        raise ValueError(f"pes must be at least 1, not {pes}")
    if index_bits is not None and not 1 <= index_bits <= 16:
        raise ValueError(f"index_bits must be in 1..16, not {index_bits}")
    grid = choose_grid(pes, grid)
    R, C = grid.rows, grid.cols
    dense = not skip_zero_activations
    layers = model.layers
    n_layers = len(layers)
    matrices = [layer.matrix(quantized=True) for layer in layers]
    stored = [_structure(layer) if dense else mat != 0 for layer, mat in zip(layers, matrices)]

    # Row groups own whole outputs: all rows of a pooling window stay together. The columns of
    # each layer follow from the row groups of the layer before, so layers go in order.
    owners, out_slots, col_slots, sources = [], [], [], []
    slots = -(-layers[0].in_features // C)
    prior = None
    for m, layer in enumerate(layers):
        col_slots.append(slots)
        prev = None
        if m:
            group = layers[m - 1].group
            prev = [rows[::group] // group for rows in owners[m - 1]]
        src = [column_sources(grid, c, slots, layer.in_features, prev,
                              out_slots[m - 1] if m else 0) for c in range(C)]
        sources.append(src)
        col_group = np.full(layer.in_features, -1, dtype=np.int64)
        for c in range(C):
            col_group[src[c][src[c] >= 0]] = c
        per_output = stored[m].reshape(layer.out_features, layer.group, -1).sum(axis=1)
        act = _activity(activity, m, layer.in_features)
        onward = None
        if m + 1 < n_layers:
            # the work each output brings the next layer: its activity times its column's
            # entries there
            onward = (_activity(activity, m + 1, layers[m + 1].in_features).T
                      * stored[m + 1].sum(axis=0)[:, None])
        outputs = interleaved(layer.out_features, R)
        if not nnz_balanced(per_output, col_group, outputs, C):
            outputs = assign_rows(per_output, R, col_group, C, act, prior=prior,
                                  onward=onward)
        owner = np.empty(layer.out_features, dtype=np.int64)
        for r, o in enumerate(outputs):
            owner[o] = r
        work = pe_work(per_output, col_group, owner, R, C, act)
        prior = work if prior is None else prior + work
        owners.append([(np.repeat(o, layer.group) * layer.group
                        + np.tile(np.arange(layer.group), len(o))) for o in outputs])
        out_slots.append(max(1, max(len(o) for o in outputs)))
        slots = grid.bus_reducers * out_slots[-1]
    row_slots = tuple(max(1, max(len(rows) for rows in owners[m])) for m in range(n_layers))
    row_base = _offsets(row_slots)
    ptr_base = _offsets(col_slots)

    # per PE, per layer, per local column: the local rows of its entries
    columns = [[[] for _ in range(n_layers)] for _ in range(R * C)]
    gaps = []
    for m in range(n_layers):
        for r in range(R):
            rows = owners[m][r]
            for c in range(C):
                for src in sources[m][c]:
                    local = (np.flatnonzero(stored[m][rows, src]) if src >= 0 and len(rows)
                             else np.zeros(0, dtype=np.int64))
                    columns[grid.pe(r, c)][m].append((local, src))
                    gaps.append(np.diff(local, prepend=-1) - 1)
    if index_bits is None:
        all_gaps = np.concatenate(gaps) if gaps else np.zeros(0, dtype=np.int64)
        index_bits = _choose_index_bits(all_gaps, len(all_gaps), row_slots)

    pe_images = []
    for k in range(R * C):
        r = k // C
        values, indices, ptr = [], [], [0]
        for m in range(n_layers):
            rows = owners[m][r]
            for local, src in columns[k][m]:
                if len(local):
                    v, i = _encode_column(local, matrices[m][rows[local], src], index_bits)
                    values += v
                    indices += i
                ptr.append(len(values))
        pe_images.append(PEImage(entry_value=np.array(values, dtype=np.int8),
                                 entry_index=np.array(indices, dtype=np.int64),
                                 ptr=np.array(ptr, dtype=np.int64)))

    channels = [layer.row_channel() for layer in layers]
    reducers = []
    for r in range(R):
        bias = np.zeros(sum(row_slots), dtype=np.int64)
        mult = np.zeros(sum(row_slots), dtype=np.int64)
        for m, layer in enumerate(layers):
            rows = owners[m][r]
            sl = slice(row_base[m], row_base[m] + len(rows))
            bias[sl] = layer.quant.bias[channels[m][rows]]
            mult[sl] = layer.quant.multiplier[channels[m][rows]]
        reducers.append(ReducerImage(
            rows=tuple(np.asarray(owners[m][r], dtype=np.int64) for m in range(n_layers)),
            bias=bias, multiplier=mult))

    widths = _widths(matrices, [layer.quant.bias[rc] for layer, rc in zip(layers, channels)],
                     sources, grid)
    return SparseProgram(
        model=model, grid=grid, index_bits=index_bits, row_slots=row_slots, row_base=row_base,
        out_slots=tuple(out_slots), col_slots=tuple(col_slots), ptr_base=ptr_base,
        pe_images=tuple(pe_images), reducers=tuple(reducers), widths=widths,
        skip_zero_activations=skip_zero_activations).verify()


def _signed_bits(bound: int) -> int:
    """Bits of a signed integer holding every value in [-bound, bound]."""
    return max(2, int(bound).bit_length() + 1)


def _widths(matrices, biases, sources, grid) -> Widths:
    """Worst case over all int8 inputs: |x| <= 128 for every input."""
    worst_input = -ACT_MIN
    sums = [np.abs(mat).sum(axis=1) for mat in matrices]
    acc_bound = max((int(s.max(initial=0)) for s in sums), default=0) * worst_input
    biased_bound = max((int((s * worst_input + np.abs(b)).max(initial=0))
                        for s, b in zip(sums, biases)), default=0)
    partial = 0
    for mat, src in zip(matrices, sources):
        for c in range(grid.cols):
            cols = src[c][src[c] >= 0]
            if len(cols):
                partial = max(partial, int(np.abs(mat[:, cols]).sum(axis=1).max(initial=0)))
    biased = _signed_bits(biased_bound)
    return Widths(partial=_signed_bits(partial * worst_input),
                  accumulator=_signed_bits(acc_bound), biased=biased,
                  product=biased + MULTIPLIER_BITS + 1)
