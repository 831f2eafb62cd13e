"""Training and gradual magnitude pruning shared by the bundled examples' scripts.

Plain torch.nn.utils.prune: global L1 magnitude over every Linear/Conv2d weight, Zhu & Gupta's
cubic schedule, fine-tuning after each step, masks made permanent at the end.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.utils.prune as prune

__all__ = ["train", "accuracy", "prune_gradually", "example_arguments", "train_and_prune"]

HERE = Path(__file__).resolve().parent


def train(model, x, y, *, epochs, lr, seed):
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


def prune_gradually(model, x, y, *, sparsity, steps=10, epochs=20, final_epochs=60, seed=0,
                    report=print) -> float:
    """Prune ``model`` to ``sparsity`` of its weights; returns the sparsity reached."""
    params = [(m, "weight") for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    total = sum(m.weight.numel() for m, _ in params)
    # Zhu & Gupta's cubic schedule: prune fast while there is slack, slowly near the target.
    for t in range(1, steps + 1):
        step = sparsity * (1 - (1 - t / steps) ** 3)
        done = sum(int((m.weight == 0).sum()) for m, _ in params)
        amount = int(round(step * total)) - done
        prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=amount)
        train(model, x, y, epochs=epochs, lr=5e-4, seed=seed)
        report(f"sparsity {step:.2f}")
    train(model, x, y, epochs=final_epochs, lr=2e-4, seed=seed)
    for m, name in params:
        prune.remove(m, name)
    return sum(int((m.weight == 0).sum()) for m, _ in params) / total


def example_arguments(description: str, sparsity: float, argv=None) -> argparse.Namespace:
    """The example scripts' command line: ``--sparsity``, ``--out`` (default: examples/),
    ``--seed``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--sparsity", type=float, default=sparsity)
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def train_and_prune(model, x_train, y_train, x_test, y_test, *, epochs, lr, sparsity, seed):
    """Train ``model`` densely, then prune it gradually to ``sparsity``, printing the test
    accuracy after each phase."""
    train(model, x_train, y_train, epochs=epochs, lr=lr, seed=seed)
    print(f"dense accuracy {accuracy(model, x_test, y_test):.4f}")
    reached = prune_gradually(model, x_train, y_train, sparsity=sparsity, seed=seed,
                              report=lambda s: print(f"{s}: accuracy "
                                                     f"{accuracy(model, x_test, y_test):.4f}"))
    print(f"final weight sparsity {reached:.4f}, test accuracy "
          f"{accuracy(model, x_test, y_test):.4f}")
