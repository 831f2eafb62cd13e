"""Sparsity schedules.

Zhu and Gupta, "To prune, or not to prune" (2017): starting from ``initial`` at step ``t0``,
the sparsity after step ``t`` is ``final + (initial - final) * (1 - (t - t0) / n) ** 3`` for
``t0 <= t <= t0 + n``: pruning is fast while many redundant weights remain, slow near the
target, so fine-tuning has time to recover between steps.
"""

from __future__ import annotations

import itertools
import math

__all__ = ["cubic_sparsity", "pruning_steps", "split_phases", "RESERVED_STEPS"]

#: Optimizer steps every method keeps for fine-tuning at its final mask before its other
#: phases (regularisation, gate training, the gradual ramp, the labelling run) get their
#: shares. Fine-tuning at the final mask is what recovers the accuracy, and at short budgets
#: each of its steps counts: on digits at 90 %, one-shot global magnitude pruning reaches
#: 56 / 64 / 79 / 86 / 90 % after 7 / 11 / 22 / 44 / 66 fine-tuning steps. So a budget of at
#: most this many steps is all fine-tuning (every method starts from its own one-shot
#: ranking), and longer ones give the other phases their share of the steps beyond it.
RESERVED_STEPS = 100


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


def split_phases(total_steps: int, *fractions: float,
                 reserve: int | None = None) -> list[int]:
    """Steps for consecutive phases adding up to ``total_steps``: the last phase (the final
    fine-tuning) gets ``reserve`` (default :data:`RESERVED_STEPS`) steps first (all of them if
    there are fewer), then all phases share the rest in proportion to ``fractions``."""
    reserve = RESERVED_STEPS if reserve is None else reserve
    total = max(0, int(total_steps))
    kept = min(total, max(0, reserve))
    cuts = [int(math.floor(f * (total - kept) + 0.5))
            for f in itertools.accumulate(x / sum(fractions) for x in fractions)]
    cuts[-1] = total - kept
    steps = [b - a for a, b in zip([0, *cuts[:-1]], cuts)]
    steps[-1] += kept
    return steps


def pruning_steps(total_steps: int, events: int, *, ramp: float = 2 / 3,
                  reserve: int | None = 0) -> list[int]:
    """Steps at which to prune: ``events`` evenly spaced over the first ``ramp`` of the steps
    beyond the last ``reserve`` (kept for fine-tuning at the final level; None:
    :data:`RESERVED_STEPS`), the last one at the end of the ramp (at least step 0)."""
    reserve = RESERVED_STEPS if reserve is None else reserve
    end = max(0, int(round(ramp * max(0, total_steps - reserve))))
    events = max(1, events)
    return sorted({int(round(end * (i + 1) / events)) for i in range(events)})
