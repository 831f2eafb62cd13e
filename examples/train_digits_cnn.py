"""Regenerate the bundled CNN example: a LeNet-5-style network for scikit-learn's 8x8 digits,
pruned with torch.nn.utils.prune (global magnitude, gradual, fine-tuned).

    python examples/train_digits_cnn.py    # writes examples/digits_cnn.pt

conv 1->6 (3x3, pad 1) - ReLU - max pool 2 - conv 6->16 (3x3, pad 1) - ReLU - max pool 2 -
flatten - linear 64->32 - ReLU - linear 32->10. Inputs are images of shape [N, 1, 8, 8]:
``load_digits().data.reshape(-1, 1, 8, 8) / 16`` (float32 in [0, 1]); the split is
compiler.datasets.digits_split(), like the MLP example's.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
from digits_training import example_arguments, train_and_prune

from compiler.datasets import DIGITS_IMAGE, digits_split


def lenet() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def main(argv=None):
    args = example_arguments(__doc__.splitlines()[0], 0.80, argv)
    torch.manual_seed(args.seed)
    x_train, x_test, y_train, y_test = digits_split()
    x_train = x_train.reshape(-1, *DIGITS_IMAGE)
    x_test = x_test.reshape(-1, *DIGITS_IMAGE)
    model = lenet()
    train_and_prune(model, x_train, y_train, x_test, y_test, epochs=80, lr=2e-3,
                    sparsity=args.sparsity, seed=args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(model, args.out / "digits_cnn.pt")
    np.save(args.out / "digits_test_images.npy", x_test)     # for `simulate --inputs`


if __name__ == "__main__":
    main()
