"""``l0``: L0 regularisation with hard-concrete gates (Louizos, Welling & Kingma, ICLR 2018).

Every prunable weight ``w`` is multiplied by a stochastic gate ``z = min(1, max(0, s (zeta -
gamma) + gamma))`` with ``s = sigmoid((log u - log(1 - u) + log_alpha) / beta)``, ``u ~ U(0, 1)``
(the hard-concrete distribution, ``beta = 2/3``, ``gamma = -0.1``, ``zeta = 1.1``): exact zeros
and ones have positive probability, and the expected number of nonzero gates,
``sum sigmoid(log_alpha - beta log(-gamma / zeta))``, is differentiable.

Training (two thirds of the budget) minimises the loss plus ``rho (d - (d* - c))^2``, where
``d`` is the expected density (expected nonzero gates / weights; one term for the model, or one
per layer with ``--sparsity auto``), ``d*`` its goal, which follows the cubic schedule from 1
to ``1 - target`` over the first half of that phase, and ``c`` an integral controller
(``c += DUAL_RATE * (deterministic density - d*)`` every step): the expected density and the
density of the deterministic gates differ while gates are undecided, and the controller moves
the goal until the gates that will be kept match the target (the constrained form of Louizos et
al.'s penalty, cf. Wang et al., "Structured pruning of large language models", 2020). The
gates start open, more so for larger weights (ranked over the whole model).

Then the gates are made deterministic with the paper's test-time estimator
``z = min(1, max(0, sigmoid(log_alpha) (zeta - gamma) + gamma))``, folded into the weights,
and the mask is set to the target exactly by keeping the weights with the largest
``log_alpha`` (the gates alone land within a fraction of a point; ``info`` says where). The
last third of the budget fine-tunes with that mask.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from ..layers import prunable_layers
from ..masks import Targets, apply_masks, select, sparsity_of
from ..schedule import cubic_sparsity
from ..train import Session, fine_tune
from .base import MethodResult

__all__ = ["l0_prune", "HardConcreteGate", "BETA", "GAMMA", "ZETA"]

BETA, GAMMA, ZETA = 2 / 3, -0.1, 1.1
#: Learning rate of ``log_alpha``; weight of the density penalty; gain of the controller.
GATE_LR, RHO, DUAL_RATE = 0.05, 1000.0, 0.03


class HardConcreteGate(nn.Module):
    """A parametrization ``weight -> weight * z`` with one hard-concrete gate per weight.

    In training mode each forward draws fresh noise from a CPU generator seeded by
    ``(seed, key, salt)``, where ``key`` (global step, micro-batch) is set by the trainer: the
    same draw on every process. In eval mode the gate is deterministic.
    """

    def __init__(self, log_alpha: torch.Tensor, *, seed: int, salt: int):
        super().__init__()
        self.log_alpha = nn.Parameter(log_alpha.clone())
        self.seed, self.salt = seed, salt
        self.key: tuple[int, int] = (0, 0)

    def gate(self) -> torch.Tensor:
        la = self.log_alpha
        if self.training:
            state = np.random.SeedSequence([self.seed, *self.key, self.salt]).generate_state(1)
            gen = torch.Generator().manual_seed(int(state[0]))
            u = torch.rand(la.shape, generator=gen).clamp_(1e-6, 1 - 1e-6).to(la.device)
            s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + la) / BETA)
            return (s * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)
        return self.deterministic()

    def deterministic(self) -> torch.Tensor:
        """The test-time gate ``min(1, max(0, sigmoid(log_alpha) (zeta - gamma) + gamma))``."""
        return (torch.sigmoid(self.log_alpha) * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.gate()

    def expected_nonzero(self) -> torch.Tensor:
        return torch.sigmoid(self.log_alpha - BETA * math.log(-GAMMA / ZETA)).sum()


def _initial_log_alpha(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Gates nearly open, more so for larger weights: ``3 + log |w|`` standardised over the
    whole model (so that, untrained, the gates rank weights as global magnitude does)."""
    logs = {n: torch.log(w.detach().abs() + 1e-8) for n, w in weights.items()}
    flat = torch.cat([v.flatten() for v in logs.values()])
    mean, std = flat.mean(), flat.std() + 1e-8
    return {n: 3.0 + (v - mean) / std for n, v in logs.items()}


def l0_prune(model: nn.Module, session: Session, targets: Targets) -> MethodResult:
    """Train hard-concrete gates to the target, make them deterministic, fine-tune."""
    layers = prunable_layers(model)
    gates: dict[str, HardConcreteGate] = {}
    start = _initial_log_alpha({name: m.weight for name, m in layers})
    for i, (name, m) in enumerate(layers):
        gates[name] = HardConcreteGate(start[name], seed=session.seed, salt=i)
        parametrize.register_parametrization(m, "weight", gates[name])
    model.to(session.device)
    count = sum(g.log_alpha.numel() for g in gates.values())
    # One density constraint for the whole model, or one per layer (--sparsity auto).
    if targets.per_layer is None:
        groups = {"all": (list(gates.values()), 1.0 - targets.overall)}
    else:
        groups = {n: ([g], 1.0 - targets.for_layer(n)) for n, g in gates.items()}
    state = {"progress": 0.0, "offset": {k: 0.0 for k in groups}}

    def goal(key: str) -> float:
        """The scheduled density of a group: from 1 down to its target."""
        return 1.0 - (1.0 - groups[key][1]) * state["progress"]

    def penalty() -> torch.Tensor:
        total = 0.0
        for key, (members, _) in groups.items():
            size = sum(g.log_alpha.numel() for g in members)
            expected = sum(g.expected_nonzero() for g in members) / size
            gap = expected - (goal(key) - state["offset"][key])
            total = total + RHO * gap * gap
        return total

    def on_step(step: int, total: int):
        state["progress"] = cubic_sparsity(step, 1.0, start=0, span=max(1, total // 2))
        with torch.no_grad():
            for key, (members, _) in groups.items():
                open_ = sum(int((g.deterministic() > 0).sum()) for g in members)
                density = open_ / sum(g.log_alpha.numel() for g in members)
                state["offset"][key] += DUAL_RATE * (density - goal(key))

    def before_forward(step: int, shard: int):
        for g in gates.values():
            g.key = (step, shard)

    gate_params = [g.log_alpha for g in gates.values()]
    gate_ids = {id(p) for p in gate_params}
    others = [p for p in model.parameters() if id(p) not in gate_ids]
    training, tuning = session.split_epochs(2, 1)
    fine_tune(model, session, epochs=training, phase="L0 gate training", regularizer=penalty,
              on_step=on_step, before_forward=before_forward,
              param_groups=[{"params": others, "lr": session.lr},
                             {"params": gate_params, "lr": GATE_LR}])

    # deterministic gates, folded into the weights
    model.eval()
    scores, zeros = {}, 0
    with torch.no_grad():
        for name, m in layers:
            gate = gates[name]
            z = gate.deterministic()
            zeros += int((z == 0).sum())
            scores[name] = gate.log_alpha.detach().clone()
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=False)
            m.weight.mul_(z)
    gate_sparsity = zeros / count
    with torch.no_grad():
        expected = float(sum(g.expected_nonzero() for g in gates.values())) / count
    masks = select(scores, targets, scope="global")
    apply_masks(model, masks)
    fine_tune(model, session, epochs=tuning, phase="fine-tune", masks=masks)
    return MethodResult(model, info={
        "gate_sparsity": gate_sparsity,
        "expected_density": expected,
        "offset": state["offset"],
        "mask_sparsity": sparsity_of(masks)},
        notes=[f"deterministic gates alone: {100 * gate_sparsity:.2f} % sparsity; mask set to "
               f"the target by log_alpha rank"])
