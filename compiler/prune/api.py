"""The library entry points: :func:`prune_model` (a module in, a pruned module out) and
:func:`prune_file` (``python -m compiler prune``: load, prune, save on the main process).

:func:`prune_file` refuses to save a model that lost more than ``max_accuracy_drop`` points
against the dense model on the same validation samples (:func:`_check_drop`), unless
``force`` is set."""

from __future__ import annotations

import copy
import inspect
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn as nn

from boards import get_board
from core.errors import FrontendError, InputError

from .data import PruneData, check_model_fits, load_data
from .distributed import DEVICES, Runtime, resolve_device, runtime
from .fit import calibration_of, choose_target, fit_report
from .layers import check_finite, check_prunable, prunable_layers
from .masks import Targets, keep_count, project_exact
from .methods import AUTO_UNITS, METHODS, PROJECTION
from .metrics import SparsityReport, sparsity_report
from .sensitivity import auto_targets
from .sharing import BITS as SHARING_BITS, SHARE_FRACTION, share_weights
from .train import Progress, Session, deterministic, evaluate
from ..frontend import load_module, to_ir

__all__ = ["PruneConfig", "PruneResult", "AccuracyDropError", "prune_model", "prune_file",
           "default_out", "parse_sparsity", "DEFAULT_MAX_DROP"]

#: Accuracy points a pruned model may lose before ``prune`` refuses to save it (and the budget
#: of ``--sparsity auto``).
DEFAULT_MAX_DROP = 3.0


class AccuracyDropError(InputError):
    """The pruned model lost more accuracy than allowed; nothing was saved."""


def parse_sparsity(text) -> float | str:
    """``"auto"`` or a share of zero weights in [0, 1)."""
    if isinstance(text, str) and text.strip().lower() == "auto":
        return "auto"
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise InputError(f"--sparsity must be a number in [0, 1) or 'auto', not "
                         f"{text!r}") from None
    if not (0.0 <= value < 1.0) or math.isnan(value):
        raise InputError(f"--sparsity must be in [0, 1) (the share of weights to remove, e.g. "
                         f"0.9), not {value:g}")
    return value


@dataclass
class PruneConfig:
    """What ``prune`` does; every field has a CLI flag of the same name (``--batch-size``)."""
    method: str
    sparsity: float | str = 0.9          # share of weights removed, or "auto"
    data: str = "digits"                 # "digits" or PATH.npz (X float32, y int64)
    val: str | None = None               # PATH.npz, a separate validation split
    epochs: int = 60                     # fine-tuning budget, whole method
    device: str = "auto"
    pes: int | None = None               # PEs: balanced balances for them (None: 8);
                                         # fit_board fits at them (None: build's --pes auto)
    seed: int = 0
    max_accuracy_drop: float = DEFAULT_MAX_DROP  # points: refuse to save beyond; auto's budget
    force: bool = False                  # save even beyond max_accuracy_drop (with a warning)
    lr: float = 3e-3
    batch_size: int = 64
    fit_board: str | None = None         # search the sparsity at which the model fits it
    weight_bits: int | None = None       # weight sharing: 2**B-entry codebooks (sharing.py)

    def validate(self) -> "PruneConfig":
        if self.method not in METHODS:
            raise InputError(f"unknown method {self.method!r}; use one of "
                             f"{', '.join(METHODS)}")
        if self.fit_board is not None:
            _validate_fit(self)
        else:
            self.sparsity = parse_sparsity(self.sparsity)
        for name, low in (("epochs", 0), ("pes", 1), ("batch_size", 1), ("seed", 0)):
            value = getattr(self, name)
            if name == "pes" and value is None:
                continue
            if not isinstance(value, int) or value < low:
                raise InputError(f"--{name.replace('_', '-')} must be a whole number >= {low}, "
                                 f"not {value!r}")
        if not self.max_accuracy_drop >= 0:
            raise InputError(f"--max-accuracy-drop must be >= 0 accuracy points, not "
                             f"{self.max_accuracy_drop}")
        if self.val is not None and not isinstance(self.val, (str, os.PathLike)):
            raise InputError(f"--val must be the path of a .npz file, not {self.val!r}")
        if self.weight_bits is not None and (not isinstance(self.weight_bits, int)
                                             or self.weight_bits not in SHARING_BITS):
            raise InputError(f"--weight-bits must be a whole number in {SHARING_BITS.start}.."
                             f"{SHARING_BITS.stop - 1}, not {self.weight_bits!r}")
        if not self.lr > 0:
            raise InputError(f"--lr must be positive, not {self.lr}")
        if self.device not in DEVICES:
            raise InputError(f"--device must be one of {', '.join(DEVICES)}, not "
                             f"{self.device!r}")
        return self


def _validate_fit(config: PruneConfig) -> None:
    """``--fit-board``: a known board; ``--sparsity`` left out (None) or a number, the least
    the search may return."""
    try:
        get_board(config.fit_board)
    except InputError as e:
        raise InputError(f"--fit-board: {e}".replace("--platform module:Class",
                                                     "module:Class")) from None
    if config.sparsity is None:
        return
    if parse_sparsity(config.sparsity) == "auto":
        raise InputError("--fit-board searches one sparsity for the model; --sparsity auto's "
                         "per-layer targets cannot be combined with it: leave --sparsity out "
                         "(or give a number, the least sparsity to prune to)")
    config.sparsity = parse_sparsity(config.sparsity)


@dataclass
class PruneResult:
    """The pruned model and the figures of the run."""
    model: nn.Module
    config: PruneConfig
    targets: Targets
    sparsity: SparsityReport
    accuracy_before: float
    accuracy_after: float
    seconds: float
    device: str
    world_size: int
    eval_name: str
    notes: list[str] = field(default_factory=list)
    info: dict = field(default_factory=dict)
    out: Path | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def drop(self) -> float:
        """Accuracy points lost against the dense model (negative: gained)."""
        return 100 * (self.accuracy_before - self.accuracy_after)

    def summary(self) -> dict:
        """JSON-able figures (no tensors)."""
        return {
            "method": self.config.method, "config": asdict(self.config),
            "target": {"overall": self.targets.overall, "per_layer": self.targets.per_layer},
            "sparsity": self.sparsity.to_dict(),
            "accuracy_before": self.accuracy_before, "accuracy_after": self.accuracy_after,
            "seconds": self.seconds, "device": self.device, "world_size": self.world_size,
            "eval": self.eval_name, "notes": self.notes, "info": self.info,
            "warnings": self.warnings, "out": str(self.out) if self.out else None,
        }


def _build_check(model, data: PruneData) -> str | None:
    """Why ``build`` could not load the pruned model (None: it can)."""
    shape = tuple(data.x_train.shape[1:])
    images = len(shape) > 1         # the frontend needs their (C, H, W)
    if images and "input_shape" not in inspect.signature(to_ir).parameters:
        return "the frontend compiles models taking feature vectors only"
    try:
        to_ir(copy.deepcopy(model).cpu(), "pruned", **({"input_shape": shape} if images else {}))
    except FrontendError as e:
        return str(e)
    return None


def prune_model(model: nn.Module, config: PruneConfig, *, data: PruneData | None = None,
                rt: Runtime | None = None, progress: Progress | None = None) -> PruneResult:
    """Prune ``model`` (not changed; a pruned copy is returned) as ``config`` says."""
    config.validate()
    check_prunable(model)
    check_finite(model)
    data = data if data is not None else load_data(config.data, seed=config.seed,
                                                   val=config.val)
    check_model_fits(model, data)
    rt = rt if rt is not None else Runtime(device=resolve_device(config.device))
    session = Session(data=data, runtime=rt, epochs=config.epochs, seed=config.seed,
                      pes=config.pes or 8, lr=config.lr, batch_size=config.batch_size,
                      progress=progress or Progress())
    started = time.perf_counter()
    with deterministic(rt.device):
        torch.manual_seed(config.seed)
        dense = copy.deepcopy(model).to(rt.device).eval()
        x_eval, y_eval = session.tensor("x_eval"), session.tensor("y_eval")
        before = evaluate(dense, x_eval, y_eval)
        info: dict = {}
        if config.sparsity == "auto":
            units, probe = AUTO_UNITS.get(config.method, (None, None))
            targets, alloc = auto_targets(
                dense, session, config.max_accuracy_drop,
                units=units(dense) if units else None, probe=probe)
            info["auto"] = {"levels": alloc.levels, "one_shot_accuracy": alloc.accuracy,
                            "budget_points": config.max_accuracy_drop}
        else:
            targets = Targets(float(config.sparsity))
        sharing_steps = 0
        if config.weight_bits is not None:      # the end of the budget tunes the codebooks
            total = session.total_steps
            sharing_steps = int(round(SHARE_FRACTION * total))
            session.budget_steps = total - sharing_steps
        result = METHODS[config.method](copy.deepcopy(dense), session, targets)
        pruned = result.model.eval()
        info["projection"] = _make_exact(pruned, dense, targets, config.method,
                                         structured=result.kept is not None)
        if config.weight_bits is not None:
            distinct = share_weights(pruned, session, config.weight_bits, sharing_steps)
            info["weight_sharing"] = {"bits": config.weight_bits, "steps": sharing_steps,
                                      "distinct_nonzero": distinct}
        after = evaluate(pruned, x_eval, y_eval)
    pruned = pruned.cpu()
    report = sparsity_report(pruned, dense.cpu(), kept=result.kept)
    notes = list(result.notes)
    problem = _build_check(pruned, data)
    if problem:
        notes.append(f"build cannot load the result yet: {problem}")
    info.update(result.info)
    return PruneResult(model=pruned, config=config, targets=targets, sparsity=report,
                       accuracy_before=before, accuracy_after=after,
                       seconds=time.perf_counter() - started, device=str(rt.device),
                       world_size=rt.world_size, eval_name=data.eval_name, notes=notes,
                       info=info, warnings=list(data.warnings))


def _make_exact(pruned: nn.Module, dense: nn.Module, targets: Targets, method: str, *,
                structured: bool) -> dict | None:
    """The last step of every method: exactly ``round(sparsity x weights)`` zeros, in the
    scope the method defines (:data:`~compiler.prune.methods.PROJECTION`), by zeroing the
    smallest surviving weights where training left the count off. ``structured`` with
    ``--sparsity auto`` is skipped: its per-layer targets are shares of units, not weights."""
    scope = PROJECTION.get(method, "global")
    if structured and targets.per_layer is not None:
        return None
    if scope is None:       # exact itself (balanced): report the global count it aims at
        layers = prunable_layers(pruned)
        total = sum(m.weight.numel() for _, m in layers)
        want = sum(m.weight.numel() - keep_count(m.weight.numel(), targets.for_layer(n))
                   for n, m in layers) if targets.per_layer is not None \
            else total - keep_count(total, targets.overall)
        return {"projected": 0, "short": 0, "requested": want}
    total = sum(m.weight.numel() for _, m in prunable_layers(dense)) if structured else None
    return project_exact(pruned, targets, scope=scope, dense_weights=total)


def _check_drop(result: PruneResult, config: PruneConfig) -> str | None:
    """The one place that decides whether a pruned model may be saved.

    Returns None when it lost at most ``config.max_accuracy_drop`` points, a warning when it
    lost more but ``config.force`` is set; raises :class:`AccuracyDropError` otherwise.
    """
    drop = result.drop
    if drop <= config.max_accuracy_drop + 1e-9:       # accuracies are counts / N
        return None
    text = (f"the pruned model lost {drop:.2f} accuracy points on {result.eval_name} "
            f"(dense {100 * result.accuracy_before:.2f} % -> pruned "
            f"{100 * result.accuracy_after:.2f} %), more than --max-accuracy-drop "
            f"{config.max_accuracy_drop:g}")
    if config.force:
        return f"{text}; saved anyway because of --force"
    raise AccuracyDropError(f"{text}; nothing saved: lower --sparsity, give more --epochs, "
                            f"or pass --force to save it anyway")


def _save(model: nn.Module, out: Path) -> None:
    """``torch.save`` to a temporary file beside ``out``, then rename: never a partial file."""
    part = out.with_name(f".{out.name}.{os.getpid()}.part")
    try:
        torch.save(model, part)
        os.replace(part, out)
    except OSError as e:
        raise InputError(f"cannot write {out}: {e.strerror}; choose another --out") from None
    finally:
        part.unlink(missing_ok=True)


def default_out(model_path, config: PruneConfig) -> Path:
    """``<model>-<method>-<sparsity>.pt`` beside the model."""
    path = Path(model_path)
    level = "auto" if config.sparsity == "auto" else f"{round(100 * float(config.sparsity))}"
    return path.with_name(f"{path.stem}-{config.method}-{level}.pt")


def _check_out(out: Path) -> None:
    if out.suffix != ".pt":
        raise InputError(f"--out {out}: the pruned model is saved with torch.save; give a .pt "
                         f"path")
    if not out.parent.is_dir():
        raise InputError(f"--out {out}: folder {out.parent} does not exist; create it or "
                         f"choose another path")


def _refit(result: PruneResult, data: PruneData, search, notes: list[str], warn) -> None:
    """``--fit-board``: check the fine-tuned model itself (its zero count is the target's, its
    zeros may sit elsewhere) and record the search and that check in ``result.info["fit"]``."""

    calibration, shape = calibration_of(data)
    final = fit_report(result.model, calibration, get_board(result.config.fit_board),
                       result.config.pes, input_shape=shape)
    result.notes[:0] = notes
    result.info["fit"] = {"board": search.board, "search_pes": search.pes,
                          "sparsity": search.sparsity, "minimum": search.minimum,
                          "tried": [list(t) for t in search.tried], "final": final}
    if not final["fits"]:
        text = (f"the pruned model does not fit {search.board} after fine-tuning "
                f"({final['problem']}); prune again with a slightly higher --sparsity")
        result.warnings.append(text)
        if warn is not None:
            warn(text)


def prune_file(model_path, config: PruneConfig, *, out=None, trust_pickle: bool = False,
               progress: Progress | None = None,
               warn: Callable[[str], None] | None = None) -> PruneResult:
    """Load ``model_path``, prune it, save the plain result to ``out`` (main process only).

    Inside ``torchrun`` every process trains its share; only rank 0 writes. ``warn`` is called
    (on the main process) with each warning as it arises: validation samples that may flatter
    the figures before training, a forced save after it. Raises :class:`AccuracyDropError`
    (and saves nothing) when the model lost more than ``config.max_accuracy_drop`` points and
    ``config.force`` is not set.
    """
    config.validate()
    if out is not None:
        _check_out(Path(out))
    module = load_module(model_path, trust_pickle=trust_pickle)
    check_prunable(module, str(model_path))
    check_finite(module, str(model_path))
    data = load_data(config.data, seed=config.seed, val=config.val)
    check_model_fits(module, data)
    fit_notes, search = [], None
    if config.fit_board is not None:
        target, search, fit_notes = choose_target(module, data, config, progress)
        config = replace(config, sparsity=target)
    out = Path(out) if out is not None else default_out(model_path, config)
    _check_out(out)
    with runtime(config.device) as rt:
        if rt.is_main and warn is not None:
            for text in data.warnings:
                warn(text)
        result = prune_model(module, config, data=data, rt=rt,
                             progress=progress if rt.is_main else None)
        forced = _check_drop(result, config)     # every rank: all exit alike
        if forced:
            result.warnings.append(forced)
        if rt.is_main and search is not None:
            _refit(result, data, search, fit_notes, warn)
        if rt.is_main:
            if forced and warn is not None:
                warn(forced)
            _save(result.model, out)
            result.out = out
    return result
