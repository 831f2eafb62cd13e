"""Regenerate the bundled example: an MLP (64-128-64-10, ReLU) trained on scikit-learn's digits
and pruned to >= 90 % weight sparsity with torch.nn.utils.prune (global magnitude, gradual,
fine-tuned after each step).

    python examples/train_digits_mlp.py    # writes examples/digits_mlp.pt, digits_test_{x,y}.npy

Inputs are the 64 pixel values divided by 16 (float32 in [0, 1]): ``load_digits().data / 16``.
The split is compiler.datasets.digits_split(): sklearn's train_test_split(test_size=0.2,
random_state=0, stratify=y).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
from digits_training import example_arguments, train_and_prune

from compiler.datasets import digits_split


def main(argv=None):
    args = example_arguments(__doc__.splitlines()[0], 0.90, argv)
    torch.manual_seed(args.seed)
    x_train, x_test, y_train, y_test = digits_split()
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(),
                          nn.Linear(64, 10))
    train_and_prune(model, x_train, y_train, x_test, y_test, epochs=100, lr=1e-3,
                    sparsity=args.sparsity, seed=args.seed)

    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(model, args.out / "digits_mlp.pt")
    np.save(args.out / "digits_test_x.npy", x_test)     # for `simulate --inputs`
    np.save(args.out / "digits_test_y.npy", y_test)


if __name__ == "__main__":
    main()
