"""Training and evaluation data for pruning: the bundled digits split or a user's ``.npz``.

``--data digits`` is :func:`compiler.datasets.digits_split` (train on its training part,
report accuracy on its test part). ``--data PATH.npz`` holds ``X`` (float32, ``[N, ...]``) and
``y`` (int64 class labels, ``[N]``); then only that file is used: a seeded 20 % of it is held
out for the accuracy figures (all of it when it has fewer than 10 samples) and the rest trains.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from core.errors import InputError
from ..datasets import digits_split

__all__ = ["PruneData", "load_data", "check_model_fits", "HOLDOUT"]

#: Share of a user's .npz held out for the accuracy figures.
HOLDOUT = 0.2


@dataclass(frozen=True, eq=False)
class PruneData:
    """Inputs and labels for fine-tuning (``train``) and for accuracy (``eval``)."""
    x_train: np.ndarray     # float32 [N, ...]
    y_train: np.ndarray     # int64 [N]
    x_eval: np.ndarray
    y_eval: np.ndarray
    source: str             # "digits" or the .npz path
    eval_name: str          # what the accuracy figures are measured on

    @property
    def classes(self) -> int:
        return int(max(self.y_train.max(initial=0), self.y_eval.max(initial=0))) + 1


def load_data(spec: str = "digits", *, seed: int = 0) -> PruneData:
    """``"digits"`` or the path of an ``.npz`` with ``X`` and ``y``."""
    if spec == "digits":
        x_train, x_eval, y_train, y_eval = digits_split()
        return PruneData(x_train, y_train, x_eval, y_eval, "digits", "digits test split")
    x, y = _read_npz(Path(spec))
    if len(x) < 10:
        return PruneData(x, y, x, y, str(spec), f"{spec} (all {len(x)} samples; too few to "
                                                 f"hold any out)")
    order = np.random.default_rng(seed).permutation(len(x))
    n_eval = max(1, int(round(HOLDOUT * len(x))))
    ev, tr = np.sort(order[:n_eval]), np.sort(order[n_eval:])
    return PruneData(x[tr], y[tr], x[ev], y[ev], str(spec),
                     f"{spec} ({n_eval} held-out samples, seed {seed})")


_FIX = "save it with numpy.savez(PATH, X=<float32 [N, features]>, y=<int64 [N]>)"


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if path.suffix != ".npz":
        raise InputError(f"--data {path}: expected 'digits' or a .npz file; {_FIX}")
    if not path.is_file():
        raise InputError(f"--data {path}: no such file; give 'digits' or a .npz file, {_FIX}")
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic != b"PK":
        # np.load would take any other bytes for a pickle (and suggest allow_pickle)
        raise InputError(f"--data {path} is not a .npz archive (not a zip file); {_FIX}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            keys = sorted(archive.files)
            missing = [k for k in ("X", "y") if k not in keys]
            if missing:
                raise InputError(f"--data {path} lacks {' and '.join(map(repr, missing))} "
                                 f"(it holds {', '.join(map(repr, keys)) or 'nothing'}); "
                                 f"{_FIX}")
            x, y = archive["X"], archive["y"]
    except InputError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise InputError(f"--data {path} is not a readable .npz ({str(e).splitlines()[0]}); "
                         f"{_FIX}") from None
    if not np.issubdtype(x.dtype, np.floating):
        raise InputError(f"--data {path}: X is {x.dtype}, not floating point; {_FIX}")
    if not np.issubdtype(y.dtype, np.integer):
        raise InputError(f"--data {path}: y is {y.dtype}, not integer class labels; {_FIX}")
    if x.ndim < 2 or y.ndim != 1 or len(x) != len(y) or len(x) == 0:
        raise InputError(f"--data {path}: X has shape {list(x.shape)} and y {list(y.shape)}; "
                         f"expected X [N, features] and y [N] with the same N >= 1")
    if not np.isfinite(x).all():
        raise InputError(f"--data {path}: X contains NaN or Inf; clean the data first")
    if y.min() < 0:
        raise InputError(f"--data {path}: y holds negative labels ({int(y.min())}); labels "
                         f"are class numbers 0..C-1")
    return x.astype(np.float32), y.astype(np.int64)


def check_model_fits(module: torch.nn.Module, data: PruneData) -> int:
    """Run ``module`` on two samples; return its number of outputs (classes).

    Raises :class:`InputError` when the data's shape or labels do not fit the model.
    """
    sample = torch.from_numpy(data.x_train[:2])
    try:
        with torch.no_grad():
            out = module.eval()(sample)
    except Exception as e:
        raise InputError(f"the model does not accept the data's inputs of shape "
                         f"{[len(data.x_train), *data.x_train.shape[1:]]} "
                         f"({str(e).splitlines()[0][:120]}); give data whose X matches the "
                         f"model's input") from None
    if out.ndim != 2:
        raise InputError(f"the model produces outputs of shape {list(out.shape)}; pruning "
                         f"fine-tunes classifiers with outputs [N, classes]")
    classes = out.shape[1]
    if data.classes > classes:
        raise InputError(f"the data has labels up to {data.classes - 1} but the model has only "
                         f"{classes} outputs; give labels 0..{classes - 1}")
    return classes
