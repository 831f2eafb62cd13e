"""Quantization the model brings: a QONNX or ONNX QDQ graph's own scales become the layers'
integer parameters, instead of our calibration (:mod:`.quantize`).

What maps exactly onto the array's arithmetic (:mod:`compiler.reference`):

- weights: signed, zero point 0, at most 8 bits, no -128 (narrow range, or a trained model
  that never reaches it); one float scale per tensor or per output channel;
- activations: zero point 0, one float scale per tensor, rounding half to even
  (``QuantizeLinear``, QONNX ``ROUND``), and the array's range: signed 8-bit ``[-128, 127]``
  for the input and layers without ReLU, ``[0, 127]`` after a ReLU (a signed 8-bit quantizer,
  or an unsigned 7-bit one);
- biases: float, divided by ``in_scale * weight_scale`` (exact when the graph quantized them
  on that grid, as Brevitas' ``Int32Bias`` and ONNX QDQ's int32 biases do);
- requantization: ``in_scale * weight_scale / out_scale`` as a 15-bit multiplier and a
  shift, ties to even. Exact when the scales are powers of two (Brevitas' ``...FixedPoint``
  quantizers, FINN's flow); otherwise within the multiplier's 2**-15 relative error, and an
  output can differ by one step where the model's value lies that close to a rounding edge
  (:func:`agreement` measures how often; ``build`` warns).

Anything else (a nonzero zero point, more than 8 bits, asymmetric or per-channel activation
scales, other rounding modes, average pooling) is refused naming the node; ``--requantize``
ignores the model's scales, keeps its (dequantized) weights, and calibrates as for a float
model.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from core.arith import WEIGHT_MAX
from core.ir import Model, Quantization

from .. import reference
from .quantize import QuantizationError, _activation_scale, _layer_forward, quantize_multipliers

__all__ = ["quantize_imported", "agreement"]

_FALLBACK = ("; build with --requantize to ignore the model's quantization (its weights are "
             "kept, dequantized) and calibrate as for a float model")


def _refuse(model: Model, what: str):
    raise QuantizationError(f"model {model.name!r}: {what}{_FALLBACK}")


def _weight_integers(model, layer, wq) -> tuple[np.ndarray, np.ndarray]:
    """The layer's weights as integers, and its weight scale per output channel."""
    if wq is None:
        _refuse(model, f"layer {layer.name!r} has float weights in a quantized graph (no "
                       f"Quant/DequantizeLinear on them)")
    if np.any(wq.zero_point != 0):
        _refuse(model, f"{wq.node} quantizes the weights of layer {layer.name!r} with zero "
                       f"point {wq.zero_point.reshape(-1)[0]:g}; the array's weights are "
                       f"symmetric (zero point 0)")
    if wq.bits > 8 or wq.lo < -128:
        _refuse(model, f"{wq.node} quantizes the weights of layer {layer.name!r} to "
                       f"{wq.bits} bits; the array's weights have at most 8")
    if wq.lo >= 0:
        _refuse(model, f"{wq.node}: unsigned weights for layer {layer.name!r}; the array's "
                       f"weights are signed with zero point 0")
    scale = wq.scale.reshape(-1)
    if scale.size not in (1, layer.channels) or not (np.isfinite(scale) & (scale > 0)).all():
        _refuse(model, f"{wq.node}: weight scales of shape {list(wq.scale.shape)} for layer "
                       f"{layer.name!r} with {layer.channels} output channels")
    scale = np.broadcast_to(scale, (layer.channels,)).astype(np.float64)
    w = layer.weight.astype(np.float64).reshape(layer.channels, -1) / scale[:, None]
    w_int = np.rint(w)
    if np.abs(w - w_int).max(initial=0) > 1e-3:
        _refuse(model, f"{wq.node}: the weights of layer {layer.name!r} are not integer "
                       f"multiples of their scales (a per-channel scale along the input axis, "
                       f"or an operation between the quantizer and the layer)")
    if np.abs(w_int).max(initial=0) > WEIGHT_MAX:
        _refuse(model, f"{wq.node}: layer {layer.name!r} uses the weight -128; the array's "
                       f"weights are -127..127 (quantize with narrow=1 / narrow range)")
    return w_int.astype(np.int8).reshape(layer.weight.shape), scale


def _activation_scale_of(model, aq, where: str, relu: bool) -> float:
    """The scale of an activation quantizer the array can apply exactly."""
    if np.any(aq.zero_point != 0):
        _refuse(model, f"{aq.node} quantizes {where} with zero point "
                       f"{aq.zero_point.reshape(-1)[0]:g}; the array's activations have zero "
                       f"point 0")
    if aq.per_channel:
        _refuse(model, f"{aq.node} quantizes {where} per channel; the array takes one scale "
                       f"per activation tensor")
    if aq.rounding != "HALF_EVEN":
        _refuse(model, f"{aq.node} rounds {where} with rounding_mode {aq.rounding}; the "
                       f"array rounds half to even (ROUND) here")
    lo, hi = (max(aq.lo, 0), aq.hi) if relu else (aq.lo, aq.hi)
    want = (0, 127) if relu else (-128, 127)
    if (lo, hi) != want:
        _refuse(model, f"{aq.node} quantizes {where} to [{aq.lo}, {aq.hi}] ({aq.bits} bits); "
                       f"the array's activations are [{want[0]}, {want[1]}] there "
                       f"({'signed 8-bit or unsigned 7-bit' if relu else 'signed 8-bit'})")
    scale = float(aq.scale.reshape(-1)[0])
    if not np.isfinite(scale) or scale <= 0:
        _refuse(model, f"{aq.node}: activation scale {scale}")
    return scale


def quantize_imported(model: Model, graph, calibration: np.ndarray | None = None
                      ) -> tuple[Model, list[str]]:
    """``model`` (float IR, weights dequantized) quantized with the graph's own quantizers
    (:class:`compiler.frontend.quantizers.GraphQuantization`). Returns the quantized model
    and one line per approximation (none when the mapping is exact). ``calibration`` sets
    the output scale of a last layer the graph leaves unquantized (float logits)."""
    layers, notes = model.layers, []
    if len(graph.weights) != len(layers):
        _refuse(model, f"the graph's {len(graph.weights)} weighted layers became "
                       f"{len(layers)} layers (BatchNormalization folded into a quantized "
                       f"layer?)")
    if 0 not in graph.activations:
        _refuse(model, "the graph's input is not quantized (no Quant/QuantizeLinear on it)")
    scale_in = _activation_scale_of(model, graph.activations[0], "the graph's input", False)
    x = None if calibration is None else np.asarray(calibration, np.float64).reshape(
        len(calibration), -1)
    out = []
    for i, layer in enumerate(layers):
        if layer.pool is not None and layer.pool.kind == "avg":
            _refuse(model, f"layer {layer.name!r} is followed by an average pool, which the "
                           f"graph computes in float between its quantizers")
        w_int, w_scale = _weight_integers(model, layer, graph.weights[i])
        if x is not None:
            before_pool, x = _layer_forward(layer, x)
        aq = graph.activations.get(i + 1)
        if aq is not None:
            scale_out = _activation_scale_of(model, aq, f"the output of layer {layer.name!r}",
                                             layer.relu)
        elif i == len(layers) - 1 and x is not None:
            scale_out = _activation_scale(before_pool)
            notes.append(f"layer {layer.name!r}: the graph leaves its output in float; its "
                         f"int8 output scale ({scale_out:g}) is calibrated")
        else:
            _refuse(model, f"the output of layer {layer.name!r} is not quantized in the graph")
        acc_scale = scale_in * w_scale
        bias = layer.bias.astype(np.float64) / acc_scale
        bias_int = np.rint(bias)
        if np.abs(bias - bias_int).max(initial=0) > 1e-3:
            notes.append(f"layer {layer.name!r}: its float bias is not on the accumulator's "
                         f"grid (input scale x weight scale); rounded to it, which can move an "
                         f"output by one step")
        if (np.abs(bias_int) >= 2 ** 31).any():
            _refuse(model, f"layer {layer.name!r}: a bias does not fit int32 at the model's "
                           f"scales")
        real = acc_scale / scale_out
        mults, shift = quantize_multipliers(real)
        error = np.abs(mults * 2.0 ** -shift - real) / real
        if error.max(initial=0) > 0:
            notes.append(f"layer {layer.name!r}: requantization scale {real.max():.6g} (input "
                         f"x weight / output scale) is not a 15-bit fixed-point number; "
                         f"approximated within {error.max():.2g} relative, so an output may "
                         f"differ from the model's by one step near a rounding edge")
        q = Quantization(weight=w_int, bias=bias_int.astype(np.int64), multiplier=mults,
                         shift=np.full(layer.channels, shift, dtype=np.int64),
                         weight_scale=w_scale, in_scale=scale_in, out_scale=scale_out,
                         half_even=True)
        out.append(dataclasses.replace(layer, quant=q))
        scale_in = scale_out
    return dataclasses.replace(model, layers=tuple(out)).verify(), notes


def agreement(module, quantized: Model, x: np.ndarray) -> dict:
    """How often the quantized IR's integer outputs equal the graph's own (its fake-quant
    outputs divided by its output scale), on float inputs ``x``."""
    import torch

    x = np.asarray(x, np.float32)
    with torch.no_grad():
        y = module(torch.from_numpy(x.reshape(len(x), *quantized.input_shape)))
    model_int = np.rint(y.double().numpy().reshape(len(x), -1) / quantized.output_scale)
    ours = reference.run_dense(quantized, reference.quantize_input(
        x.reshape(len(x), -1), quantized.input_scale))
    diff = np.abs(ours - model_int)
    return {"inputs": int(len(x)), "equal_outputs": float((diff == 0).mean()),
            "equal_inferences": float((diff == 0).all(axis=1).mean()),
            "max_difference": int(diff.max(initial=0))}
