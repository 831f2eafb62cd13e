"""Reading user arrays (calibration sets, simulation inputs) with errors that say how to fix
them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import InputError

__all__ = ["load_features"]


def load_features(path, features: int, what: str) -> np.ndarray:
    """A float array of shape [N, features] from a ``.npy`` file (no pickles).

    Arrays of shape [N, ...] whose trailing dimensions hold ``features`` values are flattened.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} file {path} not found; give a .npy file of shape "
                         f"[N, {features}]")
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as e:
        raise InputError(f"{what} file {path} is not a plain numeric .npy array ({e}); save "
                         f"it with numpy.save") from None
    except (OSError, EOFError) as e:
        raise InputError(f"{what} file {path} is not a .npy array ({e}); save it with "
                         f"numpy.save") from None
    if not isinstance(array, np.ndarray) or not np.issubdtype(array.dtype, np.number):
        raise InputError(f"{what} file {path} holds {getattr(array, 'dtype', type(array))}, "
                         f"not numbers; save a float32 array of shape [N, {features}]")
    if array.ndim >= 2 and int(np.prod(array.shape[1:])) == features:
        array = array.reshape(len(array), features)
    if array.ndim != 2 or array.shape[1] != features or len(array) == 0:
        raise InputError(f"{what} array {path} has shape {list(array.shape)} but the model "
                         f"takes {features} features: give an array of shape [N, {features}]")
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise InputError(f"{what} array {path} contains NaN or Inf; clean the data first")
    return array
