"""Seeded random models, inputs and hardware options for the fuzz campaign.

Everything here is a pure function of ``(seed, index)``: model ``index`` of campaign ``seed``
is the same on every machine, so a failure is reproducible from the two numbers alone (and
written out as files, :mod:`compiler.fuzz.campaign`). Only what the frontend supports is
generated (``compiler/frontend/handlers.py``): ``nn.Sequential`` chains of Linear, Conv2d,
BatchNorm1d/2d (folded), ReLU, Max/AvgPool2d (stride = kernel), Flatten, Dropout, Identity.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn

from hw.options import BANKS, MEMORY_STYLES, PIPELINES, POINTER_STYLES, WEIGHT_STORES

__all__ = ["FuzzModel", "generate_model", "make_inputs", "INPUT_KINDS", "PES_CHOICES",
           "LARGE_PES"]

#: PE counts drawn from: odd and prime ones included, mostly up to 16, which keeps the Verilog
#: quick to simulate; one model in about sixteen gets one of LARGE_PES (EIE ran 64 PEs; the
#: build accepts up to compiler.build.MAX_PES, the fit check refuses what the board cannot hold).
PES_CHOICES = (1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 16)
LARGE_PES = (25, 31, 32, 49, 64)

#: Kinds of input vectors, cycled through a model's cases.
INPUT_KINDS = ("random", "zero", "saturating", "far", "negative", "sparse")

#: Sparsities drawn from (the share of weights set to zero).
_SPARSITIES = (0.0, 0.2, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999)
_SPARSITY_ODDS = (0.1, 0.1, 0.15, 0.15, 0.15, 0.15, 0.1, 0.05, 0.05)
#: Layer sizes: small ones often, odd and prime ones, and a few hundred now and then.
_SIZES = (1, 2, 3, 5, 7, 8, 10, 11, 13, 16, 17, 23, 31, 32, 37, 47, 64, 97)
_LARGE_SIZES = (127, 131, 199, 256, 300)


@dataclass
class FuzzModel:
    """One generated model with its calibration data, inputs and build options."""
    index: int
    seed: int
    module: nn.Module
    input_shape: tuple            # (features,) or (C, H, W)
    calibration: np.ndarray       # float32 [N, *input_shape]
    inputs: np.ndarray            # float32 [cases, *input_shape]
    input_kinds: list             # one of INPUT_KINDS per input
    options: dict                 # BuildConfig fields: pes, memory, pipeline, ...
    features: dict = field(default_factory=dict)   # what was drawn, for the summary

    @property
    def name(self) -> str:
        return f"model_{self.index:05d}"


def _size(rng, features: dict) -> int:
    size = int(rng.choice(_LARGE_SIZES if rng.random() < 0.08 else _SIZES))
    return min(size, features.get("max_size") or size)


def _sparsify(weight: torch.Tensor, rng, features: dict) -> None:
    """Zero a random share of ``weight`` in place, sometimes whole rows, columns or all of it,
    and sometimes plant one outlier."""
    w = weight.detach().numpy()
    sparsity = float(rng.choice(_SPARSITIES, p=_SPARSITY_ODDS))
    w[rng.random(w.shape) < sparsity] = 0.0
    flat = w.reshape(w.shape[0], -1)
    if rng.random() < 0.2 and flat.shape[0] > 1:
        flat[rng.integers(0, flat.shape[0], max(1, flat.shape[0] // 4))] = 0.0
        features["zero_rows"] = features.get("zero_rows", 0) + 1
    if rng.random() < 0.2 and flat.shape[1] > 1:
        flat[:, rng.integers(0, flat.shape[1], max(1, flat.shape[1] // 4))] = 0.0
        features["zero_cols"] = features.get("zero_cols", 0) + 1
    if rng.random() < 0.04:
        flat[:] = 0.0
        features["zero_layers"] = features.get("zero_layers", 0) + 1
    if rng.random() < 0.08:
        flat.flat[rng.integers(0, flat.size)] = float(rng.choice([30.0, -200.0, 1e4]))
        features["outliers"] = features.get("outliers", 0) + 1
    bits = features.get("share_bits")
    if bits and (w != 0).any():            # weight-shared, as prune --weight-bits leaves it
        peak = float(np.abs(w).max())
        levels = features["share_rng"].uniform(-peak, peak, 2 ** bits - 1)
        levels[levels == 0] = peak / 2
        nz = w != 0
        w[nz] = levels[np.abs(w[nz][:, None] - levels).argmin(axis=1)]
        features["shared"] = features.get("shared", 0) + 1
    features.setdefault("sparsities", []).append(round(float((w == 0).mean()), 4))


def _bias(layer: nn.Module, rng) -> None:
    """Random, zero, all negative, or large biases."""
    if layer.bias is None:
        return
    kind = rng.choice(["random", "zero", "negative", "large"], p=[0.5, 0.2, 0.2, 0.1])
    b = layer.bias.detach().numpy()
    if kind == "zero":
        b[:] = 0.0
    elif kind == "negative":
        b[:] = -np.abs(b) - 0.05
    elif kind == "large":
        b *= 20.0


def _batchnorm(cls, n: int, rng) -> nn.Module:
    bn = cls(n).eval()
    with torch.no_grad():
        bn.running_mean.copy_(torch.from_numpy(rng.normal(0, 0.5, n)))
        bn.running_var.copy_(torch.from_numpy(rng.uniform(0.2, 3.0, n)))
        bn.weight.copy_(torch.from_numpy(rng.normal(1, 0.5, n)))
        bn.bias.copy_(torch.from_numpy(rng.normal(0, 0.3, n)))
    return bn


def _linear_chain(rng, features: dict, fan_in: int) -> list:
    depth = int(rng.integers(1, 5))
    layers = []
    for m in range(depth):
        fan_out = _size(rng, features)
        if m == 0 and rng.random() < 0.1:
            layers.append(_batchnorm(nn.BatchNorm1d, fan_in, rng))     # folded into the next
        linear = nn.Linear(fan_in, fan_out, bias=bool(rng.random() < 0.9))
        with torch.no_grad():
            _sparsify(linear.weight, rng, features)
            _bias(linear, rng)
        layers.append(linear)
        if rng.random() < 0.15:
            layers.append(_batchnorm(nn.BatchNorm1d, fan_out, rng))
        if m < depth - 1 or rng.random() < 0.3:
            layers.append(nn.ReLU())
        if rng.random() < 0.1:
            layers.append(nn.Dropout(0.5) if rng.random() < 0.5 else nn.Identity())
        fan_in = fan_out
    features["sizes"] = features.get("sizes", []) + [int(l.out_features) for l in layers
                                                    if isinstance(l, nn.Linear)]
    return layers


def _cnn(rng, features: dict) -> tuple[list, tuple]:
    channels, hw = int(rng.integers(1, 4)), int(rng.integers(4, 13))
    shape = (channels, hw, hw)
    out_channels = int(rng.choice([1, 2, 3, 4, 5, 7, 8]))
    k = int(rng.integers(1, min(4, hw) + 1))
    stride, padding = int(rng.integers(1, 3)), int(rng.integers(0, 2))
    conv = nn.Conv2d(channels, out_channels, k, stride=stride, padding=padding,
                     bias=bool(rng.random() < 0.9))
    with torch.no_grad():
        _sparsify(conv.weight, rng, features)
        _bias(conv, rng)
    layers: list = [conv]
    side = (hw + 2 * padding - k) // stride + 1
    if rng.random() < 0.3:
        layers.append(_batchnorm(nn.BatchNorm2d, out_channels, rng))
    pool = None
    if side >= 2 and rng.random() < 0.6:
        size = int(rng.integers(2, min(3, side) + 1))
        pool = (nn.MaxPool2d if rng.random() < 0.5 else nn.AvgPool2d)(size)
        features["pool"] = type(pool).__name__
        side //= size
    relu_first = rng.random() < 0.5
    layers += [nn.ReLU(), pool] if relu_first else [pool, nn.ReLU()]
    layers = [layer for layer in layers if layer is not None]
    layers.append(nn.Flatten())
    features["conv"] = {"in": list(shape), "out_channels": out_channels, "kernel": k,
                        "stride": stride, "padding": padding}
    return layers + _linear_chain(rng, features, out_channels * side * side), shape


def _options(rng) -> dict:
    options = {"pes": int(rng.choice(PES_CHOICES)),
               "memory": str(rng.choice(MEMORY_STYLES)),
               "pipeline": str(rng.choice(PIPELINES)),
               "pointers": str(rng.choice(POINTER_STYLES)),
               "weights": str(rng.choice(WEIGHT_STORES, p=[0.8, 0.2])),
               "banks": int(rng.choice(BANKS[:2]))}
    if rng.random() < 0.2:
        options["fifo_depth"] = int(rng.choice([4, 8, 32]))
    if rng.random() < 0.06:                 # now and then an array of EIE's size
        options["pes"] = int(rng.choice(LARGE_PES))
    return options


def make_inputs(rng, shape: tuple, cases: int, calibration: np.ndarray
                ) -> tuple[np.ndarray, list]:
    """``cases`` inputs of the kinds in INPUT_KINDS, in turn: random like the calibration
    data, all zero, saturating (far beyond the calibration range, both signs), far outside it
    in one direction, all negative, and sparse."""
    peak = float(np.abs(calibration).max()) or 1.0
    kinds = [INPUT_KINDS[i % len(INPUT_KINDS)] for i in range(cases)]
    x = np.empty((cases, *shape), dtype=np.float32)
    for i, kind in enumerate(kinds):
        r = rng.standard_normal(shape)
        if kind == "zero":
            r = np.zeros(shape)
        elif kind == "saturating":
            r = np.sign(r) * peak * rng.uniform(2, 50)
        elif kind == "far":
            r = r * peak * rng.uniform(5, 100)
        elif kind == "negative":
            r = -np.abs(r)
        elif kind == "sparse":
            r = np.where(rng.random(shape) < 0.1, r, 0.0)
        x[i] = r
    return x, kinds


def generate_model(seed: int, index: int, *, cases: int, calibration: int = 64,
                   max_size: int | None = None) -> FuzzModel:
    """Model ``index`` of campaign ``seed``, with ``cases`` inputs; ``max_size``: cap on every
    layer's width (None: up to a few hundred)."""
    rng = np.random.default_rng([seed, index])
    torch.manual_seed(int(rng.integers(0, 2 ** 31)))
    features: dict = {"max_size": max_size}
    # every layer weight-shared (a codebook build), drawn from a stream of its own so that the
    # other models of a seed stay what they were
    side = np.random.default_rng([seed, index, 1])
    if side.random() < 0.15:
        features["share_bits"], features["share_rng"] = int(side.integers(2, 7)), side
    if rng.random() < 0.3:
        features["kind"] = "cnn"
        layers, shape = _cnn(rng, features)
    else:
        features["kind"] = "mlp"
        fan_in = _size(rng, features)
        layers, shape = _linear_chain(rng, features, fan_in), (fan_in,)
    module = nn.Sequential(*layers).eval()
    features.pop("share_rng", None)        # not part of the record (nor JSON)
    cal = rng.standard_normal((calibration, *shape)).astype(np.float32)
    if rng.random() < 0.3:
        cal = np.abs(cal)                    # nonnegative, like images
    inputs, kinds = make_inputs(rng, shape, cases, cal)
    return FuzzModel(index=index, seed=seed, module=module, input_shape=shape,
                     calibration=cal, inputs=inputs, input_kinds=kinds,
                     options=_options(rng), features=features)
