"""Fine-tuning: the one training loop every pruning method uses.

Determinism, and the same result on any number of processes
--------------------------------------------------------------
* Batches: every epoch draws a permutation of the training set from a generator seeded by
  ``(seed, epoch number)``; each global batch of ``batch_size`` samples is cut into ``shards``
  fixed micro-batches (contiguous, ``numpy.array_split``). The split does not depend on how
  many processes run. A method's phases are counted in optimizer steps
  (:meth:`Session.split_steps`) and may end mid-epoch: the next phase continues the same batch
  order, so a budget of one epoch still gives every phase its share.
* Gradients: each micro-batch's loss is its summed per-sample loss divided by the *global*
  batch size, so adding the micro-batch gradients gives the batch mean. One process adds them
  in micro-batch order as autograd accumulates them; with ``W`` processes each rank computes
  ``shards / W`` of them and DDP's :func:`~compiler.prune.distributed.ordered_sum_hook` adds the
  ranks' gradients in rank order. With ``W == shards`` (or ``W == 1``) both are the same
  additions in the same order: bit-identical weights. Terms of the loss that do not depend on
  the data (regularisers) are added once, to micro-batch 0.
* Everything else (masks, schedules, gate noise keyed by step and micro-batch, L0 penalties,
  the learned predictor) is computed identically on every rank from identical weights.
* BatchNorm statistics stay frozen and Dropout is off (see
  :func:`~compiler.prune.layers.set_train_mode`); CPU runs use one intra-op thread per process
  (matrix products add in a thread-count-dependent order) and deterministic algorithms.
"""

from __future__ import annotations

import math
import os
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from core.errors import InputError
from .data import PruneData
from .distributed import Runtime, wrap_ddp
from .layers import set_train_mode
from .masks import Masks, apply_masks, mask_grads
from .schedule import split_phases

__all__ = ["Progress", "Session", "fine_tune", "evaluate", "deterministic", "cross_entropy_sum"]


class Progress:
    """Where training reports progress; the default reports nothing (the CLI draws bars)."""

    def start(self, phase: str, total: int) -> None:
        """A phase of ``total`` steps begins."""

    def advance(self, steps: int = 1) -> None:
        """``steps`` more steps of the current phase are done."""

    def done(self, phase: str, text: str = "") -> None:
        """The current phase ended; ``text`` says how it went."""


@dataclass
class Session:
    """Everything a pruning method needs besides the model and its targets."""
    data: PruneData
    runtime: Runtime
    epochs: int = 60
    seed: int = 0
    pes: int = 8
    lr: float = 3e-3
    batch_size: int = 64
    shards: int = 2
    progress: Progress = field(default_factory=Progress)
    step: int = 0            # optimizer steps so far, over all phases
    epoch: int = 0           # the epoch the next batch comes from (keys the batch order)
    batch: int = 0           # the next batch's index within that epoch
    budget_steps: int | None = None   # the whole budget in steps (default: epochs' worth)
    _tensors: dict = field(default_factory=dict, repr=False)

    @property
    def device(self) -> torch.device:
        return self.runtime.device

    def tensor(self, name: str) -> torch.Tensor:
        """``x_train``, ``y_train``, ``x_eval`` or ``y_eval`` on the device (cached)."""
        if name not in self._tensors:
            self._tensors[name] = torch.from_numpy(getattr(self.data, name)).to(self.device)
        return self._tensors[name]

    @property
    def micro_batches(self) -> int:
        """Micro-batches per global batch: ``shards``, rounded up to a multiple of the world
        size (results equal a one-process run with the same number)."""
        w = self.runtime.world_size
        return w * -(-max(self.shards, 1) // w)

    @property
    def global_batch(self) -> int:
        n = len(self.data.x_train)
        batch = min(self.batch_size, n)
        if batch < self.micro_batches:
            raise InputError(f"{n} training samples cannot be split into {self.micro_batches} "
                             f"micro-batches (one per process); give more data or run fewer "
                             f"processes")
        return batch

    @property
    def steps_per_epoch(self) -> int:
        return len(self.data.x_train) // self.global_batch

    @property
    def total_steps(self) -> int:
        """The method's whole budget in optimizer steps (``epochs x steps_per_epoch``):
        what every schedule scales with."""
        if self.budget_steps is not None:
            return self.budget_steps
        return max(0, self.epochs) * self.steps_per_epoch

    def split_steps(self, *fractions: float, total: int | None = None) -> list[int]:
        """Optimizer steps for consecutive phases adding up to ``total`` (default: the
        session's budget): the last (the final fine-tuning) first gets
        :data:`~compiler.prune.schedule.RESERVED_STEPS`, then all share the rest in proportion
        to ``fractions`` (:func:`~compiler.prune.schedule.split_phases`). Phases may end
        mid-epoch (the next one continues the same batch order)."""
        return split_phases(self.total_steps if total is None else total, *fractions)

    def sub_session(self, steps: int) -> "Session":
        """A session for a side run of ``steps`` steps on a copy of the model (``learned``'s
        labelling run); :meth:`follow` it afterwards to continue its batch order."""
        fields = {k: v for k, v in self.__dict__.items()}
        fields["budget_steps"] = steps
        return Session(**fields)

    def follow(self, other: "Session") -> None:
        """Continue where ``other`` (a :meth:`sub_session`) stopped."""
        self.step, self.epoch, self.batch = other.step, other.epoch, other.batch


def cross_entropy_sum(output: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The default loss: cross-entropy summed over the micro-batch."""
    return F.cross_entropy(output, y, reduction="sum")


@contextmanager
def deterministic(device: torch.device):
    """Deterministic kernels; on the CPU one intra-op thread (restored afterwards)."""
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    threads = torch.get_num_threads()
    was = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(was, warn_only=warn_only)


def _cosine(base: float, step: int, total: int, floor: float = 0.02) -> float:
    if total <= 1:
        return base
    return base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * step / total)))


def fine_tune(model: nn.Module, session: Session, *, phase: str, epochs: int | None = None,
              steps: int | None = None,
              masks: Masks | None = None, lr: float | None = None,
              loss: Callable = cross_entropy_sum,
              regularizer: Callable[[], torch.Tensor] | None = None,
              on_step: Callable[[int, int], None] | None = None,
              before_forward: Callable[[int, int], None] | None = None,
              param_groups: list[dict] | None = None) -> nn.Module:
    """Train ``model`` in place for ``steps`` optimizer steps, or ``epochs`` epochs' worth
    (Adam, cosine learning-rate decay over the call). Batches continue the session's batch
    order where the previous call stopped (epoch ``session.epoch``, batch ``session.batch``).

    ``masks`` (read every step, so ``on_step`` may change them) keep pruned weights at zero.
    ``loss(output, x, y)`` is summed over a micro-batch; ``regularizer()`` is added once per
    step. ``on_step(step, total)`` runs before each step, ``before_forward(global_step,
    micro_batch)`` before each micro-batch's forward pass. ``param_groups`` are Adam's groups
    (each with its own ``lr``), by default all parameters at ``lr``.
    """
    rt = session.runtime
    steps_per_epoch = session.steps_per_epoch
    if (epochs is None) == (steps is None):
        raise ValueError("give fine_tune either epochs or steps")
    total = max(0, steps) if steps is not None else max(0, epochs) * steps_per_epoch
    session.progress.start(phase, total)
    if total == 0:
        session.progress.done(phase)
        return model
    model.to(session.device)
    set_train_mode(model)
    net = model
    if rt.distributed:
        net = wrap_ddp(model, session.device)
    base = lr if lr is not None else session.lr
    groups = param_groups or [{"params": [p for p in model.parameters() if p.requires_grad],
                               "lr": base}]
    opt = torch.optim.Adam(groups)
    base_lrs = [g["lr"] for g in opt.param_groups]
    x, y = session.tensor("x_train"), session.tensor("y_train")
    batch, parts = session.global_batch, session.micro_batches
    per_rank = parts // rt.world_size
    mine = range(rt.rank * per_rank, (rt.rank + 1) * per_rank)

    order, order_epoch = None, None
    for t in range(total):
        if order_epoch != session.epoch:
            order_epoch = session.epoch
            order = np.random.default_rng([session.seed, session.epoch]).permutation(len(x))
        b = session.batch
        if on_step is not None:
            on_step(t, total)
        for g, lr0 in zip(opt.param_groups, base_lrs):
            g["lr"] = _cosine(lr0, t, total)
        shards = np.array_split(order[b * batch:(b + 1) * batch], parts)
        opt.zero_grad(set_to_none=True)
        for j, k in enumerate(mine):
            last = j == len(mine) - 1
            with nullcontext() if last or not rt.distributed else net.no_sync():
                if before_forward is not None:
                    before_forward(session.step, k)
                idx = torch.from_numpy(shards[k]).to(session.device)
                xb, yb = x[idx], y[idx]
                value = loss(net(xb), xb, yb) / batch
                if k == 0 and regularizer is not None:
                    value = value + regularizer()
                value.backward()
        if masks:
            mask_grads(model, masks)
        opt.step()
        if masks:
            apply_masks(model, masks)
        session.step += 1
        session.batch += 1
        if session.batch >= steps_per_epoch:
            session.batch, session.epoch = 0, session.epoch + 1
        session.progress.advance()
    model.eval()
    session.progress.done(phase)
    return model


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch: int = 4096) -> float:
    """Top-1 accuracy of ``model`` (put in eval mode) on ``x``, ``y``."""
    model.eval()
    if len(x) == 0:
        return float("nan")
    correct = 0
    for i in range(0, len(x), batch):
        correct += int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum())
    return correct / len(x)
