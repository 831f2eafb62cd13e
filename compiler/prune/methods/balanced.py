"""``balanced``: load-balance-aware pruning for ``P`` processing elements (Han et al., ESE,
FPGA 2017).

The compiler gives each PE a set of output rows (:func:`compiler.passes.assign.assign_rows`,
called per layer with the activity measured on calibration data, as
:func:`compiler.build.encode_calibrated` does). A PE holding more nonzero weights than the
others makes them wait, so this method prunes every layer to the *same* nonzero count in every
PE's rows, under the assignment the compiler will actually use:

* a layer whose row count is a multiple of ``P`` gets the same number of nonzeros in every row;
  every PE then owns ``rows / P`` rows, so the counts are equal under *any* assignment the
  compiler may pick (its assignment depends on the mask and on the activity, both of which
  pruning changes, and chasing it does not converge);
* any other layer gets the same count in every PE's rows under the compiler's own assignment of
  the current model, recomputed at every pruning step and again after fine-tuning until the
  compiled program is balanced (``info["pe_nonzero"]`` holds the final counts).

How many weights each layer keeps comes from a global magnitude ranking (or the per-layer
targets of ``--sparsity auto``), rounded to whole rows/PEs. Pruning follows the cubic schedule
over the first two thirds of the budget; the rest fine-tunes. Finally surviving weights too
small to survive int8 quantization (below half a step of their row's scale) are raised to one
step, so the compiled program keeps exactly these nonzeros.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn as nn

from ...errors import FrontendError, InputError
from ..layers import prunable_layers
from ..masks import Masks, Targets, apply_masks, keep_top, magnitude_scores, select
from ..schedule import cubic_sparsity, pruning_steps
from ..train import Session, fine_tune
from .base import MethodResult

__all__ = ["balanced_prune", "compiler_assignment", "pe_nonzero", "EVENTS"]

EVENTS = 8
#: Rounds of re-balancing after fine-tuning.
ROUNDS = 8


def _ir(model: nn.Module):
    from ...frontend import to_ir
    try:
        return to_ir(copy.deepcopy(model).cpu().eval(), "balanced")
    except FrontendError as e:
        raise InputError(f"balanced pruning needs a model that build can compile ({e}); use "
                         f"another method") from None


def compiler_assignment(model: nn.Module, calibration: np.ndarray, pes: int):
    """Rows of each PE in each layer, as ``build`` would assign them: ``[layer][pe] ->
    rows``, plus the quantized IR."""
    from ...passes.assign import assign_rows
    from ...passes.quantize import quantize
    from ... import reference

    quantized = quantize(_ir(model), calibration)
    x = reference.quantize_input(calibration, quantized.input_scale)
    _, acts = reference.run_dense(quantized, x[:256], return_activations=True)
    owners = [assign_rows(layer.quant.weight != 0, pes, acts[m] != 0)
              for m, layer in enumerate(quantized.layers)]
    return owners, quantized


def pe_nonzero(program) -> list[list[int]]:
    """Nonzero weights each PE holds, per layer, in a compiled ``SparseProgram``."""
    return [[int(np.count_nonzero(layer.quant.weight[lane.rows[m]])) for lane in program.lanes]
            for m, layer in enumerate(program.layers)]


def _layer_budgets(model: nn.Module, targets: Targets) -> dict[str, int]:
    """Weights each layer keeps: from a global magnitude ranking (or per-layer targets)."""
    masks = select(magnitude_scores(model), targets, scope="global")
    return {name: int(m.sum()) for name, m in masks.items()}


def _row_uniform(scores: torch.Tensor, keep: int) -> torch.Tensor:
    rows = scores.reshape(scores.shape[0], -1)
    per_row = max(1, min(rows.shape[1], int(round(keep / rows.shape[0]))))
    mask = torch.zeros_like(rows, dtype=torch.bool)
    for r in range(rows.shape[0]):
        mask[r] = keep_top(rows[r], per_row)
    return mask.reshape(scores.shape)


def _per_pe(scores: torch.Tensor, keep: int, owners: list[np.ndarray]) -> torch.Tensor:
    rows = scores.reshape(scores.shape[0], -1)
    busy = [o for o in owners if len(o)]
    capacity = min(len(o) for o in busy) * rows.shape[1]
    per_pe = max(1, min(capacity, int(round(keep / len(busy)))))
    mask = torch.zeros_like(rows, dtype=torch.bool)
    for o in busy:
        idx = torch.as_tensor(o, dtype=torch.long, device=rows.device)
        mask[idx] = keep_top(rows[idx], per_pe)
    return mask.reshape(scores.shape)


def _balanced_masks(model, scores: dict[str, torch.Tensor], budgets: dict[str, int],
                    pes: int, owners_fn) -> Masks:
    layers = prunable_layers(model)
    owners = None
    masks = {}
    for m, (name, layer) in enumerate(layers):
        if layer.weight.shape[0] % pes == 0:
            masks[name] = _row_uniform(scores[name], budgets[name])
        else:
            owners = owners if owners is not None else owners_fn()
            masks[name] = _per_pe(scores[name], budgets[name], owners[m])
    return masks


@torch.no_grad()
def _quantization_safe(model: nn.Module, masks: Masks) -> int:
    """Raise kept weights that int8 would round to zero to one step; returns how many."""
    raised = 0
    for name, layer in prunable_layers(model):
        w = layer.weight.reshape(layer.weight.shape[0], -1)
        mask = masks[name].reshape(w.shape)
        step = w.abs().amax(dim=1, keepdim=True) / 127
        small = mask & (w.abs() <= 0.5 * step) & (step > 0)
        if small.any():
            sign = torch.where(w >= 0, 1.0, -1.0).to(w.dtype)
            w.copy_(torch.where(small, sign * step, w))
            raised += int(small.sum())
        w.mul_(mask.to(w.dtype))
    return raised


def balanced_prune(model: nn.Module, session: Session, targets: Targets) -> MethodResult:
    """Prune to equal per-PE nonzero counts under the compiler's row assignment."""
    from ...build import compile_model

    layers = prunable_layers(model)
    if any(not isinstance(m, nn.Linear) for _, m in layers):
        raise InputError("balanced pruning follows the compiler's PE assignment, which "
                         "handles Linear layers only; use another method for Conv2d models")
    _ir(model)          # fails early, with the frontend's reason, if build cannot load it
    pes, calib = session.pes, session.data.x_train
    dense = {name: m.weight.detach().clone() for name, m in layers}
    budgets_final = _layer_budgets(model, targets)

    def owners_now():
        return compiler_assignment(model, calib, pes)[0]

    masks: Masks = {}
    events: list[int] = []
    levels: list[float] = []

    def prune_to(level: float):
        levels.append(level)
        budgets = {name: m.weight.numel() - int(round(level * (m.weight.numel() - budgets_final[
            name]))) for name, m in layers}
        new = _balanced_masks(model, magnitude_scores(model), budgets, pes, owners_now)
        masks.clear()
        masks.update(new)
        apply_masks(model, masks)

    def on_step(step: int, total: int):
        if not events:
            events.extend(pruning_steps(total, EVENTS))
        if step in events:
            prune_to(cubic_sparsity(step, 1.0, start=0, span=events[-1]))

    fine_tune(model, session, epochs=session.epochs, phase="balanced prune + fine-tune",
              masks=masks, on_step=on_step)
    if not levels or levels[-1] < 1.0:      # no (or too short a) training: prune now
        prune_to(1.0)
    info = _final_balance(model, masks, dense, pes, calib, compile_model)
    return MethodResult(model, info=info, notes=[
        f"nonzero weights per PE ({pes} PEs, compiled): " + "; ".join(
            f"{name} {min(c)}..{max(c)}" for (name, _), c in zip(layers, info["pe_nonzero"]))])


def _final_balance(model, masks: Masks, dense: dict, pes: int, calib, compile_model) -> dict:
    """Re-balance the non-uniform layers under the compiled program's assignment until the
    program itself is balanced; returns the figures."""
    layers = prunable_layers(model)
    raised = _quantization_safe(model, masks)
    counts: list[list[int]] = []
    for rounds in range(1, ROUNDS + 1):
        program = compile_model(_ir(model), calib, pes)
        counts = pe_nonzero(program)
        owners = [[lane.rows[m] for lane in program.lanes] for m in range(len(layers))]
        bad = [m for m, c in enumerate(counts)
               if max(c) - min(x for x, o in zip(c, owners[m]) if len(o)) > 1]
        if not bad:
            break
        with torch.no_grad():
            for m in bad:
                name, layer = layers[m]
                # regrow from the dense weights where the PE's share must grow
                shadow = torch.where(layer.weight != 0, layer.weight, dense[name])
                keep = int(masks[name].sum())
                masks[name] = _per_pe(shadow.abs(), keep, owners[m])
                layer.weight.copy_(shadow * masks[name])
        raised += _quantization_safe(model, masks)
    entries = [[int(lane.ptr_count[program.ptr_base[m]:program.ptr_base[m]
                                   + program.column_count(m)].sum()) for lane in program.lanes]
               for m in range(len(layers))]
    balanced = all(max(c) - min(x for x, o in zip(c, [lane.rows[m] for lane in program.lanes])
                                if len(o)) <= 1 for m, c in enumerate(counts))
    return {"pes": pes, "pe_nonzero": counts, "pe_entries": entries, "balanced": balanced,
            "rounds": rounds, "raised_for_int8": raised}
