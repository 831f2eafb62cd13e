"""``magnitude`` and ``global-magnitude``: one-shot magnitude pruning, then fine-tuning.

``magnitude`` gives every layer the target sparsity and removes each layer's smallest
``|w|``; ``global-magnitude`` ranks all weights of the model together (one threshold), so
layers with many small weights lose more (Han et al., 2015). Both then fine-tune for the whole
budget with the mask fixed.
"""

from __future__ import annotations

import torch.nn as nn

from ..masks import Targets
from ..train import Session, fine_tune
from .base import MethodResult, one_shot

__all__ = ["magnitude_prune", "global_magnitude_prune"]


def _run(model: nn.Module, session: Session, targets: Targets, scope: str) -> MethodResult:
    masks = one_shot(model, targets, scope=scope)
    fine_tune(model, session, steps=session.total_steps, phase="fine-tune", masks=masks)
    return MethodResult(model)


def magnitude_prune(model: nn.Module, session: Session, targets: Targets) -> MethodResult:
    """Layer-wise magnitude pruning to the target, then fine-tuning."""
    return _run(model, session, targets, "layer")


def global_magnitude_prune(model: nn.Module, session: Session, targets: Targets) -> MethodResult:
    """Global magnitude pruning (one threshold for all layers), then fine-tuning."""
    return _run(model, session, targets, "global")
