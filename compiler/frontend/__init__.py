"""Frontend: a model file becomes the float IR.

Loading is safe by default (see :mod:`.loader`); layers go through per-type handlers
(:mod:`.handlers`); BatchNorm folds into the Linear next to it, ReLU fuses into the Linear
before it, Dropout/Identity/Flatten vanish. The result is checked numerically against the
torch module itself, so a forward() that does something else is caught, not compiled.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import FrontendError
from ..ir import Layer, LayerKind, Model
from ..passes.quantize import float_forward
from .handlers import SUPPORTED, Op, module_ops
from .loader import SAFE_CLASSES, load_module

__all__ = ["load_model", "to_ir", "load_module", "SUPPORTED", "SAFE_CLASSES"]


def load_model(path, *, trust_pickle: bool = False, name: str | None = None) -> Model:
    """Load ``path`` (torch.save or TorchScript) into the float IR."""
    module = load_module(path, trust_pickle=trust_pickle)
    return to_ir(module, name or Path(path).stem)


def to_ir(module, name: str = "model") -> Model:
    module.eval()
    ops = module_ops(module)
    layers = _fold(ops)
    if not layers:
        raise FrontendError(f"model {name!r} has no Linear layer; supported: "
                            f"{', '.join(SUPPORTED)}")
    model = Model(name=name, layers=tuple(layers))
    try:
        model.verify()
    except ValueError as e:
        raise FrontendError(f"model {name!r}: {e}") from None
    _check_against_torch(module, model)
    return model


def _fold(ops: list[Op]) -> list[Layer]:
    layers: list[Layer] = []
    pending = None              # an affine op waiting for the next Linear
    last = None                 # kind of the last op that changes values
    for op in ops:
        if op.kind in ("noop", "flatten"):
            continue
        if op.kind == "linear":
            weight, bias = op.weight, op.bias
            if pending is not None:
                scale, shift = pending
                if len(scale) != weight.shape[1]:
                    raise FrontendError(f"layer {op.name!r} takes {weight.shape[1]} features "
                                        f"but the BatchNorm before it has {len(scale)}")
                bias = bias + weight @ shift
                weight = weight * scale[None, :]
                pending = None
            layers.append(_layer(op.name, weight, bias, relu=False))
        elif op.kind == "affine":
            if last == "linear":
                prev = layers[-1]
                if len(op.scale) != prev.out_features:
                    raise FrontendError(f"layer {op.name!r} ({op.type}) has {len(op.scale)} "
                                        f"features but {prev.name!r} produces "
                                        f"{prev.out_features}")
                layers[-1] = _layer(prev.name, prev.weight * op.scale[:, None],
                                    prev.bias * op.scale + op.shift, relu=False)
            elif pending is None:
                pending = (op.scale, op.shift)
            else:
                pending = (pending[0] * op.scale, pending[1] * op.scale + op.shift)
        elif op.kind == "relu":
            if last not in ("linear", "relu"):
                raise FrontendError(f"layer {op.name!r} ({op.type}) does not follow a Linear "
                                    f"layer; only ReLU fused after Linear (and BatchNorm) is "
                                    f"supported")
            prev = layers[-1]
            layers[-1] = _layer(prev.name, prev.weight, prev.bias, relu=True)
        last = op.kind if op.kind != "affine" or last != "linear" else "linear"
    if pending is not None:
        raise FrontendError("a BatchNorm at the end of the model has no Linear layer to fold "
                            "into; remove it or move it before a Linear layer")
    return layers


def _layer(name, weight, bias, relu) -> Layer:
    weight = np.asarray(weight, dtype=np.float64)
    bias = np.asarray(bias, dtype=np.float64)
    if not (np.isfinite(weight).all() and np.isfinite(bias).all()):
        raise FrontendError(f"layer {name!r} has NaN or Inf weights after folding BatchNorm; "
                            f"fix the model's statistics")
    return Layer(name=name, kind=LayerKind.LINEAR, in_features=weight.shape[1],
                 out_features=weight.shape[0], weight=weight.astype(np.float32),
                 bias=bias.astype(np.float32), relu=relu)


def _check_against_torch(module, model: Model):
    """The IR must compute what the torch module computes (float against float)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, model.in_features)).astype(np.float32)
    try:
        with torch.no_grad():
            expected = module(torch.from_numpy(x)).double().numpy()
    except Exception as e:
        raise FrontendError(f"model {model.name!r} does not run on an input of shape "
                            f"[N, {model.in_features}] ({str(e).splitlines()[0][:160]}); only "
                            f"models taking a feature vector are supported") from None
    got = float_forward(model, x)[-1]
    if expected.shape != got.shape or not np.allclose(got, expected, rtol=1e-3,
                                                      atol=1e-4 * (1 + np.abs(expected).max())):
        raise FrontendError(f"model {model.name!r}: its forward() does not compute its layers "
                            f"in order (outputs differ from the compiled layers); save an "
                            f"nn.Sequential of supported layers")
