"""Pruning masks: which weights stay (``True``) in each prunable layer.

Masks live beside the model as ``{layer name: bool tensor shaped like its weight}``; the
trainer zeroes the masked gradients before each step and the masked weights after it, so the
model stays a plain ``nn.Module`` with real zeros throughout. Selection is deterministic: ties
in a score are broken by position (a stable sort), never by the backend.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from .layers import prunable_layers

__all__ = ["Targets", "Masks", "magnitude_scores", "keep_count", "keep_top", "select",
           "apply_masks", "mask_grads", "masks_from_zeros", "sparsity_of", "project_exact"]

Masks = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Targets:
    """Sparsity targets: one ``overall`` share of zero weights, optionally split per layer.

    ``per_layer`` (from ``--sparsity auto``) maps layer names to their own targets; then every
    method prunes each layer to its own target instead of ranking all weights together.
    """
    overall: float
    per_layer: dict[str, float] | None = None

    def for_layer(self, name: str) -> float:
        if self.per_layer is not None:
            return self.per_layer.get(name, 0.0)
        return self.overall

    def scaled(self, fraction: float) -> "Targets":
        """The targets at ``fraction`` of the way from dense (for schedules)."""
        per = None if self.per_layer is None else \
            {k: v * fraction for k, v in self.per_layer.items()}
        return Targets(self.overall * fraction, per)


def magnitude_scores(model: nn.Module) -> dict[str, torch.Tensor]:
    """``|w|`` of every prunable layer."""
    return {name: m.weight.detach().abs() for name, m in prunable_layers(model)}


def keep_count(numel: int, sparsity: float) -> int:
    """Weights kept out of ``numel`` at ``sparsity`` (at least one)."""
    return max(1, min(numel, int(round((1.0 - sparsity) * numel))))


def keep_top(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Bool mask of the ``keep`` largest ``scores`` (ties: the earlier position wins)."""
    flat = scores.detach().reshape(-1)
    order = torch.argsort(flat.float().cpu(), descending=True, stable=True)[:keep]
    mask = torch.zeros(flat.numel(), dtype=torch.bool)
    mask[order] = True
    return mask.reshape(scores.shape).to(scores.device)


def select(scores: dict[str, torch.Tensor], targets: Targets, *,
           scope: str = "global") -> Masks:
    """Masks keeping the highest ``scores``.

    ``scope="global"`` ranks all layers' scores together (one threshold for the model) unless
    ``targets`` has per-layer targets; ``scope="layer"`` prunes each layer to its target.
    """
    if scope not in ("global", "layer"):
        raise ValueError(f"scope must be 'global' or 'layer', not {scope!r}")
    if scope == "layer" or targets.per_layer is not None:
        return {name: keep_top(s, keep_count(s.numel(), targets.for_layer(name)))
                for name, s in scores.items()}
    names = list(scores)
    flat = torch.cat([scores[n].detach().reshape(-1).float().cpu() for n in names])
    mask = keep_top(flat, keep_count(flat.numel(), targets.overall))
    out, offset = {}, 0
    for n in names:
        size = scores[n].numel()
        out[n] = mask[offset: offset + size].reshape(scores[n].shape).to(scores[n].device)
        offset += size
    return out


def _layers(model: nn.Module) -> dict[str, nn.Module]:
    return dict(prunable_layers(model))


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Masks) -> None:
    """Zero the pruned weights in place."""
    layers = _layers(model)
    for name, mask in masks.items():
        layers[name].weight.mul_(mask.to(layers[name].weight.dtype))


@torch.no_grad()
def mask_grads(model: nn.Module, masks: Masks) -> None:
    """Zero the gradients of pruned weights (the optimizer's moments stay zero too)."""
    layers = _layers(model)
    for name, mask in masks.items():
        grad = layers[name].weight.grad
        if grad is not None:
            grad.mul_(mask.to(grad.dtype))


def masks_from_zeros(model: nn.Module) -> Masks:
    """The masks a model's zero weights define."""
    return {name: m.weight.detach() != 0 for name, m in prunable_layers(model)}


def sparsity_of(masks: Masks) -> float:
    total = sum(m.numel() for m in masks.values())
    kept = sum(int(m.sum()) for m in masks.values())
    return 1.0 - kept / max(total, 1)


@torch.no_grad()
def project_exact(model: nn.Module, targets: Targets, *, scope: str = "global",
                  dense_weights: int | None = None) -> dict:
    """Zero the smallest nonzero weights until exactly the requested count of weights is
    zero: ``round(sparsity x weights)`` (via :func:`keep_count`) for the whole model
    (``scope="global"``, one threshold) or for each layer (``scope="layer"``, or per-layer
    targets). ``dense_weights``: the weight count the global target refers to, when the model
    is smaller than the dense one (``structured``).

    The methods aim at the count themselves; this is the last step that makes it exact where
    training left it off (a kept weight that became exactly zero, rounding to whole units or
    PEs). A model with *fewer* nonzero weights than the count cannot be projected (nothing is
    regrown); the shortfall is reported. Returns ``{"projected": weights zeroed, "short":
    weights missing, "requested": the zero count asked for}``.
    """
    layers = prunable_layers(model)
    if scope == "layer" or targets.per_layer is not None:
        groups = [([m], keep_count(m.weight.numel(), targets.for_layer(name)))
                  for name, m in layers]
    else:
        total = dense_weights if dense_weights is not None else \
            sum(m.weight.numel() for _, m in layers)
        groups = [([m for _, m in layers], keep_count(total, targets.overall))]
    projected = short = 0
    requested = sum(sum(m.weight.numel() for m in members) - keep for members, keep in groups)
    if dense_weights is not None and len(groups) == 1:
        requested += dense_weights - sum(m.weight.numel() for m in groups[0][0])
    for members, keep in groups:
        nonzero = sum(int(torch.count_nonzero(m.weight)) for m in members)
        if nonzero < keep:
            short += keep - nonzero
            continue
        if nonzero == keep:
            continue
        flat = torch.cat([m.weight.detach().abs().reshape(-1).float().cpu() for m in members])
        mask = keep_top(flat, keep)
        offset = 0
        for m in members:
            size = m.weight.numel()
            m.weight.mul_(mask[offset:offset + size].reshape(m.weight.shape)
                          .to(m.weight.device, m.weight.dtype))
            offset += size
        projected += nonzero - keep
    return {"projected": projected, "short": short, "requested": requested}
