"""The pruning methods, by the name ``--method`` uses.

Each is ``method(model, session, targets) -> MethodResult``: it receives a copy of the dense,
trained model, prunes and fine-tunes it within ``session.epochs`` epochs, and returns a plain
model whose pruned weights are real zeros (or, for ``structured``, smaller layers).
"""

from __future__ import annotations

from .balanced import balanced_prune
from .base import Method, MethodResult
from .gradual import gradual_prune
from .l0 import l0_prune
from .l1 import l1_prune
from .learned import learned_prune
from .magnitude import global_magnitude_prune, magnitude_prune
from .structured import structured_probe, structured_prune, structured_units

__all__ = ["METHODS", "AUTO_UNITS", "PROJECTION", "Method", "MethodResult"]

#: ``--method`` name -> method.
METHODS: dict[str, Method] = {
    "magnitude": magnitude_prune,
    "global-magnitude": global_magnitude_prune,
    "l1": l1_prune,
    "l0": l0_prune,
    "structured": structured_prune,
    "gradual": gradual_prune,
    "balanced": balanced_prune,
    "learned": learned_prune,
}

#: Methods whose ``--sparsity auto`` analysis probes something other than layer-wise
#: magnitude pruning: ``(units(model), probe)``.
AUTO_UNITS = {"structured": (structured_units, structured_probe)}

#: How :func:`compiler.prune.api.prune_model` makes each method's zero count exact after it
#: ran (:func:`compiler.prune.masks.project_exact`): ``"global"`` (the default) counts the
#: whole model, ``"layer"`` each layer; ``None``: the method is exact itself and a projection
#: would undo what it promises (``balanced``: equal counts per PE, exact per layer).
PROJECTION: dict[str, str | None] = {"magnitude": "layer", "balanced": None}
