"""Data sets that ship inside installed packages (nothing is downloaded): scikit-learn's digits.

The example model, the default calibration set, the benchmarks and ``prune --data digits`` all
use the same split, defined once here.
"""

from __future__ import annotations

import numpy as np

__all__ = ["digits_split", "DIGITS_FEATURES", "DIGITS_IMAGE"]

DIGITS_FEATURES = 64
DIGITS_IMAGE = (1, 8, 8)        # the same pixels as one-channel 8x8 images


def digits_split(*, test_size: float = 0.2, seed: int = 0):
    """``(x_train, x_test, y_train, y_test)``: pixels / 16 as float32 in [0, 1], labels int64.

    ``sklearn.model_selection.train_test_split(test_size=0.2, random_state=0, stratify=y)``.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int64)
    return train_test_split(x, y, test_size=test_size, random_state=seed, stratify=y)
