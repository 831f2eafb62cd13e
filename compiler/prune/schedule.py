"""Sparsity schedules.

Zhu and Gupta, "To prune, or not to prune" (2017): starting from ``initial`` at step ``t0``,
the sparsity after step ``t`` is ``final + (initial - final) * (1 - (t - t0) / n) ** 3`` for
``t0 <= t <= t0 + n``: pruning is fast while many redundant weights remain, slow near the
target, so fine-tuning has time to recover between steps.
"""

from __future__ import annotations

__all__ = ["cubic_sparsity", "pruning_steps"]


def cubic_sparsity(step: int, final: float, *, start: int, span: int,
                   initial: float = 0.0) -> float:
    """Target sparsity at ``step`` of a cubic ramp from ``initial`` (at ``start``) to
    ``final`` (at ``start + span`` and after)."""
    if span <= 0 or step >= start + span:
        return final
    if step <= start:
        return initial
    progress = (step - start) / span
    return final + (initial - final) * (1.0 - progress) ** 3


def pruning_steps(total_steps: int, events: int, *, ramp: float = 2 / 3) -> list[int]:
    """Steps at which to prune: ``events`` evenly spaced over the first ``ramp`` of
    ``total_steps``, the last one at the end of the ramp (at least step 0)."""
    end = max(0, int(round(ramp * total_steps)))
    events = max(1, events)
    return sorted({int(round(end * (i + 1) / events)) for i in range(events)})
