"""``--sparsity auto``: per-layer targets from a sensitivity analysis and an accuracy budget.

1. *Sensitivity*: for every unit (a prunable layer, or for ``structured`` a layer's neurons)
   and every level of :data:`LEVELS`, prune only that unit to that level, one-shot, and measure
   the accuracy on the evaluation data. This is the per-layer sensitivity curve (Han et al.,
   2015).
2. *Allocation*: starting from nothing pruned, repeatedly raise the unit whose next level
   removes the most weights per point of accuracy its curve says it costs; keep the raise if
   the whole model, pruned at all the chosen levels together, stays within the budget
   (``--max-accuracy-drop``, in accuracy points, measured one-shot), otherwise freeze that
   unit. Ends when every unit is frozen or at the last level.

The budget holds before fine-tuning; the fine-tuning that follows usually recovers part of
the drop, so the final loss is at most the budget and typically less.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import torch.nn as nn

from .layers import prunable_layers
from .masks import Targets, apply_masks, magnitude_scores, select
from .train import Session, evaluate

__all__ = ["LEVELS", "Unit", "Allocation", "layer_units", "magnitude_probe", "sensitivity",
           "allocate", "auto_targets"]

#: Sparsity levels tried per unit.
LEVELS = (0.0, 0.3, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99)

#: ``probe(model, {unit: level})`` prunes ``model`` in place, one-shot.
Probe = Callable[[nn.Module, dict[str, float]], None]


@dataclass(frozen=True)
class Unit:
    """Something the allocation gives a level: ``weights`` go at level 1."""
    name: str
    weights: int


@dataclass(frozen=True)
class Allocation:
    levels: dict[str, float]             # unit -> chosen level
    curves: dict[str, list[tuple[float, float]]]  # unit -> [(level, accuracy)]
    base_accuracy: float
    accuracy: float                      # one-shot, all units at their levels
    overall: float                       # share of the model's weights removed


def layer_units(model: nn.Module) -> list[Unit]:
    return [Unit(name, m.weight.numel()) for name, m in prunable_layers(model)]


def magnitude_probe(model: nn.Module, levels: dict[str, float]) -> None:
    """Layer-wise magnitude pruning at ``levels``."""
    scores = {k: v for k, v in magnitude_scores(model).items() if k in levels}
    apply_masks(model, select(scores, Targets(0.0, dict(levels)), scope="layer"))


def _accuracy(model, session, probe, levels) -> float:
    trial = copy.deepcopy(model)
    probe(trial, levels)
    return evaluate(trial, session.tensor("x_eval"), session.tensor("y_eval"))


def sensitivity(model: nn.Module, session: Session, units: list[Unit], probe: Probe,
                levels=LEVELS) -> dict[str, list[tuple[float, float]]]:
    """Accuracy with one unit pruned at each level: ``{unit: [(level, accuracy)]}``."""
    session.progress.start("sensitivity analysis", len(units) * len(levels))
    curves = {}
    for unit in units:
        curves[unit.name] = []
        for level in levels:
            curves[unit.name].append((level, _accuracy(model, session, probe,
                                                       {unit.name: level})))
            session.progress.advance()
    session.progress.done("sensitivity analysis")
    return curves


def allocate(model: nn.Module, session: Session, units: list[Unit], probe: Probe,
             curves: dict[str, list[tuple[float, float]]], max_drop: float) -> Allocation:
    """Greedy per-unit levels within ``max_drop`` accuracy points (see the module doc)."""
    base = evaluate(model, session.tensor("x_eval"), session.tensor("y_eval"))
    index = {u.name: 0 for u in units}
    frozen: set[str] = set()
    accuracy = base
    by_name = {u.name: u for u in units}
    while True:
        best, best_value = None, -1.0
        for u in units:
            i = index[u.name]
            curve = curves[u.name]
            if u.name in frozen or i + 1 >= len(curve):
                continue
            gain = (curve[i + 1][0] - curve[i][0]) * u.weights
            cost = max(0.0, 100 * (curve[i][1] - curve[i + 1][1])) + 1e-3
            if gain / cost > best_value:
                best, best_value = u.name, gain / cost
        if best is None:
            break
        trial = dict(index, **{best: index[best] + 1})
        acc = _accuracy(model, session, probe,
                        {k: curves[k][i][0] for k, i in trial.items()})
        if 100 * (base - acc) <= max_drop:
            index, accuracy = trial, acc
        else:
            frozen.add(best)
    levels = {k: curves[k][i][0] for k, i in index.items()}
    total = sum(u.weights for u in units)
    overall = sum(levels[k] * by_name[k].weights for k in levels) / max(total, 1)
    return Allocation(levels=levels, curves=curves, base_accuracy=base, accuracy=accuracy,
                      overall=overall)


def auto_targets(model: nn.Module, session: Session, max_drop: float, *,
                 units: list[Unit] | None = None,
                 probe: Probe | None = None) -> tuple[Targets, Allocation]:
    """Per-unit targets for ``max_drop`` points (layer-wise magnitude probes by default)."""
    units = units if units is not None else layer_units(model)
    probe = probe if probe is not None else magnitude_probe
    curves = sensitivity(model, session, units, probe)
    alloc = allocate(model, session, units, probe, curves, max_drop)
    return Targets(alloc.overall, dict(alloc.levels)), alloc
