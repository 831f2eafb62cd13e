"""``l1``: L1-regularised training, then magnitude thresholding to the target.

Phase 1 (half the budget's optimizer steps) trains with ``loss + lambda * sum |w|`` over the
prunable weights (the loss is the batch mean): every weight is pulled towards zero with the
same force, whatever the model's size, and only the weights whose gradient resists that pull
stay large. The pull grows with the target and is spread over the phase: ``lambda = STRENGTH *
s / (1 - s) * REFERENCE_STEPS / steps`` for sparsity ``s`` (the mean over layers with
``--sparsity auto``) and ``steps`` regularised steps, so the *total* pull (lambda summed over
the steps) does not depend on the budget: 4.5e-4 per step at 90 % over 660 steps (30 epochs
of digits, where ``STRENGTH`` was tuned), 10x that over 66 steps. Phase 2 keeps the largest
weights (ranked globally, or per layer with ``--sparsity auto``) and fine-tunes with the mask
fixed, without the penalty.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..layers import prunable_layers
from ..masks import Targets, sparsity_of
from ..train import Session, fine_tune
from .base import MethodResult, one_shot

__all__ = ["l1_prune", "STRENGTH", "REFERENCE_STEPS"]

#: Pull of the penalty on each weight per step, per unit of the target's odds s / (1 - s),
#: over a phase of ``REFERENCE_STEPS`` steps (scaled inversely with the phase's length).
STRENGTH, REFERENCE_STEPS = 5e-5, 660


def l1_prune(model: nn.Module, session: Session, targets: Targets) -> MethodResult:
    """L1 training, thresholding, fine-tuning."""
    weights = [m.weight for _, m in prunable_layers(model)]
    if targets.per_layer:
        level = sum(targets.per_layer.values()) / len(targets.per_layer)
    else:
        level = targets.overall
    regularised, tuning = session.split_steps(1, 1)
    strength = STRENGTH * level / (1.0 - level) * REFERENCE_STEPS / max(1, regularised)

    def penalty() -> torch.Tensor:
        return strength * sum(w.abs().sum() for w in weights)

    fine_tune(model, session, steps=regularised, phase="L1-regularised training",
              regularizer=penalty)
    small = {name: float((m.weight.detach().abs() < 1e-3).float().mean())
             for name, m in prunable_layers(model)}
    masks = one_shot(model, targets, scope="global")
    fine_tune(model, session, steps=tuning, phase="fine-tune", masks=masks)
    return MethodResult(model, info={"strength": strength,
                                     "near_zero_after_l1": small,
                                     "sparsity": sparsity_of(masks)})
