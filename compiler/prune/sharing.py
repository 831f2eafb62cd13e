"""Weight sharing (Han et al., "Deep Compression", 2016, step 2): each prunable layer's nonzero
weights are clustered into a small codebook, and the codebook is fine-tuned.

* Clustering: 1-D k-means over the layer's nonzero weights, centroids initialised linearly
  between the smallest and the largest weight (the paper's best initialisation: it keeps the
  rare large weights, which matter most, as centroids of their own).
* Fine-tuning: the layer's weight becomes ``centroids[assignment]`` (a parametrization), so the
  gradient of a centroid is the sum of the gradients of the weights sharing it; the mask (the
  zeros) and the assignment stay fixed. Adam trains the centroids and the other (unshared)
  parameters: biases, BatchNorm.
* Snapping: a layer's centroids are then rounded to multiples of one int8 step,
  ``max |centroid| / 127`` - the step ``build`` quantizes a weight-shared layer with
  (:func:`compiler.passes.quantize.shared_weights`) - so the build's int8 weights are exactly
  the centroids over that step, and its codebook (:mod:`compiler.passes.codebook`) sees them.
  A centroid never snaps to 0 (the sparsity stays exact).

A ``B``-bit codebook in the hardware holds ``2**B`` values, one of them 0 for the padding
entries that bridge long row gaps, so a layer keeps ``2**B - 1`` nonzero values.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from core.arith import WEIGHT_MAX
from .layers import prunable_layers
from .train import Session, fine_tune

__all__ = ["share_weights", "kmeans_1d", "snap_centroids", "SHARE_FRACTION", "BITS"]

#: The share of the optimizer steps that fine-tunes the centroids (the end of the budget).
SHARE_FRACTION = 0.25

#: Codebook index widths ``prune --weight-bits`` accepts.
BITS = range(2, 8)


def kmeans_1d(values: torch.Tensor, k: int, iterations: int = 40) -> tuple[torch.Tensor,
                                                                          torch.Tensor]:
    """(centroids [k'], assignment [n]) of 1-D ``values``, linear initialisation, Lloyd's
    iterations; empty clusters are dropped (k' <= k)."""
    values = values.double()
    lo, hi = values.min(), values.max()
    centroids = torch.linspace(float(lo), float(hi), k, dtype=torch.float64)
    assign = torch.zeros(len(values), dtype=torch.long)
    for _ in range(iterations):
        assign = (values[:, None] - centroids[None, :]).abs().argmin(dim=1)
        sums = torch.zeros(k, dtype=torch.float64).index_add_(0, assign, values)
        counts = torch.bincount(assign, minlength=k).double()
        moved = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
        empty = torch.nonzero(counts == 0).flatten()
        if len(empty):      # an empty cluster restarts at the worst-fitted values
            error = (values - moved[assign]).abs()
            worst = torch.topk(error, min(len(empty), len(values))).indices
            moved[empty[:len(worst)]] = values[worst]
        if torch.equal(moved, centroids):
            break
        centroids = moved
    assign = (values[:, None] - centroids[None, :]).abs().argmin(dim=1)
    used = torch.unique(assign)
    remap = torch.full((k,), -1, dtype=torch.long)
    remap[used] = torch.arange(len(used))
    return centroids[used], remap[assign]


def snap_centroids(centroids: torch.Tensor) -> torch.Tensor:
    """Centroids rounded to multiples of ``max |c| / 127``, none of them to 0."""
    c = centroids.double()
    peak = float(c.abs().max()) if len(c) else 0.0
    if peak == 0:
        return centroids
    step = peak / WEIGHT_MAX
    q = torch.round(c / step)
    q = torch.where(q == 0, torch.where(c < 0, -1.0, 1.0).double(), q)
    return (q * step).to(centroids.dtype)


class _Shared(nn.Module):
    """A layer's weight as ``centroids[assignment]`` at its nonzero places, 0 elsewhere."""

    def __init__(self, centroids: torch.Tensor, assign: torch.Tensor, where: torch.Tensor):
        super().__init__()
        self.centroids = nn.Parameter(centroids.float())
        self.register_buffer("assign", assign)
        self.register_buffer("where", where)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(weight)
        return out.masked_scatter(self.where, self.centroids[self.assign])


def share_weights(model: nn.Module, session: Session, bits: int, steps: int) -> dict:
    """Cluster every prunable layer of ``model`` (in place) into ``2**bits - 1`` nonzero values,
    fine-tune the centroids for ``steps`` optimizer steps, snap them (see the module) and leave
    plain weights. Returns per layer the number of distinct nonzero values."""
    if bits not in BITS:
        raise ValueError(f"weight bits must be in {BITS.start}..{BITS.stop - 1}, not {bits}")
    layers = prunable_layers(model)
    shared = []
    for _, layer in layers:
        w = layer.weight.detach().cpu()
        where = w != 0
        if not where.any():
            continue
        centroids, assign = kmeans_1d(w[where], (1 << bits) - 1)
        dev = layer.weight.device
        parametrize.register_parametrization(
            layer, "weight", _Shared(centroids.to(dev), assign.to(dev), where.to(dev)))
        layer.parametrizations.weight.original.requires_grad_(False)
        shared.append(layer)
    trained = [p for p in model.parameters() if p.requires_grad]
    if steps > 0 and trained:
        fine_tune(model, session, phase="weight sharing", steps=steps,
                  param_groups=[{"params": trained, "lr": session.lr}])
    distinct = {}
    with torch.no_grad():
        for layer in shared:
            table = layer.parametrizations.weight[0]
            table.centroids.copy_(snap_centroids(table.centroids))
            parametrize.remove_parametrizations(layer, "weight", leave_parametrized=True)
            layer.weight.requires_grad_(True)
    for name, layer in layers:
        w = layer.weight.detach()
        distinct[name] = int(torch.unique(w[w != 0]).numel())
    model.eval()
    return distinct
