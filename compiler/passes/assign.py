"""PE assignment: which row group owns which outputs of each layer.

The PEs sit on an R x C grid (:class:`~core.ir.Grid`): PE ``(r, c)`` works on the weights of
row group ``r`` in the columns of group ``c``, so the work of a row group is spread over C PEs
by the columns it touches. EIE interleaves rows and balances nothing; balancing total nonzero
counts (ESE) still leaves PEs idle whenever the *active* columns (those whose input is nonzero)
fall unevenly. This pass balances the work each PE does for the activation patterns it will
actually see: it minimises the mean, over calibration inputs, of the largest per-PE count of
nonzero weights in active columns, by greedy placement followed by a seeded local search over
moves and swaps of outputs between row groups.
"""

from __future__ import annotations

import numpy as np

__all__ = ["assign_rows", "pe_work", "interleaved", "block_counts", "nnz_balanced"]


def pe_work(mask: np.ndarray, col_group: np.ndarray, owner: np.ndarray, grid_rows: int,
            grid_cols: int, active: np.ndarray) -> np.ndarray:
    """Entries each PE walks for each activity pattern: int [S, R, C]. ``mask``: [rows, cols]
    nonzero counts, ``col_group``: the column group of every column, ``owner``: the row group
    of every row."""
    per = _per_group_work(mask, col_group, grid_cols, active)       # [rows, S, C]
    out = np.zeros((grid_rows, per.shape[1], grid_cols), dtype=np.int64)
    np.add.at(out, owner, per)
    return out.transpose(1, 0, 2)


def interleaved(rows: int, grid_rows: int) -> list[np.ndarray]:
    """Row ``i`` to group ``i mod R`` (EIE, ESE): the assignment a load-balance-aware pruned
    model is pruned for (:mod:`compiler.prune.methods.balanced`)."""
    return [np.arange(r, rows, grid_rows) for r in range(grid_rows)]


def block_counts(mask: np.ndarray, col_group: np.ndarray, groups, grid_cols: int
                 ) -> np.ndarray:
    """int [R, C]: the nonzero weights of every PE block; -1 where a block has no rows or no
    columns. ``groups``: each row group's rows."""
    m = np.asarray(mask).astype(np.int64)
    out = np.full((len(groups), grid_cols), -1, dtype=np.int64)
    for r, rows in enumerate(groups):
        for c in range(grid_cols):
            cols = np.flatnonzero(col_group == c)
            if len(rows) and len(cols):
                out[r, c] = int(m[np.ix_(rows, cols)].sum())
    return out


def nnz_balanced(mask: np.ndarray, col_group: np.ndarray, groups, grid_cols: int) -> bool:
    """Every PE block with rows and columns holds the same nonzero count, give or take one."""
    counts = block_counts(mask, col_group, groups, grid_cols)
    busy = counts[counts >= 0]
    return busy.size == 0 or int(busy.max() - busy.min()) <= 1


def _per_group_work(mask, col_group, grid_cols, active) -> np.ndarray:
    """[rows, S, C]: the work a row adds to the PE of each column group, per pattern."""
    rows = mask.shape[0]
    work = np.zeros((rows, len(active), grid_cols), dtype=np.int64)
    m = mask.astype(np.int64)
    a = active.astype(np.int64)
    for c in range(grid_cols):
        cols = col_group == c
        if cols.any():
            work[:, :, c] = (a[:, cols] @ m[:, cols].T).T
    return work


def assign_rows(mask: np.ndarray, grid_rows: int, col_group: np.ndarray | None = None,
                grid_cols: int = 1, active: np.ndarray | None = None, *,
                prior: np.ndarray | None = None, onward: np.ndarray | None = None,
                iterations: int = 4000, seed: int = 0) -> list[np.ndarray]:
    """Partition the rows of ``mask`` over ``grid_rows`` row groups. ``mask``: [rows, cols],
    the nonzero weights (bool) or, for rows that stand for several accumulators (a pooling
    window), how many nonzero weights each holds per column. ``col_group``: the column group
    (0..grid_cols-1) of every column (default: all in group 0).

    ``active``: bool [S, cols], which columns are nonzero for each calibration input (all ones
    when unknown). Every group gets at most ``ceil(rows / grid_rows)`` rows. Returns each
    group's rows, sorted.

    A pipelined array is as fast as its busiest PE over all layers, so the search balances
    ``prior`` (float [S, R, C], the work the layers before already give each PE) plus this
    layer's work plus ``onward`` (float [rows, S]: the work each row's output brings the
    next layer, shared by the R PEs of the bus its row group drives).
    """
    if grid_rows < 1:
        raise ValueError(f"grid_rows must be at least 1, not {grid_rows}")
    rows, cols = mask.shape
    if col_group is None:
        col_group = np.zeros(cols, dtype=np.int64)
    if active is None or len(active) == 0:
        active = np.ones((1, cols), dtype=bool)
    active = np.asarray(active, dtype=bool)[:256]
    R, C = grid_rows, grid_cols
    capacity = -(-rows // R)
    work = _per_group_work(mask, np.asarray(col_group), C, active).astype(np.float64)
    S = len(active)
    base = np.zeros((R, S, C)) if prior is None else np.asarray(prior, float)[:S].transpose(1, 0, 2)
    ahead = np.zeros((rows, S)) if onward is None else np.asarray(onward, float)[:, :S] / R
    bus = np.arange(R) % C
    # Column-balance term: row groups that share a column's entries evenly stay balanced for
    # any activity pattern, including ones the calibration set never showed.
    col_weight = active.mean(axis=0) + 1.0 / max(S, 1)
    m = mask.astype(np.float64)

    def total(load, onto):
        """[R, S, C]: every PE's work (``onto``: [C, S], the next layer's per bus)."""
        return base + load + onto.T[None, :, :]

    owner = np.empty(rows, dtype=np.int64)
    load = np.zeros((R, S, C))
    onto = np.zeros((C, S))
    counts = np.zeros(R, dtype=np.int64)
    for r in np.argsort(-(work.sum(axis=(1, 2)) + ahead.sum(axis=1)), kind="stable"):
        candidates = np.flatnonzero(counts < capacity)
        now = total(load, onto)
        after = []
        for k in candidates:
            trial = now.copy()
            trial[k] += work[r]
            trial[:, :, bus[k]] += ahead[r][None, :]
            after.append(trial.max(axis=(0, 2)).mean())
        k = candidates[int(np.argmin(after))]
        owner[r] = k
        load[k] += work[r]
        onto[bus[k]] += ahead[r]
        counts[k] += 1
    if R == 1 or rows <= 1:
        return [np.flatnonzero(owner == k) for k in range(R)]

    col_load = np.zeros((R, cols))
    np.add.at(col_load, owner, m)

    def cost_of():
        return (total(load, onto).max(axis=(0, 2)).mean()
                + 1e-3 * float(((col_load ** 2) @ col_weight).sum()))

    best = cost_of()
    rng = np.random.default_rng(seed)
    for _ in range(iterations):
        a = int(rng.integers(rows))
        i = owner[a]
        if rng.random() < 0.5 or counts.min() >= capacity:
            b = int(rng.integers(rows))
            j = owner[b]
            if i == j:
                continue
            moves = [(a, i, j), (b, j, i)]
        else:
            j = int(rng.choice(np.flatnonzero(counts < capacity)))
            if i == j:
                continue
            b = None
            moves = [(a, i, j)]
        for row, src, dst in moves:
            _move(load, onto, col_load, work, ahead, m, bus, row, src, dst)
        new = cost_of()
        if new <= best:
            best = new
            for row, src, dst in moves:
                owner[row] = dst
                counts[src] -= 1
                counts[dst] += 1
        else:
            for row, src, dst in reversed(moves):
                _move(load, onto, col_load, work, ahead, m, bus, row, dst, src)
    return [np.flatnonzero(owner == k) for k in range(R)]


def _move(load, onto, col_load, work, ahead, m, bus, row, src, dst):
    load[src] -= work[row]
    load[dst] += work[row]
    onto[bus[src]] -= ahead[row]
    onto[bus[dst]] += ahead[row]
    col_load[src] -= m[row]
    col_load[dst] += m[row]
