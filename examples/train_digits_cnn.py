"""Regenerate the bundled CNN example: a LeNet-5-style network for scikit-learn's 8x8 digits,
pruned with torch.nn.utils.prune (global magnitude, gradual, fine-tuned).

    python examples/train_digits_cnn.py    # writes examples/digits_cnn.pt

conv 1->6 (3x3, pad 1) - ReLU - max pool 2 - conv 6->16 (3x3, pad 1) - ReLU - max pool 2 -
flatten - linear 64->32 - ReLU - linear 32->10. Inputs are images of shape [N, 1, 8, 8]:
``load_digits().data.reshape(-1, 1, 8, 8) / 16`` (float32 in [0, 1]); the split is
compiler.datasets.digits_split(), like the MLP example's.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from digits_training import accuracy, prune_gradually, train

from compiler.datasets import DIGITS_IMAGE, digits_split

HERE = Path(__file__).resolve().parent


def lenet() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsity", type=float, default=0.80)
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    x_train, x_test, y_train, y_test = digits_split()
    x_train = x_train.reshape(-1, *DIGITS_IMAGE)
    x_test = x_test.reshape(-1, *DIGITS_IMAGE)
    model = lenet()
    train(model, x_train, y_train, epochs=80, lr=2e-3, seed=args.seed)
    print(f"dense accuracy {accuracy(model, x_test, y_test):.4f}")
    reached = prune_gradually(model, x_train, y_train, sparsity=args.sparsity, seed=args.seed,
                              report=lambda s: print(f"{s}: accuracy "
                                                     f"{accuracy(model, x_test, y_test):.4f}"))
    print(f"final weight sparsity {reached:.4f}, test accuracy "
          f"{accuracy(model, x_test, y_test):.4f}")
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(model, args.out / "digits_cnn.pt")
    np.save(args.out / "digits_test_images.npy", x_test)     # for `simulate --inputs`


if __name__ == "__main__":
    main()
