"""What every pruning method takes and returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch.nn as nn

from ..masks import Masks, Targets, apply_masks, magnitude_scores, select
from ..metrics import Kept
from ..train import Session

__all__ = ["MethodResult", "Method", "magnitude_scores", "one_shot"]


@dataclass
class MethodResult:
    """A pruned model (plain modules, real zeros) and what the method has to say about it."""
    model: nn.Module
    kept: Kept | None = None                  # structured: reference rows/cols kept
    notes: list[str] = field(default_factory=list)
    info: dict = field(default_factory=dict)  # method-specific figures (JSON-able)


#: A method: ``(dense trained model, session, targets) -> MethodResult``. It may change the
#: model it is given.
Method = Callable[[nn.Module, Session, Targets], MethodResult]


def one_shot(model: nn.Module, targets: Targets, *, scope: str) -> Masks:
    """Magnitude masks at ``targets``, applied to ``model``."""
    masks = select(magnitude_scores(model), targets, scope=scope)
    apply_masks(model, masks)
    return masks
