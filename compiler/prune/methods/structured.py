"""``structured``: remove whole neurons (Linear) and channels (Conv2d), and shrink the layers.

A *group* is the output units of one layer that feed exactly one next prunable layer, with
only unit-wise modules in between (activations, Dropout, Identity, BatchNorm, pooling, and a
Flatten from Conv2d to Linear). Unit ``j``'s importance is ``||W_producer[j]|| *
||W_consumer[:, j]||`` (times ``|gamma / sigma|`` of a BatchNorm in between): how much signal
passes through it. The model's inputs and outputs never change.

The number of units each group keeps is set so that the remaining weights are the target's
share of the dense weights (the same keep fraction for every group; per group with
``--sparsity auto``, where the targets are the shares of each group's units to remove).
During the first half of the budget units are removed along the cubic schedule (masked, least
important first, importance recomputed from the current weights at each step); then the layers
are rebuilt smaller (``in_features``/``out_features``, channels, BatchNorm sizes) and the
second half fine-tunes the small model. Throughout, the dense model is the teacher: the loss is
``alpha * CE + (1 - alpha) * T^2 * KL(teacher_T || student_T)`` (Hinton et al., 2015).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from core.errors import InputError
from ..layers import PRUNABLE
from ..masks import Targets, apply_masks, keep_count
from ..metrics import Kept
from ..schedule import cubic_sparsity, pruning_steps
from ..sensitivity import Unit
from ..train import Session, fine_tune
from .base import MethodResult

__all__ = ["structured_prune", "Group", "find_groups", "structured_units", "structured_probe",
           "ALPHA", "TEMPERATURE"]

#: Distillation: weight of the hard-label loss, softmax temperature.
ALPHA, TEMPERATURE = 0.5, 4.0
EVENTS = 8

_UNITWISE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh,
             nn.Hardtanh, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout, nn.Identity,
             nn.MaxPool2d, nn.AvgPool2d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


@dataclass(frozen=True)
class Group:
    """The units (rows) of ``producer`` and the matching inputs of ``consumer``."""
    producer: str
    consumer: str
    norms: tuple[str, ...]   # BatchNorm layers in between (sliced with the units)
    expand: int              # consumer input columns per unit (Conv2d -> Flatten -> Linear)
    size: int                # units


def _leaves(module: nn.Module, prefix: str = ""):
    """Leaf modules of a (nested) nn.Sequential in forward order."""
    for name, child in module.named_children():
        full = f"{prefix}.{name}" if prefix else name
        if isinstance(child, nn.Sequential):
            yield from _leaves(child, full)
        else:
            yield full, child


def find_groups(model: nn.Module) -> list[Group]:
    """Groups of the (nested) nn.Sequential ``model``; InputError if it is not one."""
    if not isinstance(model, nn.Sequential):
        raise InputError(f"structured pruning rebuilds the layers of an nn.Sequential; this "
                         f"model is a {type(model).__name__} - save it as nn.Sequential or "
                         f"use an unstructured method")
    leaves = list(_leaves(model))
    groups = []
    for i, (name, producer) in enumerate(leaves):
        if not isinstance(producer, PRUNABLE):
            continue
        if isinstance(producer, nn.Conv2d) and producer.groups != 1:
            continue
        norms, flatten = [], False
        for next_name, m in leaves[i + 1:]:
            if isinstance(m, PRUNABLE):
                units = producer.weight.shape[0]
                expand = _fan(m, units, flatten)
                if expand:
                    groups.append(Group(name, next_name, tuple(norms), expand, units))
                break
            if isinstance(m, _NORMS):
                norms.append(next_name)
            elif isinstance(m, nn.Flatten):
                flatten = True
            elif not isinstance(m, _UNITWISE):
                break
    return groups


def _fan(consumer, units: int, flatten: bool) -> int:
    """Consumer inputs per producer unit (0: they do not correspond)."""
    if isinstance(consumer, nn.Linear):
        if consumer.in_features == units:
            return 1
        if flatten and consumer.in_features % units == 0:
            return consumer.in_features // units
        return 0
    if consumer.groups == 1 and consumer.in_channels == units and not flatten:
        return 1
    return 0


def _modules(model) -> dict[str, nn.Module]:
    return dict(model.named_modules())


def _importance(model, group: Group) -> torch.Tensor:
    mods = _modules(model)
    p, c = mods[group.producer], mods[group.consumer]
    out = p.weight.detach().reshape(group.size, -1).norm(dim=1)
    w = c.weight.detach()
    if isinstance(c, nn.Linear):
        w = w.reshape(w.shape[0], group.size, group.expand)
    cols = w.transpose(0, 1).reshape(group.size, -1).norm(dim=1)
    score = out * cols
    for n in group.norms:
        bn = mods[n]
        if bn.weight is not None:
            score = score * (bn.weight.detach().abs() / torch.sqrt(bn.running_var + bn.eps))
    return score.float().cpu()


def _unit_masks(model, group: Group, alive: torch.Tensor) -> dict[str, torch.Tensor]:
    """Weight masks removing the units where ``alive`` is False."""
    mods = _modules(model)
    p, c = mods[group.producer], mods[group.consumer]
    dev = p.weight.device
    rows = alive.to(dev).reshape(-1, *([1] * (p.weight.dim() - 1))).expand_as(p.weight)
    if isinstance(c, nn.Linear):
        cols = alive.to(dev).repeat_interleave(group.expand)[None, :].expand_as(c.weight)
    else:
        cols = alive.to(dev).reshape(1, -1, 1, 1).expand_as(c.weight)
    return {group.producer: rows.clone(), group.consumer: cols.clone()}


def _combine(masks_list) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for masks in masks_list:
        for k, v in masks.items():
            out[k] = v if k not in out else (out[k] & v)
    return out


def _remaining(model, groups: list[Group], kept: dict[str, int]) -> int:
    """Weights left with ``kept[producer]`` units in each group."""
    rows = {g.producer: kept[g.producer] / g.size for g in groups}
    cols = {g.consumer: kept[g.producer] / g.size for g in groups}
    total = 0.0
    for name, m in _modules(model).items():
        if isinstance(m, PRUNABLE):
            total += m.weight.numel() * rows.get(name, 1.0) * cols.get(name, 1.0)
    return int(round(total))


def _plan(model, groups: list[Group], targets: Targets) -> dict[str, int]:
    """Units each group keeps."""
    if targets.per_layer is not None:
        return {g.producer: max(1, int(round((1 - targets.for_layer(g.producer)) * g.size)))
                for g in groups}
    dense = sum(m.weight.numel() for m in _modules(model).values() if isinstance(m, PRUNABLE))
    goal = (1 - targets.overall) * dense

    def counts(f):
        return {g.producer: max(1, min(g.size, int(round(f * g.size)))) for g in groups}

    lo, hi = 0.0, 1.0
    for _ in range(50):
        mid = (lo + hi) / 2
        if _remaining(model, groups, counts(mid)) > goal:
            hi = mid
        else:
            lo = mid
    # the smallest plan that keeps at least the target's weights: prune_model then zeroes the
    # few smallest extra weights of the small model, so the zero count is exact
    a, b = counts(lo), counts(hi)
    need = keep_count(dense, targets.overall)
    return a if _remaining(model, groups, a) >= need else b


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def _shrink(model, groups: list[Group], alive: dict[str, torch.Tensor]) -> Kept:
    """Rebuild the grouped layers with only their alive units; returns the kept indices."""
    mods = _modules(model)
    rows: dict[str, torch.Tensor] = {}
    cols: dict[str, torch.Tensor] = {}
    for g in groups:
        idx = torch.nonzero(alive[g.producer]).flatten()
        rows[g.producer] = idx
        cols[g.consumer] = (idx[:, None] * g.expand + torch.arange(g.expand)[None, :]).flatten() \
            if isinstance(mods[g.consumer], nn.Linear) else idx
        for n in g.norms:
            _set(model, n, _slice_norm(mods[n], idx))
    kept: Kept = {}
    for name in set(rows) | set(cols):
        m = mods[name]
        r, c = rows.get(name), cols.get(name)
        _set(model, name, _slice_layer(m, r, c))
        kept[name] = (r, c)
    return kept


def _slice_layer(m, rows, cols):
    w = m.weight.detach()
    if rows is not None:
        w = w[rows.to(w.device)]
    if cols is not None:
        w = w[:, cols.to(w.device)]
    bias = m.bias.detach() if m.bias is not None else None
    if bias is not None and rows is not None:
        bias = bias[rows.to(bias.device)]
    if isinstance(m, nn.Linear):
        new = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None)
    else:
        new = nn.Conv2d(w.shape[1], w.shape[0], m.kernel_size, stride=m.stride,
                        padding=m.padding, dilation=m.dilation, bias=bias is not None,
                        padding_mode=m.padding_mode)
    new = new.to(w.device, w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        if bias is not None:
            new.bias.copy_(bias)
    return new


def _slice_norm(bn, idx):
    new = type(bn)(len(idx), eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
                   track_running_stats=bn.track_running_stats)
    new = new.to(bn.weight.device if bn.affine else idx.device)
    with torch.no_grad():
        i = idx.to(new.running_mean.device) if new.running_mean is not None else idx
        if bn.affine:
            new.weight.copy_(bn.weight[i])
            new.bias.copy_(bn.bias[i])
        if bn.track_running_stats:
            new.running_mean.copy_(bn.running_mean[i])
            new.running_var.copy_(bn.running_var[i])
            new.num_batches_tracked.copy_(bn.num_batches_tracked)
    return new


def _distillation_loss(teacher):
    def loss(output, x, y):
        with torch.no_grad():
            soft = F.log_softmax(teacher(x) / TEMPERATURE, dim=1)
        kl = F.kl_div(F.log_softmax(output / TEMPERATURE, dim=1), soft, log_target=True,
                      reduction="sum")
        return ALPHA * F.cross_entropy(output, y, reduction="sum") + \
            (1 - ALPHA) * TEMPERATURE ** 2 * kl
    return loss


def _alive_after(model, groups, plan, level: float, alive) -> dict[str, torch.Tensor]:
    """Units alive at ``level`` of the way to ``plan``: the least important go first."""
    out = {}
    for g in groups:
        keep = int(round(g.size - level * (g.size - plan[g.producer])))
        score = _importance(model, g).masked_fill(~alive[g.producer], -1.0)
        order = torch.argsort(score, descending=True, stable=True)[:keep]
        mask = torch.zeros(g.size, dtype=torch.bool)
        mask[order] = True
        out[g.producer] = mask
    return out


def structured_prune(model: nn.Module, session: Session, targets: Targets) -> MethodResult:
    """Remove units gradually with the dense model as teacher, shrink, fine-tune."""
    groups = find_groups(model)
    if not groups:
        raise InputError("structured pruning found no layer whose units can be removed (it "
                         "needs a Linear or Conv2d layer followed by another one, with only "
                         "activations, BatchNorm, pooling or Flatten in between); use an "
                         "unstructured method")
    teacher = copy.deepcopy(model).to(session.device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    plan = _plan(model, groups, targets)
    alive = {g.producer: torch.ones(g.size, dtype=torch.bool) for g in groups}
    masks: dict = {}
    events: list[int] = []
    removing, tuning = session.split_steps(1, 1)
    loss = _distillation_loss(teacher)

    def update(level: float):
        alive.update(_alive_after(model, groups, plan, level, alive))
        masks.clear()
        masks.update(_combine(_unit_masks(model, g, alive[g.producer]) for g in groups))
        apply_masks(model, masks)

    def on_step(step: int, total: int):
        if not events:
            events.extend(pruning_steps(total, EVENTS, ramp=1.0))
        if step in events:
            update(cubic_sparsity(step, 1.0, start=0, span=events[-1]))

    fine_tune(model, session, steps=removing, phase="remove units (distillation)",
              masks=masks, loss=loss, on_step=on_step)
    if any(int(alive[g.producer].sum()) != plan[g.producer] for g in groups):
        update(1.0)
    kept = _shrink(model, groups, alive)
    fine_tune(model, session, steps=tuning, phase="fine-tune small model (distillation)",
              loss=loss)
    sizes = {g.producer: f"{g.size} -> {plan[g.producer]}" for g in groups}
    return MethodResult(model, kept=kept, info={"units": sizes},
                        notes=["units kept: " + ", ".join(f"{k}: {v}"
                                                          for k, v in sizes.items())])


def structured_units(model: nn.Module) -> list[Unit]:
    """Sensitivity units for ``--sparsity auto``: each group's units."""
    mods = _modules(model)
    return [Unit(g.producer, mods[g.producer].weight.numel() + mods[g.consumer].weight.numel())
            for g in find_groups(model)]


def structured_probe(model: nn.Module, levels: dict[str, float]) -> None:
    """Remove ``levels[producer]`` of each group's units (by importance), one-shot."""
    groups = [g for g in find_groups(model) if g.producer in levels]
    plan = {g.producer: max(1, int(round((1 - levels[g.producer]) * g.size))) for g in groups}
    alive = {g.producer: torch.ones(g.size, dtype=torch.bool) for g in groups}
    alive = _alive_after(model, groups, plan, 1.0, alive)
    apply_masks(model, _combine(_unit_masks(model, g, alive[g.producer]) for g in groups))
