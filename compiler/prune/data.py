"""Training and evaluation data for pruning: the bundled digits split or a user's ``.npz``.

``--data digits`` is :func:`compiler.datasets.digits_split` (train on its training part,
report accuracy on its test part). ``--data PATH.npz`` holds ``X`` (float32, ``[N, ...]``) and
``y`` (int64 class labels, ``[N]``); then only that file is used: a seeded 20 % of it is held
out for the accuracy figures (all of it when it has fewer than 10 samples) and the rest trains.
``--val PATH.npz`` (the same format) is a separate validation split: then all of ``--data``
trains (for digits: its training part) and both accuracies are measured on the ``--val`` file.

The dense and the pruned model are always evaluated on the same samples. Validation samples
that the dense model may have been trained on flatter both figures, so :func:`load_data`
warns (:attr:`PruneData.warnings`) when the validation samples share identical rows with the
training data, or with the training part of the digits split (what the bundled examples were
trained on, see ``examples/train_digits_mlp.py``).
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from core.errors import InputError
from ..datasets import DIGITS_FEATURES, DIGITS_IMAGE, digits_split

__all__ = ["PruneData", "load_data", "check_model_fits", "overlap", "HOLDOUT"]

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
    val: str | None = None  # the --val file the eval samples come from (None: from --data)
    warnings: tuple[str, ...] = ()  # the validation samples may flatter the figures: why

    @property
    def classes(self) -> int:
        return int(max(self.y_train.max(initial=0), self.y_eval.max(initial=0))) + 1


def load_data(spec: str = "digits", *, seed: int = 0, val: str | None = None) -> PruneData:
    """``"digits"`` or the path of an ``.npz`` with ``X`` and ``y``; ``val``: the path of a
    separate validation ``.npz`` (then all of ``spec`` trains)."""
    if spec == "digits":
        x_train, x_eval, y_train, y_eval = digits_split()
        if val is None:
            return PruneData(x_train, y_train, x_eval, y_eval, "digits", "digits test split")
    else:
        x_train, y_train = _read_npz(Path(spec), "--data")
    if val is not None:
        x_eval, y_eval = _read_npz(Path(val), "--val")
        what = f"--val {val}"
        warnings = [_overlap_warning(what, x_eval, x_train, f"--data {spec}", trains=True)]
        if spec != "digits":
            warnings.append(_digits_warning(what, x_eval))
        return PruneData(x_train, y_train, x_eval, y_eval, str(spec),
                         f"{val} (--val, {len(x_eval)} samples)", val=str(val),
                         warnings=tuple(w for w in warnings if w))
    x, y = x_train, y_train
    if len(x) < 10:
        return PruneData(x, y, x, y, str(spec),
                         f"{spec} (all {len(x)} samples, the training samples themselves; too "
                         f"few to hold any out: give --val)",
                         warnings=(f"--data {spec} has only {len(x)} samples, so the accuracy "
                                   f"figures are measured on the samples the pruned model "
                                   f"trains on; give a separate validation split with --val",))
    order = np.random.default_rng(seed).permutation(len(x))
    n_eval = max(1, int(round(HOLDOUT * len(x))))
    ev, tr = np.sort(order[:n_eval]), np.sort(order[n_eval:])
    warning = _digits_warning(f"the held-out part of --data {spec}", x[ev])
    return PruneData(x[tr], y[tr], x[ev], y[ev], str(spec),
                     f"{spec} ({n_eval} held-out samples, seed {seed}: a held-out part of that "
                     f"same file, the other {len(tr)} train; --val gives a separate split)",
                     warnings=(warning,) if warning else ())


def overlap(x: np.ndarray, seen: np.ndarray) -> int:
    """How many rows (samples) of ``x`` are identical, bit for bit, to a row of ``seen``."""
    if x.shape[1:] != seen.shape[1:] or not len(x) or not len(seen):
        return 0
    rows = {r.tobytes() for r in np.ascontiguousarray(seen).reshape(len(seen), -1)}
    return sum(r.tobytes() in rows for r in np.ascontiguousarray(x).reshape(len(x), -1))


def _overlap_warning(what: str, x: np.ndarray, seen: np.ndarray, seen_name: str, *,
                     trains: bool) -> str | None:
    shared = overlap(x, seen)
    if not shared:
        return None
    who = "the pruned model trains on them and the dense model probably did too" if trains \
        else "the dense model may have been trained on them"
    return (f"{what}: {shared} of its {len(x)} samples are also in {seen_name} (identical "
            f"rows); {who}, so both accuracy figures flatter the models: give a validation "
            f"split disjoint from the training data")


def _digits_warning(what: str, x: np.ndarray) -> str | None:
    """Warn when ``x`` holds samples of the digits training split (the bundled examples'
    training data): a dense model trained on it scores them too well."""
    if x.shape[1:] not in ((DIGITS_FEATURES,), DIGITS_IMAGE):
        return None
    x_train = digits_split()[0].reshape(-1, *x.shape[1:])
    shared = overlap(x, x_train)
    if not shared:
        return None
    return (f"{what}: {shared} of its {len(x)} samples are in the training part of the digits "
            f"split (compiler.datasets.digits_split), which the bundled examples' dense models "
            f"were trained on; if yours was too, the accuracy figures flatter it: validate on "
            f"samples it never saw (--data digits uses the split's test part) or with --val")


_FIX = "save it with numpy.savez(PATH, X=<float32 [N, features]>, y=<int64 [N]>)"


def _read_npz(path: Path, flag: str = "--data") -> tuple[np.ndarray, np.ndarray]:
    expected = "'digits' or a .npz file" if flag == "--data" else "a .npz file"
    if path.suffix != ".npz":
        raise InputError(f"{flag} {path}: expected {expected}; {_FIX}")
    if path.is_dir():
        raise InputError(f"{flag} {path} is a folder; give {expected}, {_FIX}")
    if not path.is_file():
        raise InputError(f"{flag} {path}: no such file; give {expected}, {_FIX}")
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic != b"PK":
        # np.load would take any other bytes for a pickle (and suggest allow_pickle)
        raise InputError(f"{flag} {path} is not a .npz archive (not a zip file); {_FIX}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            keys = sorted(archive.files)
            missing = [k for k in ("X", "y") if k not in keys]
            if missing:
                raise InputError(f"{flag} {path} lacks {' and '.join(map(repr, missing))} "
                                 f"(it holds {', '.join(map(repr, keys)) or 'nothing'}); "
                                 f"{_FIX}")
            x, y = archive["X"], archive["y"]
    except InputError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise InputError(f"{flag} {path} is not a readable .npz ({str(e).splitlines()[0]}); "
                         f"{_FIX}") from None
    if not np.issubdtype(x.dtype, np.floating):
        raise InputError(f"{flag} {path}: X is {x.dtype}, not floating point; {_FIX}")
    if not np.issubdtype(y.dtype, np.integer):
        raise InputError(f"{flag} {path}: y is {y.dtype}, not integer class labels; {_FIX}")
    if x.ndim < 2 or y.ndim != 1 or len(x) != len(y) or len(x) == 0:
        raise InputError(f"{flag} {path}: X has shape {list(x.shape)} and y {list(y.shape)}; "
                         f"expected X [N, features] and y [N] with the same N >= 1")
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise InputError(f"{flag} {path}: X contains NaN or Inf; clean the data first")
    if y.min() < 0:
        raise InputError(f"{flag} {path}: y holds negative labels ({int(y.min())}); labels "
                         f"are class numbers 0..C-1")
    return x, y.astype(np.int64)


def check_model_fits(module: torch.nn.Module, data: PruneData) -> int:
    """Run ``module`` on two samples; return its number of outputs (classes).

    Raises :class:`InputError` when the data's shape or labels do not fit the model.
    """
    sample = torch.from_numpy(data.x_train[:2])
    try:
        with torch.no_grad():
            out = module.eval()(sample)
    except Exception as e:
        raise InputError(f"--data {data.source}: the model does not accept the data's "
                         f"inputs of shape "
                         f"{[len(data.x_train), *data.x_train.shape[1:]]} "
                         f"({str(e).splitlines()[0][:120]}); give data whose X matches the "
                         f"model's input") from None
    if out.ndim != 2:
        raise InputError(f"the model produces outputs of shape {list(out.shape)}; pruning "
                         f"fine-tunes classifiers with outputs [N, classes]")
    classes = out.shape[1]
    if data.val is not None and data.x_eval.shape[1:] != data.x_train.shape[1:]:
        raise InputError(f"--val {data.val}: its samples have shape "
                         f"{list(data.x_eval.shape[1:])} but the model takes "
                         f"{list(data.x_train.shape[1:])} (as the training data has); give "
                         f"--val data with the same features as --data")
    train_max = int(data.y_train.max(initial=0))
    if train_max >= classes:
        raise InputError(f"--data {data.source} has labels up to {train_max} but the model "
                         f"has only "
                         f"{classes} outputs; give labels 0..{classes - 1}")
    eval_max = int(data.y_eval.max(initial=0))
    if eval_max >= classes:
        where = f"--val {data.val}" if data.val is not None else f"--data {data.source}"
        raise InputError(f"{where} has labels up to {eval_max} but the model has only "
                         f"{classes} outputs; give labels 0..{classes - 1}")
    return classes
