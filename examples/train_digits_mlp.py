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
import torch.nn.utils.prune as prune
from compiler.datasets import digits_split

HERE = Path(__file__).resolve().parent


def _train(model, x, y, epochs, lr, seed):
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(xt), generator=gen).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    model.eval()


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


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
    _train(model, x_train, y_train, epochs=100, lr=1e-3, seed=args.seed)
    print(f"dense accuracy {accuracy(model, x_test, y_test):.4f}")

    params = [(layer, "weight") for layer in model if isinstance(layer, nn.Linear)]
    total = sum(layer.weight.numel() for layer, _ in params)
    # Zhu & Gupta's cubic schedule: prune fast while there is slack, slowly near the target.
    for t in range(1, 11):
        step = args.sparsity * (1 - (1 - t / 10) ** 3)
        done = sum(int((layer.weight == 0).sum()) for layer, _ in params)
        amount = int(round(step * total)) - done
        prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=amount)
        _train(model, x_train, y_train, epochs=20, lr=5e-4, seed=args.seed)
        print(f"sparsity {step:.2f}: accuracy {accuracy(model, x_test, y_test):.4f}")
    _train(model, x_train, y_train, epochs=60, lr=2e-4, seed=args.seed)
    for layer, name in params:
        prune.remove(layer, name)
    zeros = sum(int((layer.weight == 0).sum()) for layer, _ in params)
    print(f"final weight sparsity {zeros / total:.4f}, test accuracy "
          f"{accuracy(model, x_test, y_test):.4f}")

    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(model, args.out / "digits_mlp.pt")
    np.save(args.out / "digits_test_x.npy", x_test)     # for `simulate --inputs`
    np.save(args.out / "digits_test_y.npy", y_test)


if __name__ == "__main__":
    main()
