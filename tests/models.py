"""Model factories for the tests: float IR models with controlled sparsity patterns, and torch
modules for the frontend; and the Amaranth-simulator check the accelerator tests share."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from core.ir import Layer, LayerKind, Model


def float_model(shapes, *, sparsity=0.8, seed=0, relu_last=False, zero_rows=(), zero_cols=(),
                name="test") -> Model:
    """An MLP with ``shapes`` = [in, h1, ..., out], uniform random sparsity, ReLU between layers.

    ``zero_rows`` / ``zero_cols``: (layer, index) pairs forced to all-zero.
    """
    rng = np.random.default_rng(seed)
    layers = []
    for m, (fan_in, fan_out) in enumerate(zip(shapes, shapes[1:])):
        w = rng.standard_normal((fan_out, fan_in)) / np.sqrt(fan_in)
        w[rng.random(w.shape) < sparsity] = 0.0
        for layer, row in zero_rows:
            if layer == m:
                w[row, :] = 0.0
        for layer, col in zero_cols:
            if layer == m:
                w[:, col] = 0.0
        b = rng.standard_normal(fan_out) * 0.1
        last = m == len(shapes) - 2
        layers.append(Layer(name=f"fc{m}", kind=LayerKind.LINEAR, in_features=fan_in,
                            out_features=fan_out, weight=w.astype(np.float32),
                            bias=b.astype(np.float32), relu=relu_last or not last))
    return Model(name=name, layers=tuple(layers)).verify()


def calibration(features, n=64, *, seed=1, nonneg=False, density=0.6) -> np.ndarray:
    """Random real inputs, about ``density`` of them nonzero."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, features))
    if nonneg:
        x = np.abs(x)
    x[rng.random(x.shape) > density] = 0.0
    return x.astype(np.float32)


def torch_mlp(shapes, *, seed=0, sparsity=0.5) -> nn.Sequential:
    torch.manual_seed(seed)
    layers = []
    for m, (a, b) in enumerate(zip(shapes, shapes[1:])):
        linear = nn.Linear(a, b)
        with torch.no_grad():
            linear.weight[torch.rand_like(linear.weight) < sparsity] = 0.0
        layers.append(linear)
        if m < len(shapes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers).eval()


def sparsify_(module: nn.Module, sparsity: float, seed: int = 0) -> nn.Module:
    """Zero a random share of every Linear/Conv2d weight, in place."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                m.weight[torch.rand(m.weight.shape, generator=gen) < sparsity] = 0.0
    return module.eval()


def images(shape, n=64, *, seed=1, density=0.6) -> np.ndarray:
    """Random nonnegative images [n, C, H, W], about ``density`` of the pixels nonzero."""
    rng = np.random.default_rng(seed)
    x = np.abs(rng.standard_normal((n, *shape)))
    x[rng.random(x.shape) > density] = 0.0
    return x.astype(np.float32)


def share_weights(model: Model, values: int, *, seed=0) -> Model:
    """``model`` with each layer's nonzero weights moved to the nearest of ``values`` distinct
    nonzero levels (a weight-shared model, as ``prune --weight-bits`` leaves it); the zeros
    stay zeros."""
    import dataclasses
    rng = np.random.default_rng(seed)
    layers = []
    for layer in model.layers:
        w = layer.weight.astype(np.float64)
        nz = w != 0
        peak = float(np.abs(w).max()) if nz.any() else 1.0
        levels = np.sort(rng.uniform(-peak, peak, values))
        levels[np.argmax(np.abs(levels))] = peak * np.sign(levels[np.argmax(np.abs(levels))])
        levels[levels == 0] = peak / 2
        nearest = levels[np.abs(w[..., None] - levels).argmin(axis=-1)]
        layers.append(dataclasses.replace(layer, weight=np.where(nz, nearest, 0.0)
                                          .astype(np.float32)))
    return dataclasses.replace(model, layers=tuple(layers)).verify()


def assert_accelerator_exact(program, x, options=None, **probabilities) -> np.ndarray:
    """Run integer inputs ``x`` through the whole array in Amaranth's simulator
    (:func:`hw.simulation.run_accelerator`, with ``probabilities``: ``ready_probability``,
    ``valid_probability``) and check it against the reference model: every output equal, and
    no inference in fewer cycles than the ideal. Returns the outputs."""
    from compiler import reference
    from hw.simulation import run_accelerator

    hw, cycles, _ = run_accelerator(program, x, options, **probabilities)
    expected = reference.run(program, x)
    assert np.array_equal(hw, expected.outputs)
    assert (cycles >= expected.ideal_cycles).all()
    return hw
