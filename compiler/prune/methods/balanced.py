"""``balanced``: load-balance-aware pruning for ``P`` processing elements (Han et al., ESE,
FPGA 2017).

The compiler puts the PEs on an R x C grid (the default grid for ``P``,
:func:`compiler.passes.encode.choose_grid`): PE ``(r, c)`` holds the weights of row group
``r`` in the columns of group ``c``. A PE holding more nonzero weights than the others makes
them wait, so this method prunes every layer to the *same* nonzero count in every PE's block
(one more in some blocks where the layer's count does not divide by the PEs) under interleaved rows (output ``i`` to row group ``i mod R``; layer 0's input ``j`` in column
group ``j mod C``, a later layer's input ``j`` on the bus of row group ``j mod R``). The
compiler keeps that assignment for a layer balanced under it
(:func:`compiler.passes.encode.encode`), so the program ``build --pes P`` compiles holds
exactly these counts (``info["pe_nonzero"]``, per layer and PE).

How many weights each layer keeps comes from a global magnitude ranking (or the per-layer
targets of ``--sparsity auto``), exactly (so the model's zero count is exact too, unless a
block is too small to hold its share at low sparsity). Pruning follows the cubic schedule over
the first two thirds of the budget; the rest fine-tunes. Finally surviving weights too small
to survive int8 quantization (below half a step of their row's scale) are raised to one step,
so the compiled program keeps exactly these nonzeros.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn as nn

from core.errors import FrontendError, InputError
from ..layers import prunable_layers
from ..masks import Masks, Targets, apply_masks, keep_top, magnitude_scores, select
from ..schedule import cubic_sparsity, pruning_steps
from ..train import Session, fine_tune
from .base import MethodResult
from ...compiling import compile_model
from ...frontend import to_ir
from ...passes.encode import choose_grid

__all__ = ["balanced_prune", "interleaved_blocks", "pe_nonzero", "EVENTS"]

EVENTS = 8
#: Rounds of re-balancing after fine-tuning.
ROUNDS = 8


def _ir(model: nn.Module):
    try:
        return to_ir(copy.deepcopy(model).cpu().eval(), "balanced")
    except FrontendError as e:
        raise InputError(f"balanced pruning needs a model that build can compile ({e}); use "
                         f"another method") from None


def interleaved_blocks(model: nn.Module, pes: int) -> list:
    """Each layer's PE blocks under interleaved rows on the default grid for ``pes``:
    ``[layer] -> [(rows, cols)]``, one pair per PE in PE order."""
    grid = choose_grid(pes)
    R, C = grid.rows, grid.cols
    out = []
    for m, (_, layer) in enumerate(prunable_layers(model)):
        rows_n, cols_n = layer.weight.shape[0], layer.weight[0].numel()
        cols = np.arange(cols_n)
        group = cols % C if m == 0 else (cols % R) % C      # lanes, or buses (Grid.bus_of)
        out.append([(np.arange(r, rows_n, R), np.flatnonzero(group == c))
                    for r in range(R) for c in range(C)])
    return out


def _blocks(program) -> list:
    grid = program.grid
    out = []
    for m in range(len(program.layers)):
        blocks = []
        for r, red in enumerate(program.reducers):
            for c in range(grid.cols):
                cols = program.column_sources(m, c)
                blocks.append((red.rows[m], cols[cols >= 0]))
        out.append(blocks)
    return out


def pe_nonzero(program) -> list[list[int]]:
    """Nonzero weights each PE holds, per layer, in a compiled ``SparseProgram``."""
    return [[int(np.count_nonzero(layer.quant.weight.reshape(layer.weight.shape[0], -1)
                                  [np.ix_(rows, cols)])) for rows, cols in blocks]
            for layer, blocks in zip(program.layers, _blocks(program))]


def _layer_budgets(model: nn.Module, targets: Targets) -> dict[str, int]:
    """Weights each layer keeps: from a global magnitude ranking (or per-layer targets)."""
    masks = select(magnitude_scores(model), targets, scope="global")
    return {name: int(m.sum()) for name, m in masks.items()}


def _per_pe(scores: torch.Tensor, keep: int, blocks) -> torch.Tensor:
    """The highest scores of every nonempty PE block, ``keep`` in all: the same number in
    every block, and one more in the first ``keep mod blocks`` (so the layer's count is
    exact), capped at the smallest block's size."""
    rows = scores.reshape(scores.shape[0], -1)
    busy = [(r, c) for r, c in blocks if len(r) and len(c)]
    capacity = min(len(r) * len(c) for r, c in busy)
    base, extra = divmod(keep, len(busy))
    mask = torch.zeros_like(rows, dtype=torch.bool)
    for i, (r, c) in enumerate(busy):
        per_pe = max(1, min(capacity, base + (i < extra)))
        ri = torch.as_tensor(r, dtype=torch.long, device=rows.device)
        ci = torch.as_tensor(c, dtype=torch.long, device=rows.device)
        sub = rows[ri][:, ci]
        mask[ri.unsqueeze(1), ci.unsqueeze(0)] = keep_top(sub, per_pe)
    return mask.reshape(scores.shape)


def _balanced_masks(model, scores: dict[str, torch.Tensor], budgets: dict[str, int],
                    blocks) -> Masks:
    return {name: _per_pe(scores[name], budgets[name], blocks[m])
            for m, (name, _) in enumerate(prunable_layers(model))}


@torch.no_grad()
def _quantization_safe(model: nn.Module, masks: Masks) -> int:
    """Raise kept weights that int8 would round to zero to one step; returns how many. A row
    whose kept weights all drifted to nearly zero gets the step of the layer's / 256 (its int8
    scale would be too fine to hold its bias in int32)."""
    raised = 0
    for name, layer in prunable_layers(model):
        w = layer.weight.reshape(layer.weight.shape[0], -1)
        mask = masks[name].reshape(w.shape)
        floor = w.abs().max() / 127 / 256
        step = torch.maximum(w.abs().amax(dim=1, keepdim=True) / 127, floor)
        small = mask & (w.abs() <= 0.5 * step) & (step > 0)
        if small.any():
            sign = torch.where(w >= 0, 1.0, -1.0).to(w.dtype)
            w.copy_(torch.where(small, sign * step, w))
            raised += int(small.sum())
        w.mul_(mask.to(w.dtype))
    return raised


def balanced_prune(model: nn.Module, session: Session, targets: Targets) -> MethodResult:
    """Prune to equal per-PE nonzero counts under the compiler's row assignment."""
    layers = prunable_layers(model)
    if any(not isinstance(m, nn.Linear) for _, m in layers):
        raise InputError("balanced pruning follows the compiler's PE assignment, which "
                         "handles Linear layers only; use another method for Conv2d models")
    _ir(model)          # fails early, with the frontend's reason, if build cannot load it
    pes, calib = session.pes, session.data.x_train
    dense = {name: m.weight.detach().clone() for name, m in layers}
    budgets_final = _layer_budgets(model, targets)

    blocks = interleaved_blocks(model, pes)
    masks: Masks = {}
    events: list[int] = []
    levels: list[float] = []

    def prune_to(level: float):
        levels.append(level)
        budgets = {name: m.weight.numel() - int(round(level * (m.weight.numel() - budgets_final[
            name]))) for name, m in layers}
        new = _balanced_masks(model, magnitude_scores(model), budgets, blocks)
        masks.clear()
        masks.update(new)
        apply_masks(model, masks)

    def on_step(step: int, total: int):
        if not events:
            events.extend(pruning_steps(total, EVENTS, reserve=None))
        if step in events:
            prune_to(cubic_sparsity(step, 1.0, start=0, span=events[-1]))

    fine_tune(model, session, steps=session.total_steps, phase="balanced prune + fine-tune",
              masks=masks, on_step=on_step)
    if not levels or levels[-1] < 1.0:      # no (or too short a) training: prune now
        prune_to(1.0)
    info = _final_balance(model, masks, dense, pes, calib, compile_model)
    return MethodResult(model, info=info, notes=[
        f"nonzero weights per PE ({pes} PEs, compiled): " + "; ".join(
            f"{name} {min(c)}..{max(c)}" for (name, _), c in zip(layers, info["pe_nonzero"]))])


def _final_balance(model, masks: Masks, dense: dict, pes: int, calib, compile_model) -> dict:
    """Make the kept weights survive int8, compile, and re-balance a layer whose compiled
    blocks still differ (a kept weight int8 rounded away) until the program is balanced;
    returns the figures."""
    layers = prunable_layers(model)
    blocks = interleaved_blocks(model, pes)
    raised = _quantization_safe(model, masks)
    counts: list[list[int]] = []
    for rounds in range(1, ROUNDS + 1):
        program = compile_model(_ir(model), calib, pes)
        counts = pe_nonzero(program)
        bad = [m for m, c in enumerate(counts) if _spread(c, _blocks(program)[m]) > 1]
        if not bad:
            break
        with torch.no_grad():
            for m in bad:
                name, layer = layers[m]
                # regrow from the dense weights where a PE's share must grow
                shadow = torch.where(layer.weight != 0, layer.weight, dense[name])
                masks[name] = _per_pe(shadow.abs(), int(masks[name].sum()), blocks[m])
                layer.weight.copy_(shadow * masks[name])
        raised += _quantization_safe(model, masks)
    entries = [[int(np.diff(pe.ptr[program.ptr_base[m]:program.ptr_base[m]
                                   + program.col_slots[m] + 1]).sum())
                for pe in program.pe_images] for m in range(len(layers))]
    balanced = all(_spread(c, b) <= 1 for c, b in zip(counts, _blocks(program)))
    return {"pes": pes, "grid": str(program.grid), "pe_nonzero": counts, "pe_entries": entries,
            "balanced": balanced, "rounds": rounds, "raised_for_int8": raised}


def _spread(counts, blocks) -> int:
    """Largest difference of nonzero counts between nonempty blocks."""
    busy = [n for n, (r, c) in zip(counts, blocks) if len(r) and len(c)]
    return max(busy) - min(busy) if busy else 0
