"""Small models and data sets shared by the pruning tests (not a test module)."""

from __future__ import annotations

import copy
import functools

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from compiler.prune.data import PruneData

__all__ = ["blobs", "mlp", "train", "digits_data", "digits_mlp", "write_npz", "run_main"]


def blobs(n: int = 240, features: int = 12, classes: int = 3, seed: int = 0) -> PruneData:
    """Gaussian blobs: easy, so a pruned tiny model still classifies them."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 2.0, (classes, features))
    y = np.arange(n) % classes
    x = (centers[y] + rng.normal(0, 1.0, (n, features))).astype(np.float32)
    cut = int(0.75 * n)
    return PruneData(x[:cut], y[:cut].astype(np.int64), x[cut:], y[cut:].astype(np.int64),
                     "blobs", "blobs held out")


def mlp(features: int = 12, hidden=(24, 16), classes: int = 3, *, seed: int = 0,
        batchnorm: bool = False) -> nn.Sequential:
    torch.manual_seed(seed)
    layers, width = [], features
    for h in hidden:
        layers += [nn.Linear(width, h)]
        if batchnorm:
            layers += [nn.BatchNorm1d(h)]
        layers += [nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, classes))
    return nn.Sequential(*layers)


def train(model: nn.Module, data: PruneData, epochs: int = 30, seed: int = 0) -> nn.Module:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)        # tiny matrices: one thread is the fastest, and stable
    try:
        return _train(model, data, epochs, seed)
    finally:
        torch.set_num_threads(threads)


def _train(model, data, epochs, seed):
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(32):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def digits_data() -> PruneData:
    from compiler.prune.data import load_data
    return load_data("digits")


def digits_mlp(hidden=(32, 16), epochs: int = 20) -> nn.Sequential:
    """A small dense MLP trained on digits (64 inputs, 10 classes); a fresh copy each call."""
    return copy.deepcopy(_digits_mlp(tuple(hidden), epochs))


@functools.lru_cache(maxsize=4)
def _digits_mlp(hidden, epochs):
    return train(mlp(64, hidden, 10), digits_data(), epochs=epochs)


def write_npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def run_main(capsys, *argv):
    """``compiler.cli.main(argv)`` in process: (exit status, stdout, stderr); argparse exits
    count too."""
    from compiler.cli import main

    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err
