"""Per-layer-type handlers: a torch module becomes a list of simple ops, which
:func:`compiler.frontend.to_ir` folds into IR layers.

Handlers are looked up by class name, which works for eager modules and for TorchScript
modules (``original_name``) alike. This is the one table of layer handlers: the graph formats
(:mod:`.exported` for ``torch.export`` programs, :mod:`.onnx_graph` for ONNX) read a node's
tensors and attributes into an :class:`Attrs` record shaped like the torch module and call the
same handler, so every format gets the same checks and the same ops.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import torch

from core.errors import FrontendError

__all__ = ["Op", "Attrs", "HANDLERS", "SUPPORTED", "type_name", "module_ops"]


@dataclass
class Op:
    kind: str        # "linear" | "conv" | "pool" | "relu" | "affine" | "affine2d" | "flatten" | "noop"
    name: str                   # qualified module name
    type: str                   # torch class name, for messages
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None
    scale: np.ndarray | None = None   # affine: y = x * scale + shift (per feature / channel)
    shift: np.ndarray | None = None
    stride: tuple | None = None       # conv, pool
    padding: tuple | None = None      # conv
    size: tuple | None = None         # pool window
    pool: str | None = None           # "max" | "avg"


class Attrs(SimpleNamespace):
    """A graph node's layer, as the attributes of the torch module its handler reads.

    ``handler`` names the :data:`HANDLERS` entry (a torch class name), ``op_type`` the node's
    own operator (``aten.conv2d``, ``Conv``), for messages; tensors are torch tensors.
    """

    def __init__(self, handler: str, op_type: str, **attrs):
        super().__init__(handler=handler, op_type=op_type, **attrs)


def type_name(module) -> str:
    if isinstance(module, Attrs):
        return module.op_type
    if isinstance(module, torch.jit.ScriptModule):
        return module.original_name
    return type(module).__name__


def _tensor(module, name, attr) -> np.ndarray:
    """A parameter as float64, with torch.nn.utils.prune masks folded in."""
    orig, mask = getattr(module, f"{attr}_orig", None), getattr(module, f"{attr}_mask", None)
    value = orig * mask if orig is not None and mask is not None else getattr(module, attr)
    array = value.detach().cpu().double().numpy()
    if not np.isfinite(array).all():
        raise FrontendError(f"layer {name!r} ({type_name(module)}) has NaN or Inf in its "
                            f"{attr}; fix or retrain the model before building")
    return array


def _linear(module, name):
    weight = _tensor(module, name, "weight")
    bias = _tensor(module, name, "bias") if getattr(module, "bias", None) is not None \
        else np.zeros(weight.shape[0])
    return [Op("linear", name, type_name(module), weight=weight, bias=bias)]


def _pair(value) -> tuple[int, int]:
    return tuple(value) if isinstance(value, (tuple, list)) else (int(value), int(value))


def _conv2d(module, name):
    def refuse(what):
        return FrontendError(f"layer {name!r} ({type_name(module)}) uses {what}; supported: "
                             f"groups=1, "
                             f"dilation=1, zero padding given as numbers")
    if getattr(module, "groups", 1) != 1:
        raise refuse(f"groups={module.groups}")
    if _pair(getattr(module, "dilation", 1)) != (1, 1):
        raise refuse(f"dilation={module.dilation}")
    if getattr(module, "padding_mode", "zeros") != "zeros":
        raise refuse(f"padding_mode={module.padding_mode!r}")
    if isinstance(module.padding, str):
        raise refuse(f"padding={module.padding!r}")
    weight = _tensor(module, name, "weight")
    bias = _tensor(module, name, "bias") if getattr(module, "bias", None) is not None \
        else np.zeros(weight.shape[0])
    return [Op("conv", name, type_name(module), weight=weight, bias=bias,
               stride=_pair(module.stride),
               padding=_pair(module.padding))]


def _pool(kind):
    def handler(module, name):
        cls = type_name(module)
        size = _pair(module.kernel_size)
        stride = _pair(module.stride if module.stride is not None else module.kernel_size)
        problems = []
        if stride != size:
            problems.append(f"stride {stride} != kernel {size}")
        if _pair(module.padding) != (0, 0):
            problems.append(f"padding={module.padding}")
        if getattr(module, "ceil_mode", False):
            problems.append("ceil_mode=True")
        if kind == "max" and _pair(getattr(module, "dilation", 1)) != (1, 1):
            problems.append(f"dilation={module.dilation}")
        if kind == "avg" and getattr(module, "divisor_override", None) is not None:
            problems.append("divisor_override")
        if problems:
            raise FrontendError(f"layer {name!r} ({cls}) uses {', '.join(problems)}; supported: "
                                f"non-overlapping windows (stride = kernel), no padding, floor "
                                f"mode")
        return [Op("pool", name, cls, size=size, stride=stride, pool=kind)]
    return handler


def _batchnorm2d(module, name):
    (op,) = _batchnorm1d(module, name)
    op.kind = "affine2d"
    return [op]


def _batchnorm1d(module, name):
    cls = type_name(module)
    mean, var = getattr(module, "running_mean", None), getattr(module, "running_var", None)
    if mean is None or var is None:
        raise FrontendError(f"layer {name!r} ({cls}) has no running statistics "
                            f"(track_running_stats=False); it cannot be folded for inference")
    mean = mean.detach().double().numpy()
    var = var.detach().double().numpy()
    gamma = _tensor(module, name, "weight") if getattr(module, "weight", None) is not None \
        else np.ones_like(mean)
    beta = _tensor(module, name, "bias") if getattr(module, "bias", None) is not None \
        else np.zeros_like(mean)
    scale = gamma / np.sqrt(var + float(module.eps))
    if not np.isfinite(scale).all():
        raise FrontendError(f"layer {name!r} ({cls}) has NaN or Inf statistics")
    return [Op("affine", name, cls, scale=scale, shift=beta - mean * scale)]


def _simple(kind):
    def handler(module, name):
        return [Op(kind, name, type_name(module))]
    return handler


HANDLERS = {
    "Linear": _linear,
    "Conv2d": _conv2d,
    "MaxPool2d": _pool("max"),
    "AvgPool2d": _pool("avg"),
    "BatchNorm2d": _batchnorm2d,
    "ReLU": _simple("relu"),
    "BatchNorm1d": _batchnorm1d,
    "Flatten": _simple("flatten"),
    "Dropout": _simple("noop"),
    "Identity": _simple("noop"),
}
SUPPORTED = sorted([*HANDLERS, "Sequential"])


def _unsupported(name, module):
    return FrontendError(f"unsupported layer {name or '<model>'!r} ({type_name(module)}); "
                         f"supported: {', '.join(SUPPORTED)}")


def module_ops(module, name: str = "") -> list[Op]:
    """The ops ``module`` applies, in order."""
    if isinstance(module, Attrs):
        return HANDLERS[module.handler](module, name)
    kind = type_name(module)
    if kind in HANDLERS:
        return HANDLERS[kind](module, name)
    children = list(module.named_children())
    if kind == "Sequential" or (isinstance(module, torch.jit.ScriptModule) and children):
        # A scripted custom module: children in order, checked numerically afterwards.
        return [op for child_name, child in children
                for op in module_ops(child, f"{name}.{child_name}" if name else child_name)]
    if isinstance(module, torch.nn.Module) and children:
        return _traced_ops(module, name)
    raise _unsupported(name, module)


_FUNCTIONS = {"relu": "relu", "flatten": "flatten", "dropout": "noop"}
_METHODS = {"relu": "relu", "flatten": "flatten", "view": "flatten", "reshape": "flatten"}


def _traced_ops(module, name) -> list[Op]:
    """A custom module's forward, followed with torch.fx when it is a plain chain of layers."""
    try:
        graph = torch.fx.symbolic_trace(module).graph
    except Exception as e:
        raise FrontendError(f"model {name or type(module).__name__!r}: its forward() cannot be "
                            f"traced ({str(e).splitlines()[0][:120]}); save an nn.Sequential "
                            f"of supported layers") from None
    ops, previous = [], None
    for node in graph.nodes:
        if node.op == "placeholder":
            if previous is not None:
                raise FrontendError(f"model {type(module).__name__!r} takes several inputs; "
                                    f"only one input vector is supported")
            previous = node
            continue
        if node.op == "output":
            break
        if not node.args or node.args[0] is not previous:
            raise FrontendError(f"model {type(module).__name__!r}: forward() is not a plain "
                                f"chain of layers (at {node.name!r}); branches and skip "
                                f"connections are not supported")
        previous = node
        if node.op == "call_module":
            sub = module.get_submodule(node.target)
            ops += module_ops(sub, f"{name}.{node.target}" if name else node.target)
        elif node.op == "call_function" and getattr(node.target, "__name__", "") in _FUNCTIONS:
            kind = _FUNCTIONS[node.target.__name__]
            ops.append(Op(kind, node.name, node.target.__name__))
        elif node.op == "call_method" and node.target in _METHODS:
            ops.append(Op(_METHODS[node.target], node.name, node.target))
        else:
            target = getattr(node.target, "__name__", str(node.target))
            raise FrontendError(f"unsupported operation {target!r} in {type(module).__name__}."
                                f"forward(); supported: {', '.join(SUPPORTED)}")
    return ops
