"""``l1``: L1-regularised training, then magnitude thresholding to the target.

Phase 1 (half the budget) trains with ``loss + lambda * sum |w|`` over the prunable weights
(the loss is the batch mean): every weight is pulled towards zero with the same force,
whatever the model's size, and only the weights whose gradient resists that pull stay large.
The pull grows with the target, ``lambda = STRENGTH * s / (1 - s)`` for sparsity ``s`` (the
mean over layers with ``--sparsity auto``): 4.5e-4 at 90 %, 2.5e-3 at 98 %. Phase 2 keeps the
largest weights (ranked globally, or per layer with ``--sparsity auto``) and fine-tunes with the
mask fixed, without the penalty.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..layers import prunable_layers
from ..masks import Targets, sparsity_of
from ..train import Session, fine_tune
from .base import MethodResult, one_shot

__all__ = ["l1_prune", "STRENGTH"]

#: Pull of the penalty on each weight, per unit of the target's odds s / (1 - s).
STRENGTH = 5e-5


def l1_prune(model: nn.Module, session: Session, targets: Targets) -> MethodResult:
    """L1 training, thresholding, fine-tuning."""
    weights = [m.weight for _, m in prunable_layers(model)]
    if targets.per_layer:
        level = sum(targets.per_layer.values()) / len(targets.per_layer)
    else:
        level = targets.overall
    strength = STRENGTH * level / (1.0 - level)

    def penalty() -> torch.Tensor:
        return strength * sum(w.abs().sum() for w in weights)

    regularised, tuning = session.split_epochs(1, 1)
    fine_tune(model, session, epochs=regularised, phase="L1-regularised training",
              regularizer=penalty)
    small = {name: float((m.weight.detach().abs() < 1e-3).float().mean())
             for name, m in prunable_layers(model)}
    masks = one_shot(model, targets, scope="global")
    fine_tune(model, session, epochs=tuning, phase="fine-tune", masks=masks)
    return MethodResult(model, info={"strength": strength,
                                     "near_zero_after_l1": small,
                                     "sparsity": sparsity_of(masks)})
