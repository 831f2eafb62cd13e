"""Regenerate the bundled example: an MLP (64-128-64-10, ReLU) trained on scikit-learn's digits
and pruned to >= 90 % weight sparsity with torch.nn.utils.prune (global magnitude, gradual,
fine-tuned after each step).

    python examples/train_digits_mlp.py    # writes examples/digits_mlp.pt, digits_test_{x,y}.npy

Inputs are the 64 pixel values divided by 16 (float32 in [0, 1]): ``load_digits().data / 16``.
The split is compiler.datasets.digits_split(): sklearn's train_test_split(test_size=0.2,
random_state=0, stratify=y).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from digits_training import accuracy, prune_gradually, train

from compiler.datasets import digits_split

HERE = Path(__file__).resolve().parent


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsity", type=float, default=0.90)
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    x_train, x_test, y_train, y_test = digits_split()
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(),
                          nn.Linear(64, 10))
    train(model, x_train, y_train, epochs=100, lr=1e-3, seed=args.seed)
    print(f"dense accuracy {accuracy(model, x_test, y_test):.4f}")
    reached = prune_gradually(model, x_train, y_train, sparsity=args.sparsity, seed=args.seed,
                              report=lambda s: print(f"{s}: accuracy "
                                                     f"{accuracy(model, x_test, y_test):.4f}"))
    print(f"final weight sparsity {reached:.4f}, test accuracy "
          f"{accuracy(model, x_test, y_test):.4f}")

    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(model, args.out / "digits_mlp.pt")
    np.save(args.out / "digits_test_x.npy", x_test)     # for `simulate --inputs`
    np.save(args.out / "digits_test_y.npy", y_test)


if __name__ == "__main__":
    main()
