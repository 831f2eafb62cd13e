"""``torch.export`` programs: the ATen graph of an exported module becomes the frontend's ops.

The graph is walked node by node. A node computed from parameters and constants only (a prune
mask ``weight_orig * weight_mask``, the ``permute`` of a weight before ``addmm``) is evaluated
here, so masks and transposes fold into the weights; every other node must take the previous
one's activation and be one of :data:`ATEN_LAYERS`, which names the torch layer whose handler
(:data:`.handlers.HANDLERS`) reads it. Both the graph ``torch.export.export`` gives and its
``run_decompositions()`` core-ATen form are understood.
"""

from __future__ import annotations

import operator
from functools import reduce

import torch

from core.errors import FrontendError
from .handlers import Attrs, Op, module_ops

__all__ = ["ATEN_LAYERS", "is_exported", "exported_ops", "fixed_batch"]


def _arg(node_args, kwargs, index, name, default):
    if name in kwargs:
        return kwargs[name]
    return node_args[index] if index < len(node_args) else default


def _linear(a, kw):
    return "Linear", dict(weight=a[1], bias=_arg(a, kw, 2, "bias", None))


def _addmm(a, kw):
    if _arg(a, kw, 3, "beta", 1) != 1 or _arg(a, kw, 4, "alpha", 1) != 1:
        raise ValueError("beta/alpha other than 1")
    return "Linear", dict(weight=a[2].T, bias=a[0])


def _mm(a, kw):
    if a[1].dim() != 2:
        raise ValueError(f"a {a[1].dim()}-d right-hand operand")
    return "Linear", dict(weight=a[1].T, bias=None)


def _conv2d(a, kw):
    return "Conv2d", dict(weight=a[1], bias=_arg(a, kw, 2, "bias", None),
                          stride=_arg(a, kw, 3, "stride", 1), padding=_arg(a, kw, 4, "padding", 0),
                          dilation=_arg(a, kw, 5, "dilation", 1),
                          groups=_arg(a, kw, 6, "groups", 1))


def _convolution(a, kw):
    if a[6] or any(a[7]):
        raise ValueError("a transposed convolution")
    if a[1].dim() != 4:
        raise ValueError(f"a {a[1].dim() - 2}-d convolution")
    return "Conv2d", dict(weight=a[1], bias=a[2], stride=a[3], padding=a[4], dilation=a[5],
                          groups=a[8])


def _max_pool(a, kw):
    kernel = _arg(a, kw, 1, "kernel_size", None)
    return "MaxPool2d", dict(kernel_size=kernel, stride=_arg(a, kw, 2, "stride", None) or None,
                             padding=_arg(a, kw, 3, "padding", 0),
                             dilation=_arg(a, kw, 4, "dilation", 1),
                             ceil_mode=_arg(a, kw, 5, "ceil_mode", False))


def _avg_pool(a, kw):
    return "AvgPool2d", dict(kernel_size=a[1], stride=_arg(a, kw, 2, "stride", None) or None,
                             padding=_arg(a, kw, 3, "padding", 0),
                             ceil_mode=_arg(a, kw, 4, "ceil_mode", False),
                             divisor_override=_arg(a, kw, 6, "divisor_override", None))


def _batch_norm(weight, bias, mean, var, eps, rank):
    return ("BatchNorm2d" if rank == 4 else "BatchNorm1d",
            dict(weight=weight, bias=bias, running_mean=mean, running_var=var, eps=eps))


def _aten_batch_norm(a, kw, rank):
    if _arg(a, kw, 5, "training", False):
        raise ValueError("training mode; export the model after model.eval()")
    return _batch_norm(a[1], a[2], a[3], a[4], _arg(a, kw, 7, "eps", 1e-5), rank)


def _bn_no_training(a, kw, rank):
    return _batch_norm(a[1], a[2], a[3], a[4], _arg(a, kw, 6, "eps", 1e-5), rank)


def _dropout(a, kw):
    if _arg(a, kw, 2, "train", False):
        raise ValueError("training mode; export the model after model.eval()")
    return "Dropout", {}


def _simple(handler):
    return lambda a, kw: (handler, {})


#: ATen operator -> how to read it as a torch layer (its handler's name and attributes).
ATEN_LAYERS = {
    "aten.linear": _linear, "aten.addmm": _addmm, "aten.mm": _mm, "aten.matmul": _mm,
    "aten.conv2d": _conv2d, "aten.convolution": _convolution,
    "aten.max_pool2d": _max_pool, "aten.max_pool2d_with_indices": _max_pool,
    "aten.avg_pool2d": _avg_pool,
    "aten.relu": _simple("ReLU"), "aten.relu_": _simple("ReLU"),
    "aten.flatten": _simple("Flatten"), "aten.view": _simple("Flatten"),
    "aten.reshape": _simple("Flatten"), "aten._unsafe_view": _simple("Flatten"),
    "aten.batch_norm": _aten_batch_norm,
    "aten._native_batch_norm_legit_no_training": _bn_no_training,
    "aten.dropout": _dropout, "aten.feature_dropout": _dropout,
    "aten.clone": _simple("Identity"), "aten.alias": _simple("Identity"),
    "aten.detach": _simple("Identity"), "aten.contiguous": _simple("Identity"),
    "aten.add": None,     # a bias after mm/matmul: merged into the layer before
}
_RESHAPES = {"Flatten"}
_NEEDS_RANK = {_aten_batch_norm, _bn_no_training}
#: Ops whose result is a tuple whose element 0 is the activation.
_TUPLES = {"aten.max_pool2d_with_indices", "aten._native_batch_norm_legit_no_training"}


def _supported() -> str:
    return ", ".join(sorted(ATEN_LAYERS))


def _op_name(target) -> str:
    """``aten.conv2d`` for ``torch.ops.aten.conv2d.default``."""
    if isinstance(target, torch._ops.OpOverload):
        return f"{target.namespace}.{target._schema.name.split('::')[-1]}"
    return getattr(target, "__name__", str(target))


def is_exported(module) -> bool:
    """Whether ``module`` is the ``.module()`` of an ``ExportedProgram`` (an ATen graph)."""
    return isinstance(module, torch.fx.GraphModule) and any(
        node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload)
        for node in module.graph.nodes)


def fixed_batch(module) -> int | None:
    """The batch size an exported graph was specialised to, or None when it is dynamic."""
    for node in module.graph.nodes:
        if node.op == "placeholder":
            value = node.meta.get("val")
            if value is not None and value.dim() and isinstance(value.shape[0], int):
                return int(value.shape[0])
    return None


def _layer_path(node) -> str:
    """The module path that produced ``node`` (``features.0``), else the node's own name."""
    stack = node.meta.get("nn_module_stack") or {}
    if stack:
        path = list(stack.values())[-1][0]
        if path and not path.startswith("_"):   # "_empty_nn_module_stack...": top level
            return path
    return node.name


def _shape(node):
    value = node.meta.get("val")
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


def exported_ops(module) -> list[Op]:
    """The ops of an exported program's graph module, in order."""
    model = "exported program"
    constants: dict = {}
    ops: list[Op] = []
    activation = None          # the node that holds the activation
    tuple_of = None            # the tuple-valued node whose element 0 is the activation
    seen_input = False

    def value(arg):
        if isinstance(arg, torch.fx.Node):
            if arg not in constants:
                raise _chain_error(arg)
            return constants[arg]
        if isinstance(arg, (list, tuple)):
            return type(arg)(value(a) for a in arg)
        return arg

    def _chain_error(node):
        return FrontendError(f"the exported graph is not a plain chain of "
                             f"layers (at node {node.name!r}, {_op_name(node.target)}); branches "
                             f"and skip connections are not supported")

    for node in module.graph.nodes:
        if node.op == "get_attr":
            constants[node] = reduce(getattr, node.target.split("."), module)
            continue
        if node.op == "placeholder":
            if seen_input:
                raise FrontendError(f"the {model} takes several inputs; only one input "
                                    f"tensor is supported")
            seen_input, activation = True, node
            continue
        if node.op == "output":
            (result,) = node.args
            result = result[0] if isinstance(result, (tuple, list)) and len(result) == 1 \
                else result
            if result is not activation:
                raise FrontendError("the exported graph's output is not its "
                                    "last layer's (several outputs or a branch)")
            break
        if not node.users:     # _guards_fn, _assert_tensor_metadata, ...: checks, no values
            continue
        if isinstance(node.meta.get("val"), (torch.SymInt, int)):
            constants[node] = node.meta["val"]    # x.size(0) in x.view(x.size(0), -1)
            continue
        inputs = [a for a in node.all_input_nodes if a not in constants]
        if not inputs:         # parameters only: prune masks, transposes, dtype casts
            constants[node] = node.target(*value(node.args), **value(node.kwargs))
            continue
        if inputs != [activation] and not (tuple_of is not None and inputs == [tuple_of]):
            raise _chain_error(node)
        if node.target is operator.getitem:
            if inputs != [tuple_of] or node.args[1] != 0:
                raise _chain_error(node)
            activation, tuple_of = node, None
            continue
        if tuple_of is not None:
            raise _chain_error(node)
        ops += _node_ops(node, model, value, constants, ops)
        if _op_name(node.target) in _TUPLES:
            tuple_of = node
        else:
            activation = node
    return ops


def _node_ops(node, model, value, constants, ops) -> list[Op]:
    name = _op_name(node.target)
    path = _layer_path(node)
    if name not in ATEN_LAYERS or node.op != "call_function":
        where = f" (module {path!r})" if path != node.name else ""
        raise FrontendError(f"unsupported operator {name!r} at node {node.name!r}{where} of "
                            f"the {model}; supported: {_supported()}")
    args = [None if isinstance(a, torch.fx.Node) and a not in constants else value(a)
            for a in node.args]     # None: the activation
    kwargs = value(dict(node.kwargs))
    if name == "aten.add":
        return _bias_add(node, path, args, kwargs, ops)
    reader = ATEN_LAYERS[name]
    try:
        if reader in _NEEDS_RANK:
            handler, attrs = reader(args, kwargs, len(_shape(node.args[0]) or ()))
        else:
            handler, attrs = reader(args, kwargs)
    except ValueError as e:
        raise FrontendError(f"layer {path!r} ({name} at node {node.name!r}) uses {e}; "
                            f"supported: {_supported()}") from None
    if handler in _RESHAPES:
        before, after = _shape(node.args[0]), _shape(node)
        if before is not None and after is not None:
            if before == after:
                return []
            if len(after) != 2 or after[0] != before[0]:
                raise FrontendError(f"layer {path!r} ({name} at node {node.name!r}) reshapes "
                                    f"{list(before)} to {list(after)}; only flattening to "
                                    f"[N, features] is supported")
    return module_ops(Attrs(handler, name, **attrs), path)


def _bias_add(node, path, args, kwargs, ops) -> list[Op]:
    """``mm(x, w) + b``: the bias joins the Linear before, if that Linear has none yet."""
    bias = args[1] if args[0] is None else args[0]
    alpha = kwargs.get("alpha", 1)
    prev = ops[-1] if ops else None
    if not isinstance(bias, torch.Tensor) or alpha != 1 or prev is None \
            or prev.kind != "linear" or prev.bias.any() or bias.numel() != len(prev.bias):
        raise FrontendError(f"unsupported operator 'aten.add' at node {node.name!r} (in "
                            f"{path!r}); only a bias added right after a matrix product is "
                            f"supported; supported: {_supported()}")
    prev.bias = prev.bias + bias.detach().double().reshape(-1).numpy()
    return []
