"""``gradual``: Zhu & Gupta's (2017) automated gradual pruning.

Sparsity rises along the cubic schedule of :mod:`compiler.prune.schedule` over the first two
thirds of the fine-tuning steps, pruning the smallest-magnitude weights of the model (ranked
globally; per layer with ``--sparsity auto``) at evenly spaced steps; the last third fine-tunes
at the final sparsity. Pruned weights stay pruned (they are zero, hence the smallest).
"""

from __future__ import annotations

import torch.nn as nn

from ..masks import Targets
from ..schedule import cubic_sparsity, pruning_steps
from ..train import Session, fine_tune
from .base import MethodResult, one_shot

__all__ = ["gradual_prune", "EVENTS"]

#: Pruning steps along the schedule.
EVENTS = 16


def gradual_prune(model: nn.Module, session: Session, targets: Targets) -> MethodResult:
    """Prune along the cubic schedule while fine-tuning."""
    masks: dict = {}
    events: list[int] = []
    done: list[float] = []

    def on_step(step: int, total: int):
        if not events:
            events.extend(pruning_steps(total, EVENTS, reserve=None))
        if step in events:
            ramp_end = events[-1]
            level = cubic_sparsity(step, 1.0, start=0, span=ramp_end)
            masks.clear()
            masks.update(one_shot(model, targets.scaled(level), scope="global"))
            done.append(level)

    fine_tune(model, session, steps=session.total_steps, phase="gradual prune + fine-tune",
              masks=masks, on_step=on_step)
    if not done or done[-1] < 1.0:      # no (or too short a) training: prune to the target now
        one_shot(model, targets, scope="global")
    return MethodResult(model, info={"pruning_events": len(done)})
