"""Prune to fit a board: the lowest sparsity at which a model's accelerator fits.

:func:`fit_sparsity` magnitude-projects a copy of the model to a candidate sparsity (one
threshold for the whole model, or each layer alone for the per-layer methods), compiles it
for the board and asks the fit check (:func:`boards.fit.resolve_options`, the estimate
``build`` makes before any synthesis). It bisects on the sparsity between the lowest asked
(``minimum``) and ``CEILING``. Fit is nearly monotone in sparsity (fewer weights, fewer
memory blocks), not exactly (rounding to whole blocks, PE balance): the point returned is
always one that was checked and fits. ``prune --fit-board`` uses it to choose its target;
``build`` uses it to say, when a model does not fit, which sparsity would.

Only memories shrink with sparsity; logic, DSPs and the input buffer do not. When even
``CEILING`` does not fit, :class:`~core.errors.FitError` names what is still short.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch.nn as nn

from boards import get_board
from boards.fit import FitEstimate, plan, resolve_options
from core.errors import FitError

from .. import reference
from ..compiling import compile_model, encode_calibrated
from ..frontend import to_ir
from ..passes.quantize import quantize
from .layers import prunable_layers
from .masks import Targets, project_exact
from .methods import PROJECTION

__all__ = ["FitSearch", "SparsityWouldNotHelp", "choose_target", "fit_report",
           "sparsity_hint", "calibration_of", "fit_sparsity", "fit_estimate", "projection_scope", "CEILING",
           "RESOLUTION"]

#: The highest sparsity the search tries (every layer keeps some weights).
CEILING = 0.995
#: The search stops when the bracket is this narrow (a share of the weights).
RESOLUTION = 0.005


class SparsityWouldNotHelp(FitError):
    """Even the highest sparsity tried does not fit; ``estimate`` is that point's."""

    def __init__(self, estimate: FitEstimate, text: str):
        super().__init__(text)
        self.estimate = estimate

    @property
    def short(self) -> str:
        """The resources still short, by name: ``"logic, DSPs"``."""
        names = [p.split(":")[0] for p in self.estimate.problems
                 if not p.startswith("with the weights")]
        return ", ".join(dict.fromkeys(names))


@dataclass
class FitSearch:
    """The search's answer: ``sparsity`` is the lowest checked point that fits ``board`` at
    ``pes`` PEs (never below ``minimum``); ``estimate`` is its fit estimate; ``tried`` lists
    ``(sparsity, fits)`` in the order checked."""
    board: str
    pes: int
    sparsity: float
    minimum: float
    estimate: FitEstimate
    tried: list = field(default_factory=list)

    @property
    def fits_at_minimum(self) -> bool:
        """Whether the model fit at ``minimum`` already (dense, when that is 0)."""
        return self.sparsity == self.minimum

    @property
    def below(self) -> float | None:
        """The highest checked sparsity that did not fit (None: none failed)."""
        failed = [s for s, fits in self.tried if not fits and s < self.sparsity]
        return max(failed) if failed else None


def projection_scope(method: str) -> str:
    """How ``method`` spreads a sparsity over the layers, for the search: ``"layer"`` (every
    layer at the target: ``magnitude``, ``balanced``) or ``"global"`` (one threshold)."""
    scope = PROJECTION.get(method, "global")
    return "layer" if scope in ("layer", None) else "global"


def fit_estimate(module: nn.Module, calibration: np.ndarray, board, pes: int, *,
                 input_shape=None, choices=None, index_bits=None) -> FitEstimate:
    """The fit estimate of ``module`` (float torch model) compiled for ``pes`` PEs on
    ``board``, as ``build``'s plan makes it (banks from a reference run on the calibration
    inputs, weights moved to SPRAM where only that fits). ``calibration``: float [N, in]."""

    kwargs = {"input_shape": tuple(input_shape)} if input_shape else {}
    program = compile_model(to_ir(module, "model", **kwargs), calibration, pes,
                            index_bits=index_bits)
    x = reference.quantize_input(calibration, program.model.input_scale)[:256]
    _, est = resolve_options(program, board, choices, reference.run(program, x))
    return est


def _projected(module: nn.Module, sparsity: float, scope: str) -> nn.Module:
    model = copy.deepcopy(module).cpu().eval()
    if sparsity > 0:
        project_exact(model, Targets(sparsity), scope=scope)
    return model


def fit_sparsity(module: nn.Module, calibration: np.ndarray, board, pes: int = 1, *,
                 scope: str = "global", minimum: float = 0.0, resolution: float = RESOLUTION,
                 max_checks: int = 12, input_shape=None, choices=None, index_bits=None,
                 on_check: Callable[[float, FitEstimate], None] | None = None) -> FitSearch:
    """The lowest sparsity >= ``minimum`` (to ``resolution``) at which ``module``,
    magnitude-projected in ``scope`` (``"global"`` or ``"layer"``), fits ``board`` at ``pes``
    PEs: fit check only, no synthesis. At most ``max_checks`` compilations (the bracket may
    stay wider than ``resolution`` then). ``on_check(sparsity, estimate)`` follows each one.

    Raises :class:`FitError` when even :data:`CEILING` (or ``minimum``, if higher) does not
    fit: sparsity alone cannot make it fit, and the message names the resources short."""
    if not isinstance(pes, int) or isinstance(pes, bool) or pes < 1:
        raise ValueError(f"pes must be a whole number >= 1, not {pes!r}")
    if not 0.0 <= minimum < 1.0:
        raise ValueError(f"minimum must be a sparsity in [0, 1), not {minimum!r}")
    tried: list = []
    estimates: dict = {}

    def check(sparsity: float) -> bool:
        est = fit_estimate(_projected(module, sparsity, scope), calibration, board, pes,
                           input_shape=input_shape, choices=choices, index_bits=index_bits)
        tried.append((sparsity, est.fits))
        estimates[sparsity] = est
        if on_check is not None:
            on_check(sparsity, est)
        return est.fits

    def answer(sparsity: float) -> FitSearch:
        return FitSearch(board.name, pes, sparsity, minimum, estimates[sparsity], tried)

    if check(minimum):
        return answer(minimum)
    high = max(CEILING, minimum)
    if high == minimum or not check(high):
        est = estimates[high]
        raise SparsityWouldNotHelp(est, f"even at {100 * high:.1f} % sparsity the model does not fit "
                       f"{board.name} ({board.device}) at P = {pes}: "
                       f"{'; '.join(est.problems)}. Sparsity shrinks only the weight "
                       f"memories: give fewer --pes, or choose a bigger board")
    low = minimum
    while high - low > resolution + 1e-9 and len(tried) < max_checks:
        mid = round((low + high) / 2, 4)
        if check(mid):
            high = mid
        else:
            low = mid
    return answer(high)


def calibration_of(data) -> tuple[np.ndarray, tuple | None]:
    """(float [N, in] calibration inputs, the (C, H, W) of image inputs or None) from the
    pruning data's training split, as ``build --calibration`` would take them."""
    x = data.x_train
    shape = tuple(x.shape[1:]) if x.ndim > 2 else None
    return x.reshape(len(x), -1), shape


def fit_report(model: nn.Module, calibration: np.ndarray, board, pes: int | None = None, *,
               input_shape=None) -> dict:
    """What ``build`` would make of ``model`` on ``board``: with ``pes`` that P's estimate,
    without the plan of ``--pes auto`` (the most inferences per second that fit). A dict:
    ``fits``, ``pes``, ``estimate`` (:meth:`~boards.fit.FitEstimate.as_dict`), ``reason`` or
    ``problem`` (the :class:`FitError` text)."""

    kwargs = {"input_shape": tuple(input_shape)} if input_shape else {}
    quantized = quantize(to_ir(copy.deepcopy(model).cpu().eval(), "model", **kwargs),
                         calibration)
    x = reference.quantize_input(calibration, quantized.input_scale)[:256]
    try:
        chosen = plan(lambda p, grid=None: encode_calibrated(quantized, calibration, p,
                                                             grid=grid),
                      board, pes=pes, calibration_run=lambda program: reference.run(program, x))
    except FitError as e:
        return {"board": board.name, "fits": False, "pes": pes, "problem": str(e)}
    return {"board": board.name, "fits": True, "pes": chosen.program.pes,
            "grid": str(chosen.program.grid), "estimate": chosen.estimate.as_dict(),
            "reason": chosen.reason}


def _zero_share(module: nn.Module) -> float:
    layers = [m.weight for _, m in prunable_layers(module)]
    total = sum(w.numel() for w in layers)
    return sum(int((w == 0).sum()) for w in layers) / max(total, 1)


def choose_target(module: nn.Module, data, config, progress=None
                  ) -> tuple[float, FitSearch, list[str]]:
    """``prune --fit-board``: the sparsity to prune ``module`` to, the search that found it
    and notes saying why. The search starts at the larger of ``config.sparsity`` (the least
    the user asked for; None: 0) and the model's own share of zero weights (lower targets
    would let fine-tuning regrow weights the fit was measured without), at ``config.pes``
    PEs (None: 1, the smallest design, as ``build --pes auto`` falls back to)."""

    board = get_board(config.fit_board)
    pes = config.pes or 1
    asked = float(config.sparsity) if config.sparsity is not None else 0.0
    own = np.floor(_zero_share(module) * 1000) / 1000
    minimum = min(max(asked, own), CEILING)
    calibration, shape = calibration_of(data)
    steps = 12
    if progress is not None:
        progress.start(f"fit search ({board.name}, P = {pes})", steps)
    try:
        search = fit_sparsity(module, calibration, board, pes, minimum=minimum,
                              scope=projection_scope(config.method), max_checks=steps,
                              input_shape=shape,
                              on_check=(lambda s, e: progress.advance()) if progress else None)
    finally:
        if progress is not None:
            progress.done("fit search")
    notes = []
    where = f"{board.name} at P = {pes}"
    if search.fits_at_minimum:
        why = ("the dense model" if minimum == 0 else
               f"the model at {100 * minimum:.1f} % sparsity"
               + (f" (--sparsity {asked:g})" if asked >= own else " (its own zeros)"))
        notes.append(f"{why} fits {where} already: pruning to {100 * minimum:.1f} %")
    else:
        notes.append(f"lowest sparsity that fits {where}: {100 * search.sparsity:.1f} % "
                     f"({len(search.tried)} fit checks)")
        if config.sparsity is not None:
            notes.append(f"--sparsity {asked:g} is below what {board.name} needs: pruning to "
                         f"{100 * search.sparsity:.1f} %, the larger of the two")
    if not config.pes:
        notes.append("no --pes: searched at P = 1, the smallest design; the fit line below "
                     "is the P that build --pes auto chooses for the pruned model")
    if own > asked and own > 0:
        notes.append(f"the model is {100 * own:.1f} % sparse already; the search started "
                     f"there")
    return search.sparsity, search, notes


def sparsity_hint(module, calibration: np.ndarray, board, pes: int, *, model_path: str,
                  board_name: str, input_shape=None, choices=None, index_bits=None,
                  max_checks: int = 8) -> str | None:
    """For ``build``'s fit error: the sparsity at which ``module`` would fit ``board`` at
    ``pes`` PEs and the ``prune`` command that gets there, or that sparsity would not help
    (what stays short even at :data:`CEILING`). None when ``module`` cannot be pruned (not
    an eager torch model with Linear or Conv2d layers). A coarse, capped search: seconds."""

    if not isinstance(module, nn.Module) or not _is_prunable(module, prunable_layers):
        return None
    own = np.floor(_zero_share(module) * 1000) / 1000
    try:
        found = fit_sparsity(module, calibration, board, pes, minimum=min(own, CEILING),
                             resolution=0.01, max_checks=max_checks, input_shape=input_shape,
                             choices=choices, index_bits=index_bits)
    except SparsityWouldNotHelp as e:
        high = max(CEILING, own)
        return (f"Sparsity would not help at P = {pes}: even at {100 * high:.1f} % sparsity "
                f"these stay short: {e.short} (sparsity shrinks only the weight memories); "
                f"give fewer --pes or a bigger board")
    if found.fits_at_minimum:       # the fit check disagrees with itself: no advice
        return None
    return (f"At about {100 * found.sparsity:.1f} % sparsity (now {100 * own:.1f} %) it would "
            f"fit {board.name} at P = {pes}: `python -m compiler prune {model_path} --method "
            f"global-magnitude --fit-board {board_name} --pes {pes}`")


def _is_prunable(module, prunable_layers) -> bool:
    import torch
    return not isinstance(module, torch.jit.ScriptModule) and bool(prunable_layers(module))
