"""PE assignment: which processing element owns which output rows of each layer.

EIE interleaves rows over PEs and balances nothing; balancing total nonzero counts (ESE) still
leaves PEs idle whenever the *active* columns (those whose input is nonzero) fall unevenly.
This pass balances the work each PE does for the activation patterns it will actually see:
it minimises the mean, over calibration inputs, of the largest per-PE count of nonzero weights
in active columns, by greedy placement followed by a seeded local search over row swaps.
"""

from __future__ import annotations

import numpy as np

__all__ = ["assign_rows", "lane_work"]


def lane_work(mask: np.ndarray, owner: np.ndarray, pes: int, active: np.ndarray) -> np.ndarray:
    """Entries each PE walks for each activity pattern: int [S, pes]."""
    per_row = active.astype(np.int64) @ mask.T.astype(np.int64)
    onehot = np.zeros((mask.shape[0], pes), dtype=np.int64)
    onehot[np.arange(mask.shape[0]), owner] = 1
    return per_row @ onehot


def assign_rows(mask: np.ndarray, pes: int, active: np.ndarray | None = None, *,
                iterations: int = 4000, seed: int = 0) -> list[np.ndarray]:
    """Partition the rows of ``mask`` over ``pes`` PEs. ``mask``: [rows, cols], the nonzero
    weights (bool) or, for rows that stand for several accumulators (a pooling window), how
    many nonzero weights each holds per column.

    ``active``: bool [S, cols], which columns are nonzero for each calibration input (all ones
    when unknown). Every PE gets at most ``ceil(rows / pes)`` rows. Returns each PE's rows,
    sorted.
    """
    if pes < 1:
        raise ValueError(f"pes must be at least 1, not {pes}")
    rows, cols = mask.shape
    if active is None or len(active) == 0:
        active = np.ones((1, cols), dtype=bool)
    active = active[:256]
    capacity = -(-rows // pes)
    per_row = active.astype(np.int64) @ mask.T.astype(np.int64)       # [S, rows]
    # Column-balance term: PEs that share a column's entries evenly stay balanced for any
    # activity pattern, including ones the calibration set never showed.
    col_weight = active.mean(axis=0) + 1.0 / max(len(active), 1)
    m = mask.astype(np.float64)

    owner = np.empty(rows, dtype=np.int64)
    load = np.zeros((len(active), pes), dtype=np.int64)
    counts = np.zeros(pes, dtype=np.int64)
    for r in np.argsort(-per_row.sum(axis=0), kind="stable"):
        candidates = np.flatnonzero(counts < capacity)
        k = candidates[int(np.argmin(load[:, candidates].mean(axis=0)))]
        owner[r] = k
        load[:, k] += per_row[:, r]
        counts[k] += 1
    if pes == 1 or rows <= 1:
        return [np.flatnonzero(owner == k) for k in range(pes)]

    col_load = np.zeros((pes, cols))
    np.add.at(col_load, owner, m)

    def cost_of(load, col_load):
        return load.max(axis=1).mean() + 1e-3 * float(((col_load ** 2) @ col_weight).sum())

    best = cost_of(load, col_load)
    rng = np.random.default_rng(seed)
    for _ in range(iterations):
        a = int(rng.integers(rows))
        if rng.random() < 0.5 or counts.min() >= capacity:
            b = int(rng.integers(rows))
            i, j = owner[a], owner[b]
            if i == j:
                continue
            delta = per_row[:, b] - per_row[:, a]
            load[:, i] += delta
            load[:, j] -= delta
            col_load[i] += m[b] - m[a]
            col_load[j] += m[a] - m[b]
            new = cost_of(load, col_load)
            if new <= best:
                best = new
                owner[a], owner[b] = j, i
            else:
                load[:, i] -= delta
                load[:, j] += delta
                col_load[i] -= m[b] - m[a]
                col_load[j] -= m[a] - m[b]
        else:
            i = owner[a]
            j = int(rng.choice(np.flatnonzero(counts < capacity)))
            if i == j:
                continue
            load[:, i] -= per_row[:, a]
            load[:, j] += per_row[:, a]
            col_load[i] -= m[a]
            col_load[j] += m[a]
            new = cost_of(load, col_load)
            if new <= best:
                best = new
                owner[a] = j
                counts[i] -= 1
                counts[j] += 1
            else:
                load[:, i] += per_row[:, a]
                load[:, j] -= per_row[:, a]
                col_load[i] += m[a]
                col_load[j] -= m[a]
    return [np.flatnonzero(owner == k) for k in range(pes)]
