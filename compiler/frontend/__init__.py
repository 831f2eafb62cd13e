"""Frontend: a model file becomes the float IR.

Loading is safe by default (see :mod:`.loader`). Every format becomes the same list of ops
through one table of per-layer handlers (:mod:`.handlers`): torch modules directly,
``torch.export`` programs (:mod:`.exported`) and ONNX graphs (:mod:`.onnx_graph`) by reading
each node as the torch layer it stands for. BatchNorm folds into the Linear/Conv2d next to
it, ReLU and pooling fuse into the layer before them, Dropout/Identity/Flatten vanish. The
result is checked numerically against the model itself (the torch module, the exported
program, the ONNX graph run by ``onnx.reference``), so a forward() that does something else
is caught, not compiled.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from core.errors import FrontendError
from core.ir import Conv2dShape, Layer, LayerKind, Model, Pool
from ..passes.quantize import float_forward
from .exported import ATEN_LAYERS, exported_ops, fixed_batch, is_exported
from .handlers import SUPPORTED, Op, module_ops
from .loader import SAFE_CLASSES, load_module
from .onnx_graph import ONNX_LAYERS, OnnxModel, onnx_ops

__all__ = ["load_model", "to_ir", "first_layer", "model_ops", "load_module", "SUPPORTED",
           "ATEN_LAYERS", "ONNX_LAYERS", "SAFE_CLASSES"]


def load_model(path, *, trust_pickle: bool = False, name: str | None = None,
               input_shape: tuple | None = None) -> Model:
    """Load ``path`` (torch.export, ONNX, torch.save or TorchScript) into the float IR.
    ``input_shape`` (C, H, W) is needed when the model starts with a convolution."""
    module = load_module(path, trust_pickle=trust_pickle)
    return to_ir(module, name or Path(path).stem, input_shape=input_shape)


def first_layer(module) -> Op:
    """The first Linear or Conv2d of ``module`` (what its input must look like)."""
    for op in model_ops(module):
        if op.kind in ("linear", "conv"):
            return op
    raise FrontendError(f"model has no Linear or Conv2d layer; supported: "
                        f"{', '.join(SUPPORTED)}")


def model_ops(module) -> list[Op]:
    """The ops of whatever :func:`load_module` returned, in order."""
    if isinstance(module, OnnxModel):
        return onnx_ops(module)
    if is_exported(module):
        return exported_ops(module)
    return module_ops(module)


def to_ir(module, name: str = "model", *, input_shape: tuple | None = None) -> Model:
    if not is_exported(module):        # an exported program is in eval mode already
        module.eval()
    ops = model_ops(module)
    layers = _Folder(input_shape).fold(ops)
    if not layers:
        raise FrontendError(f"model {name!r} has no Linear or Conv2d layer; supported: "
                            f"{', '.join(SUPPORTED)}")
    shape = tuple(input_shape) if layers[0].conv else (layers[0].in_features,)
    model = Model(name=name, layers=tuple(layers), input_shape=shape)
    try:
        model.verify()
    except ValueError as e:
        raise FrontendError(f"model {name!r}: {e}") from None
    quantization = getattr(module, "quantization", None)
    if quantization is None or not quantization.present:
        # a quantized graph is checked in integers instead, against its own fake-quant
        # outputs (compiler.passes.imported.agreement)
        _check_against_torch(module, model)
    return model


class _Folder:
    """Walks the ops with the activation shape, folding them into IR layers."""

    def __init__(self, input_shape):
        self.shape = tuple(input_shape) if input_shape is not None else None
        self.layers: list[Layer] = []
        self.pending = None       # a BatchNorm1d waiting for the next Linear
        self.last = None          # the last op that changed values: linear/conv/pool/relu

    def fold(self, ops: list[Op]) -> list[Layer]:
        for op in ops:
            getattr(self, f"_{op.kind}")(op)
        if self.pending is not None:
            raise FrontendError("a BatchNorm at the end of the model has no Linear layer to "
                                "fold into; remove it or move it before a Linear layer")
        return self.layers

    def _noop(self, op):
        pass

    def _flatten(self, op):
        if self.shape is not None:
            self.shape = (int(np.prod(self.shape)),)

    def _linear(self, op):
        weight, bias = op.weight, op.bias
        if self.shape is not None and len(self.shape) != 1:
            raise FrontendError(f"layer {op.name!r} ({op.type}) gets a {len(self.shape)}-d "
                                f"feature map {list(self.shape)}; put an nn.Flatten before it")
        if self.shape is not None and self.shape[0] != weight.shape[1]:
            raise FrontendError(f"layer {op.name!r} ({op.type}) takes {weight.shape[1]} features "
                                f"but gets {self.shape[0]}")
        if self.pending is not None:
            scale, shift = self.pending
            bias = bias + weight @ shift
            weight = weight * scale[None, :]
            self.pending = None
        self.layers.append(_layer(op.name, LayerKind.LINEAR, weight, bias, relu=False))
        self.shape = (weight.shape[0],)
        self.last = "linear"

    def _conv(self, op):
        channels = op.weight.shape[1]
        if self.shape is None:
            raise FrontendError(f"layer {op.name!r} ({op.type}) needs the input's height and "
                                f"width: give --calibration (and --inputs) of shape "
                                f"[N, {channels}, H, W]")
        if len(self.shape) != 3 or self.shape[0] != channels:
            raise FrontendError(f"layer {op.name!r} ({op.type}) takes [N, {channels}, H, W] but "
                                f"gets [N, {', '.join(map(str, self.shape))}]")
        if self.pending is not None:
            raise FrontendError(f"a BatchNorm1d before {op.name!r} ({op.type}) cannot be folded")
        conv = Conv2dShape(in_channels=channels, out_channels=op.weight.shape[0],
                           kernel=op.weight.shape[2:], stride=op.stride, padding=op.padding,
                           in_hw=self.shape[1:])
        if min(conv.out_hw) < 1:
            raise FrontendError(f"layer {op.name!r} ({op.type}): kernel {conv.kernel} does not "
                                f"fit its {conv.in_hw} input with padding {conv.padding}")
        self.layers.append(_layer(op.name, LayerKind.CONV2D, op.weight, op.bias, relu=False,
                                  conv=conv))
        self.shape = (conv.out_channels, *conv.out_hw)
        self.last = "conv"

    def _pool(self, op):
        prev = self.layers[-1] if self.layers else None
        if prev is None or prev.conv is None or prev.pool is not None \
                or self.last not in ("conv", "relu") or len(self.shape) != 3:
            raise FrontendError(f"layer {op.name!r} ({op.type}) must follow a Conv2d (and its "
                                f"ReLU/BatchNorm2d); other placements are not supported")
        pool = Pool(kind=op.pool, size=op.size, in_hw=self.shape[1:])
        if min(pool.out_hw) < 1:
            raise FrontendError(f"layer {op.name!r} ({op.type}): window {op.size} is larger "
                                f"than its {pool.in_hw} input")
        self.layers[-1] = dataclasses.replace(prev, pool=pool,
                                              out_features=prev.channels * pool.out_hw[0]
                                              * pool.out_hw[1])
        self.shape = (prev.channels, *pool.out_hw)
        self.last = "pool"

    def _affine(self, op):
        if self.last == "linear":
            prev = self.layers[-1]
            if len(op.scale) != prev.out_features:
                raise FrontendError(f"layer {op.name!r} ({op.type}) has {len(op.scale)} "
                                    f"features but {prev.name!r} produces {prev.out_features}")
            self.layers[-1] = _layer(prev.name, prev.kind, prev.weight * op.scale[:, None],
                                     prev.bias * op.scale + op.shift, relu=False)
        elif self.shape is not None and len(self.shape) != 1:
            raise FrontendError(f"layer {op.name!r} ({op.type}) gets a feature map; use "
                                f"BatchNorm2d after a Conv2d")
        elif self.pending is None:
            self.pending = (op.scale, op.shift)
        else:
            scale, shift = self.pending
            self.pending = (scale * op.scale, shift * op.scale + op.shift)

    def _affine2d(self, op):
        prev = self.layers[-1] if self.layers else None
        if self.last != "conv":
            raise FrontendError(f"layer {op.name!r} (BatchNorm2d) must directly follow a Conv2d "
                                f"to be folded into it")
        if len(op.scale) != prev.channels:
            raise FrontendError(f"layer {op.name!r} (BatchNorm2d) has {len(op.scale)} channels "
                                f"but {prev.name!r} produces {prev.channels}")
        self.layers[-1] = _layer(prev.name, prev.kind,
                                 prev.weight * op.scale[:, None, None, None],
                                 prev.bias * op.scale + op.shift, relu=False, conv=prev.conv)

    def _relu(self, op):
        if self.last not in ("linear", "conv", "pool", "relu"):
            raise FrontendError(f"layer {op.name!r} ({op.type}) does not follow a Linear or "
                                f"Conv2d layer; only ReLU fused after a layer is supported")
        prev = self.layers[-1]
        if self.last == "pool" and prev.pool.kind == "avg" and not prev.relu:
            # ReLU after an average differs from the average after ReLU: keep the order
            self.layers[-1] = dataclasses.replace(
                prev, pool=dataclasses.replace(prev.pool, relu_after=True))
        else:                     # max pooling and ReLU commute
            self.layers[-1] = dataclasses.replace(prev, relu=True)
        self.last = "relu" if self.last != "pool" else "pool"


def _layer(name, kind, weight, bias, relu, conv=None) -> Layer:
    weight = np.asarray(weight, dtype=np.float64)
    bias = np.asarray(bias, dtype=np.float64)
    if not (np.isfinite(weight).all() and np.isfinite(bias).all()):
        raise FrontendError(f"layer {name!r} has NaN or Inf weights after folding BatchNorm; "
                            f"fix the model's statistics")
    if conv is None and kind is LayerKind.CONV2D:
        raise AssertionError("a convolution needs its geometry")
    out = weight.shape[0] if conv is None else conv.out_channels * conv.out_hw[0] \
        * conv.out_hw[1]
    inputs = weight.shape[1] if conv is None else conv.in_channels * conv.in_hw[0] \
        * conv.in_hw[1]
    return Layer(name=name, kind=kind, in_features=inputs, out_features=out,
                 weight=weight.astype(np.float32), bias=bias.astype(np.float32), relu=relu,
                 conv=conv)


def _check_against_torch(module, model: Model):
    """The IR must compute what the torch module computes (float against float)."""
    # a program exported for a fixed batch (often 1) runs that many rows at a time
    step = fixed_batch(module) if is_exported(module) else None
    if isinstance(module, OnnxModel):
        step = module.batch
    step = step or 8
    rng = np.random.default_rng(0)
    x = rng.standard_normal((-(-8 // step) * step, *model.input_shape)).astype(np.float32)
    try:
        with torch.no_grad():
            expected = torch.cat([module(torch.from_numpy(x[i:i + step]))
                                  for i in range(0, len(x), step)])
            expected = expected.double().numpy().reshape(len(x), -1)
    except Exception as e:
        raise FrontendError(f"model {model.name!r} does not run on an input of shape "
                            f"[N, {', '.join(map(str, model.input_shape))}] "
                            f"({str(e).splitlines()[0][:160]})") from None
    got = float_forward(model, x)[-1]
    if expected.shape != got.shape or not np.allclose(got, expected, rtol=1e-3,
                                                      atol=1e-4 * (1 + np.abs(expected).max())):
        raise FrontendError(f"model {model.name!r}: its forward() does not compute its layers "
                            f"in order (outputs differ from the compiled layers); save an "
                            f"nn.Sequential of supported layers")
