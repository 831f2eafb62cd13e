"""Post-training quantization: int8 weights per output channel, int8 activations calibrated on
sample inputs, int32 biases, and a fixed-point multiplier and shift per output row.

The integer arithmetic these parameters drive is defined in :mod:`compiler.reference`.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from core.errors import SparsemacError
from core.arith import ACT_MAX, MULTIPLIER_BITS, SHIFT_MAX, WEIGHT_MAX
from core.ir import Layer, Model, Quantization

__all__ = ["quantize", "shared_weights", "SHARED_VALUES", "quantize_multiplier", "quantize_multipliers", "float_forward",
           "QuantizationError", "quantization_warnings", "LOSS_SHARE"]


class QuantizationError(SparsemacError):
    pass


def _layer_forward(layer: Layer, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(values before pooling, layer output) in float64, flattened."""
    y = x @ layer.matrix().T + layer.bias[layer.row_channel()]
    if layer.relu:
        y = np.maximum(y, 0.0)
    if layer.pool is None:
        return y, y
    windows = y.reshape(len(y), layer.out_features, layer.group)
    out = windows.max(axis=2) if layer.pool.kind == "max" else windows.mean(axis=2)
    if layer.pool.relu_after:
        out = np.maximum(out, 0.0)
    return y, out


def float_forward(model: Model, x: np.ndarray) -> list[np.ndarray]:
    """Float activations of every layer (input first, flattened), as PyTorch computes them."""
    acts = [np.asarray(x, dtype=np.float64).reshape(len(x), -1)]
    for layer in model.layers:
        acts.append(_layer_forward(layer, acts[-1])[1])
    return acts


def quantize_multiplier(real: float) -> tuple[int, int]:
    """``real ≈ multiplier * 2**-shift`` with ``2**(B-1) <= multiplier < 2**B``, B =
    MULTIPLIER_BITS. Too small to represent: (0, 1), which requantizes everything to 0."""
    if not math.isfinite(real) or real < 0:
        raise QuantizationError(f"requantization scale {real} is not a finite positive number")
    if real == 0:
        return 0, 1
    exponent = math.floor(math.log2(real))
    shift = MULTIPLIER_BITS - 1 - exponent
    multiplier = round(real * 2.0 ** shift)
    if multiplier == 2 ** MULTIPLIER_BITS:
        multiplier //= 2
        shift -= 1
    if shift > SHIFT_MAX:
        return 0, 1
    if shift < 1:
        raise QuantizationError(f"requantization scale {real:g} is too large (layer outputs are "
                                f"far smaller than its inputs); recalibrate on other data")
    return multiplier, shift


def quantize_multipliers(reals) -> tuple[np.ndarray, int]:
    """Per-channel multipliers sharing one shift: ``reals[k] ≈ multipliers[k] * 2**-shift``.

    The shift is set by the largest scale (full precision there); smaller scales keep fewer
    significant bits. One shift per layer lets the hardware shift by a constant per layer
    instead of a per-row barrel shifter, the slowest path of the requantizer."""
    reals = np.asarray(reals, dtype=np.float64)
    if not np.isfinite(reals).all() or (reals < 0).any():
        raise QuantizationError(f"requantization scales {reals} are not finite positive numbers")
    top, shift = quantize_multiplier(float(reals.max(initial=0.0)))
    if top == 0:
        return np.zeros(len(reals), dtype=np.int64), shift
    mults = np.minimum(np.rint(reals * 2.0 ** shift), 2 ** MULTIPLIER_BITS - 1)
    return mults.astype(np.int64), shift


def _activation_scale(values: np.ndarray) -> float:
    peak = float(np.max(np.abs(values))) if values.size else 0.0
    return peak / ACT_MAX if peak > 0 else 1.0


#: A layer counts as weight-shared when its nonzero weights take at most this many distinct
#: values and fewer values than weights (a trained layer has as many values as weights; a
#: clustered one, a few).
SHARED_VALUES = 128


def shared_weights(weight: np.ndarray, limit: int = SHARED_VALUES) -> bool:
    """Whether ``weight``'s nonzero values come from a small codebook (weight sharing)."""
    nonzero = weight[weight != 0]
    distinct = len(np.unique(nonzero))
    return 0 < distinct <= limit and len(nonzero) > distinct


def _weight_scales(layer: Layer, w: np.ndarray, shared: bool) -> np.ndarray:
    """Per output channel, the float value of one int8 step: the channel's peak / 127, or for
    a weight-shared layer one scale, the layer's peak / 127, for every channel (so that its few
    float values stay few int8 values, and a codebook the pruner snapped to multiples of that
    step quantizes exactly)."""
    peak = np.abs(w).max(axis=1)
    nonzero = peak > 0
    if shared and nonzero.any():
        return np.full(len(peak), peak.max() / WEIGHT_MAX)
    return np.where(nonzero, peak / WEIGHT_MAX, peak.max() / WEIGHT_MAX if nonzero.any()
                    else 1.0)


def quantize(model: Model, calibration: np.ndarray, *, weight_sharing: bool = False) -> Model:
    """Quantize ``model`` with activation ranges measured on ``calibration`` (float [N, ...],
    flattened to [N, in_features]). ``weight_sharing``: a layer whose weights come from a
    small codebook (:func:`shared_weights`) gets one weight scale for all its channels."""
    x = np.asarray(calibration, dtype=np.float64).reshape(len(calibration), -1)
    scales = [_activation_scale(x)]
    for layer in model.layers:
        before_pool, x = _layer_forward(layer, x)
        # the requantizer writes the values before pooling: their range sets the scale
        scales.append(_activation_scale(before_pool))
    layers = []
    for i, layer in enumerate(model.layers):
        in_scale, out_scale = scales[i], scales[i + 1]
        w = layer.weight.astype(np.float64).reshape(layer.channels, -1)
        w_scale = _weight_scales(layer, w, weight_sharing and shared_weights(w))
        w_q = np.clip(np.rint(w / w_scale[:, None]), -WEIGHT_MAX, WEIGHT_MAX).astype(np.int8)
        w_q = w_q.reshape(layer.weight.shape)
        bias_q = np.rint(layer.bias.astype(np.float64) / (in_scale * w_scale))
        if (np.abs(bias_q) >= 2 ** 31).any():
            row = int(np.argmax(np.abs(bias_q)))
            raise QuantizationError(
                f"layer {layer.name!r}: bias of row {row} does not fit int32 after quantization "
                f"({layer.bias[row]:g} at scale {in_scale * w_scale[row]:g}); the bias dwarfs the "
                f"weights - check the model or calibrate on representative inputs")
        mults, shift = quantize_multipliers(in_scale * w_scale / out_scale)
        pool_m, pool_s = quantize_multiplier(1.0 / layer.group) if layer.pool else (0, 1)
        q = Quantization(
            weight=w_q, bias=bias_q.astype(np.int64),
            multiplier=mults, shift=np.full(layer.channels, shift, dtype=np.int64),
            weight_scale=w_scale, in_scale=in_scale, out_scale=out_scale,
            pool_multiplier=pool_m, pool_shift=pool_s)
        layers.append(dataclasses.replace(layer, quant=q))
    return dataclasses.replace(model, layers=tuple(layers)).verify()


#: A layer "loses the model" when more than this share of its nonzero weights (in the rows
#: where it happens), or of its nonzero calibration activations, quantize to zero.
LOSS_SHARE = 0.5


def quantization_warnings(model: Model, quantized: Model, calibration: np.ndarray) -> list[str]:
    """One line per layer whose quantization loses the model: a row whose largest weight (an
    outlier) sets a scale at which most of its other nonzero weights round to 0, or calibration
    activations whose peak sets a scale at which most of the nonzero ones round to 0. Such a
    build still computes exactly what the reference does; it just no longer computes what the
    float model does."""
    warnings = []
    acts = float_forward(model, np.asarray(calibration).reshape(len(calibration), -1))
    for m, (layer, q) in enumerate(zip(model.layers, quantized.layers)):
        w = layer.weight.astype(np.float64).reshape(layer.channels, -1)
        wq = q.quant.weight.reshape(layer.channels, -1)
        nonzero = (w != 0).sum(axis=1)
        lost = ((w != 0) & (wq == 0)).sum(axis=1)
        crushed = (nonzero >= 2) & (lost > LOSS_SHARE * nonzero)
        if crushed.any():
            row = int(np.argmax(np.where(crushed, np.abs(w).max(axis=1), -1)))
            warnings.append(
                f"layer {layer.name!r}: in {int(crushed.sum())} of {layer.channels} output "
                f"channels most nonzero weights quantize to 0 ({int(lost[crushed].sum())} of "
                f"{int(nonzero[crushed].sum())}); an outlier weight (channel {row}: "
                f"{w[row, np.argmax(np.abs(w[row]))]:g}) sets their int8 scale - clip it or "
                f"prune it")
        before_pool = _layer_forward(layer, acts[m])[0]
        live = before_pool != 0
        if live.sum() >= 8:
            quantized_zero = np.abs(before_pool) < 0.5 * q.quant.out_scale
            share = float((live & quantized_zero).sum() / live.sum())
            if share > LOSS_SHARE:
                peak = float(np.abs(before_pool).max())
                typical = float(np.median(np.abs(before_pool[live])))
                warnings.append(
                    f"layer {layer.name!r}: {100 * share:.0f} % of its nonzero calibration "
                    f"outputs quantize to 0 (peak {peak:g} against a typical {typical:g} sets "
                    f"the int8 scale {q.quant.out_scale:g}); an outlier weight or input - clip "
                    f"it, or calibrate on representative inputs")
    return warnings
