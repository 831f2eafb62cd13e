"""Reading user arrays (calibration sets, simulation inputs) with errors that say how to fix
them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from core.errors import InputError

__all__ = ["load_features", "load_labels"]


def load_features(path, shape, what: str) -> np.ndarray:
    """A float array of shape [N, *shape] from a ``.npy`` file (no pickles).

    ``shape``: an int (a feature vector: arrays [N, ...] holding that many values per row are
    flattened) or a tuple (C, H, W) for image inputs, where None matches any size.
    """
    path = Path(path)
    vector = isinstance(shape, (int, np.integer))
    want = f"[N, {shape}]" if vector else \
        "[N, " + ", ".join("H" if d is None and i == 1 else "W" if d is None else str(d)
                           for i, d in enumerate(shape)) + "]"
    array = _read_npy(path, what, want, "float32")
    if vector:
        if array.ndim >= 2 and int(np.prod(array.shape[1:])) == shape:
            array = array.reshape(len(array), shape)
        ok = array.ndim == 2 and array.shape[1] == shape
    else:
        ok = array.ndim == len(shape) + 1 and all(
            d is None or d == got for d, got in zip(shape, array.shape[1:]))
    if not ok or len(array) == 0:
        model_takes = f"{shape} features" if vector else f"inputs of shape {want}"
        raise InputError(f"{what} array {path} has shape {list(array.shape)} but the model "
                         f"takes {model_takes}: give an array of shape {want}")
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise InputError(f"{what} array {path} contains NaN or Inf; clean the data first")
    return array


def _read_npy(path: Path, what: str, want: str, dtype: str) -> np.ndarray:
    """The real-valued array in ``.npy`` file ``path`` (never a pickle); the errors ask for a
    ``dtype`` array of shape ``want`` ("[N, 64]")."""
    if path.is_dir():
        raise InputError(f"{what} file {path} is a folder; give a .npy file of shape {want}")
    if not path.is_file():
        raise InputError(f"{what} file {path} not found; give a .npy file of shape {want}")
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic[:2] == b"PK":
        raise InputError(f"{what} file {path} is an .npz archive, not a .npy array; save one "
                         f"array of shape {want} with numpy.save")
    if magic != b"\x93NUMPY":
        # np.load would take any other bytes for a pickle (and suggest allow_pickle)
        raise InputError(f"{what} file {path} is not a .npy array (no NumPy header); save a "
                         f"{dtype} array of shape {want} with numpy.save")
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as e:
        raise InputError(f"{what} file {path} is not a plain numeric .npy array ({e}); save "
                         f"it with numpy.save") from None
    except (OSError, EOFError) as e:
        raise InputError(f"{what} file {path} is not a .npy array ({e}); save it with "
                         f"numpy.save") from None
    if not isinstance(array, np.ndarray) or not (np.issubdtype(array.dtype, np.floating)
                                                 or np.issubdtype(array.dtype, np.integer)):
        raise InputError(f"{what} file {path} holds {getattr(array, 'dtype', type(array))}, "
                         f"not real numbers; save a {dtype} array of shape {want}")
    return array


def load_labels(path, count: int, classes: int, what: str = "labels") -> np.ndarray:
    """Integer class labels [count] in 0..classes-1 from a ``.npy`` file."""
    path = Path(path)
    want = f"an integer array of {count} labels in 0..{classes - 1}"
    array = _read_npy(path, what, f"[{count}]", "integer")
    if array.ndim != 1 or len(array) != count:
        raise InputError(f"{what} array {path} has shape {list(array.shape)} but there are "
                         f"{count} inputs: give {want}")
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or not np.array_equal(array, np.round(array)):
            raise InputError(f"{what} array {path} holds non-integer values; give {want}")
    array = array.astype(np.int64)
    if array.min() < 0 or array.max() >= classes:
        raise InputError(f"{what} array {path} holds labels {array.min()}..{array.max()} but "
                         f"the model has {classes} outputs: give {want}")
    return array
