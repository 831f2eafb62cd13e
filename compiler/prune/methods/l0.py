"""``l0``: L0 regularisation with hard-concrete gates (Louizos, Welling & Kingma, ICLR 2018).

Every prunable weight ``w`` is multiplied by a stochastic gate ``z = min(1, max(0, s (zeta -
gamma) + gamma))`` with ``s = sigmoid((log u - log(1 - u) + log_alpha) / beta)``, ``u ~ U(0, 1)``
(the hard-concrete distribution, ``beta = 2/3``, ``gamma = -0.1``, ``zeta = 1.1``): exact zeros
and ones have positive probability, and the expected number of nonzero gates,
``sum sigmoid(log_alpha - beta log(-gamma / zeta))``, is differentiable.

Training (two thirds of the budget's optimizer steps) minimises the loss plus ``rho (d - (d* -
c))^2``, where ``d`` is the expected density (expected nonzero gates / weights; one term for
the model, or one per layer with ``--sparsity auto``), ``d*`` its goal, which follows the cubic
schedule from 1 to ``1 - target`` over the first half of that phase, and ``c`` an integral
controller: the expected density and the density of the deterministic gates differ while
gates are undecided, and the controller moves the goal until the gates that will be kept match
the target (the constrained form of Louizos et al.'s penalty, cf. Wang et al., "Structured
pruning of large language models", 2020). The gates start open, more so for larger weights
(ranked over the whole model).

Everything that moves the gates scales with the phase's length ``T`` (steps), so any budget
from one epoch up works:

* ``log_alpha``'s learning rate is ``GATE_TRAVEL / T`` (within ``GATE_LR_RANGE``): Adam moves a
  parameter by about its learning rate per step, and a gate must travel some 5 units of
  ``log_alpha`` to close, so a fixed rate leaves the gates open after a short budget.
* The controller integrates only once the schedule has reached the target (while the goal
  still falls the gates always lag, and integrating that lag wound the offset up: at 20 epochs
  on digits it reached 0.77, asked for a *negative* expected density and closed 99.98 % of the
  gates, and the model collapsed to 34 % accuracy), at a gain of ``DUAL_GAIN / T`` per step,
  and ``c`` is clamped to ``[-(1 - d_final), OFFSET_LIMIT * d_final]``, so the goal it asks for
  stays positive.
* ``rho`` stays fixed: it weighs the density term against the loss in each step's gradient,
  which Adam normalises, so its effect does not depend on the number of steps.

Then the gates are made deterministic with the paper's test-time estimator
``z = min(1, max(0, sigmoid(log_alpha) (zeta - gamma) + gamma))``, the mask is set to the
target exactly by keeping the weights with the largest ``log_alpha`` (the gates alone land
near it; ``info`` says where), and the gates are folded into the kept weights (a kept weight
whose gate closed keeps its own value instead of becoming a zero that the mask counts as
kept). The last third of the budget fine-tunes with that mask.
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

__all__ = ["l0_prune", "HardConcreteGate", "gate_lr", "BETA", "GAMMA", "ZETA"]

BETA, GAMMA, ZETA = 2 / 3, -0.1, 1.1
#: ``log_alpha``'s learning rate: ``GATE_TRAVEL / steps``, clipped to ``GATE_LR_RANGE``.
GATE_TRAVEL, GATE_LR_RANGE = 15.0, (0.05, 0.2)
#: Weight of the density penalty.
RHO = 1000.0
#: The controller's gain over the whole gate phase (per step: ``DUAL_GAIN / steps``) and the
#: largest offset, as a share of the final density.
DUAL_GAIN, OFFSET_LIMIT = 10.0, 0.75


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


def gate_lr(steps: int) -> float:
    """``log_alpha``'s learning rate for a gate phase of ``steps`` optimizer steps."""
    low, high = GATE_LR_RANGE
    return min(high, max(low, GATE_TRAVEL / max(1, steps)))


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
    training, tuning = session.split_steps(2, 1)
    rate = DUAL_GAIN / max(1, training)

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
        if state["progress"] < 1.0:     # anti-windup: the gates lag a falling goal
            return
        with torch.no_grad():
            for key, (members, final) in groups.items():
                open_ = sum(int((g.deterministic() > 0).sum()) for g in members)
                density = open_ / sum(g.log_alpha.numel() for g in members)
                offset = state["offset"][key] + rate * (density - goal(key))
                state["offset"][key] = min(OFFSET_LIMIT * final, max(final - 1.0, offset))

    def before_forward(step: int, shard: int):
        for g in gates.values():
            g.key = (step, shard)

    gate_params = [g.log_alpha for g in gates.values()]
    gate_ids = {id(p) for p in gate_params}
    others = [p for p in model.parameters() if id(p) not in gate_ids]
    lr_gates = gate_lr(training)
    fine_tune(model, session, steps=training, phase="L0 gate training", regularizer=penalty,
              on_step=on_step, before_forward=before_forward,
              param_groups=[{"params": others, "lr": session.lr},
                             {"params": gate_params, "lr": lr_gates}])

    # deterministic gates; the mask to the target by log_alpha; gates folded into kept weights
    model.eval()
    scores, closed, zeros = {}, {}, 0
    with torch.no_grad():
        expected = float(sum(g.expected_nonzero() for g in gates.values())) / count
        for name, m in layers:
            gate = gates[name]
            closed[name] = gate.deterministic()
            zeros += int((closed[name] == 0).sum())
            scores[name] = gate.log_alpha.detach().clone()
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=False)
    gate_sparsity = zeros / count
    masks = select(scores, targets, scope="global")
    revived = 0
    with torch.no_grad():
        for name, m in layers:
            z = closed[name]
            revived += int((masks[name] & (z == 0)).sum())
            m.weight.mul_(torch.where(z > 0, z, torch.ones_like(z)))
    apply_masks(model, masks)
    fine_tune(model, session, steps=tuning, phase="fine-tune", masks=masks)
    return MethodResult(model, info={
        "gate_sparsity": gate_sparsity,
        "expected_density": expected,
        "offset": state["offset"],
        "gate_lr": lr_gates,
        "kept_with_closed_gate": revived,
        "mask_sparsity": sparsity_of(masks)},
        notes=[f"deterministic gates alone: {100 * gate_sparsity:.2f} % sparsity; mask set to "
               f"the target by log_alpha rank"])
