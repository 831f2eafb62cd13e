"""``learned``: a small network predicts the mask from per-weight features.

1. *Features* of every prunable weight of the dense model (standardised over the model):
   ``log |w|``, ``log`` of the mean ``|gradient|`` and of the mean first-order saliency
   ``|w * gradient|`` over the training data, the weight's ``|w|`` percentile within its layer,
   ``log`` of its row's and its column's L2 norms, the layer's position in the model
   (0 first .. 1 last), ``log`` fan-in and ``log`` fan-out.
2. *Labels*: which weights survive a short :mod:`gradual <compiler.prune.methods.gradual>` run
   (a third of the budget) to the same target: pruning interleaved with retraining decides
   which weights matter better than one look at the magnitudes, and the predictor learns what
   that decision looks like in the dense model's features.
3. *Predictor*: an MLP (9 - 32 - 32 - 1) trained with class-balanced binary cross-entropy.
4. The dense model is pruned to the target by the predictor's score (ranked globally, or per
   layer with ``--sparsity auto``) and fine-tuned for the remaining two thirds of the budget.

``info`` reports the overlap of the predicted mask and of the plain magnitude mask with the
labels. Whether this beats ``magnitude`` is measured in ``docs/prune_benchmarks.md``; the
predictor costs the labelling run, which is part of the same budget.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers import prunable_layers, rows_of
from ..masks import Targets, apply_masks, magnitude_scores, select
from ..train import Session, fine_tune
from .base import MethodResult
from .gradual import gradual_prune

__all__ = ["learned_prune", "weight_features", "FEATURES"]

FEATURES = ("log|w|", "log mean|g|", "log mean|w g|", "|w| percentile", "log row norm",
            "log column norm", "layer position", "log fan-in", "log fan-out")
#: Predictor training: full-batch Adam steps and learning rate.
STEPS, LR = 300, 1e-2


def _gradient_stats(model: nn.Module, session: Session, chunk: int = 256):
    """Mean ``|g|`` and mean ``|w g|`` per weight over the training data, in fixed chunks."""
    layers = prunable_layers(model)
    x, y = session.tensor("x_train"), session.tensor("y_train")
    g_abs = {n: torch.zeros_like(m.weight) for n, m in layers}
    sal = {n: torch.zeros_like(m.weight) for n, m in layers}
    model.eval()
    chunks = 0
    for i in range(0, len(x), chunk):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x[i:i + chunk]), y[i:i + chunk]).backward()
        for n, m in layers:
            g_abs[n] += m.weight.grad.abs()
            sal[n] += (m.weight.detach() * m.weight.grad).abs()
        chunks += 1
    model.zero_grad(set_to_none=True)
    return ({n: v / max(chunks, 1) for n, v in g_abs.items()},
            {n: v / max(chunks, 1) for n, v in sal.items()})


def weight_features(model: nn.Module, session: Session) -> dict[str, torch.Tensor]:
    """``{layer: float [weights, len(FEATURES)]}``, standardised over the whole model."""
    layers = prunable_layers(model)
    grads, saliency = _gradient_stats(model, session)
    eps = 1e-12
    feats = {}
    for i, (name, m) in enumerate(layers):
        w = m.weight.detach()
        rows = rows_of(w)
        absw = rows.abs()
        rank = torch.argsort(torch.argsort(absw.flatten(), stable=True), stable=True)
        percentile = (rank.float() / max(rank.numel() - 1, 1)).reshape(absw.shape)
        row_norm = rows.norm(dim=1, keepdim=True).expand_as(rows)
        col_norm = rows.norm(dim=0, keepdim=True).expand_as(rows)
        position = torch.full_like(absw, i / max(len(layers) - 1, 1))
        fan_in = torch.full_like(absw, float(rows.shape[1])).log()
        fan_out = torch.full_like(absw, float(rows.shape[0])).log()
        cols = [torch.log(absw + eps), torch.log(rows_of(grads[name]) + eps),
                torch.log(rows_of(saliency[name]) + eps), percentile,
                torch.log(row_norm + eps), torch.log(col_norm + eps), position, fan_in, fan_out]
        feats[name] = torch.stack([c.flatten() for c in cols], dim=1)
    allf = torch.cat(list(feats.values()))
    mean, std = allf.mean(dim=0), allf.std(dim=0)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return {n: (f - mean) / std for n, f in feats.items()}


def _train_predictor(features: torch.Tensor, labels: torch.Tensor, seed: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Linear(features.shape[1], 32), nn.ReLU(), nn.Linear(32, 32),
                            nn.ReLU(), nn.Linear(32, 1))
    net = net.to(features.device)
    positives = labels.float().mean().clamp(1e-4, 1 - 1e-4)
    weight = (1 - positives) / positives
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    for _ in range(STEPS):
        opt.zero_grad(set_to_none=True)
        F.binary_cross_entropy_with_logits(net(features).squeeze(1), labels.float(),
                                           pos_weight=weight).backward()
        opt.step()
    return net.eval()


def _overlap(a: dict, b: dict) -> float:
    """Share of ``b``'s kept weights that ``a`` keeps too."""
    both = sum(int((a[n] & b[n]).sum()) for n in b)
    return both / max(1, sum(int(b[n].sum()) for n in b))


def learned_prune(model: nn.Module, session: Session, targets: Targets) -> MethodResult:
    """Label by a short gradual run, learn the mask from features, prune, fine-tune."""
    labelling, tuning = session.split_steps(1, 2)
    layers = prunable_layers(model)
    features = weight_features(model, session)

    oracle = copy.deepcopy(model)
    side = session.sub_session(labelling)
    gradual_prune(oracle, side, targets)
    labels = {n: m.weight.detach() != 0 for n, m in prunable_layers(oracle)}
    session.follow(side)

    names = [n for n, _ in layers]
    net = _train_predictor(torch.cat([features[n] for n in names]),
                           torch.cat([labels[n].flatten() for n in names]), session.seed)
    with torch.no_grad():
        scores = {n: net(features[n]).squeeze(1).reshape(m.weight.shape)
                  for n, m in layers}
    masks = select(scores, targets, scope="global")
    magnitude = select(magnitude_scores(model), targets, scope="global")
    apply_masks(model, masks)
    fine_tune(model, session, steps=tuning, phase="fine-tune", masks=masks)
    info = {"overlap_with_labels": _overlap(masks, labels),
            "magnitude_overlap_with_labels": _overlap(magnitude, labels),
            "features": list(FEATURES)}
    return MethodResult(model, info=info, notes=[
        f"predicted mask keeps {100 * info['overlap_with_labels']:.1f} % of the labelling "
        f"run's weights (magnitude: {100 * info['magnitude_overlap_with_labels']:.1f} %)"])
