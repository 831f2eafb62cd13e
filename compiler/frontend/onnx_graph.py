"""ONNX models (opset >= 13): the graph's nodes become the frontend's ops.

Initializers and ``Constant`` nodes are tensors (their zeros, the model's sparsity, are kept as
they are); a node computed from tensors only (a ``Transpose`` of a weight, a mask ``Mul``) is
evaluated with ``onnx.reference``. Every other node must take the previous node's activation
and be one of :data:`ONNX_LAYERS`, which names the torch layer whose handler
(:data:`.handlers.HANDLERS`) reads it. :class:`OnnxModel` runs the graph with
``onnx.reference`` so that the compiled layers are checked against the model numerically, as
torch modules are. Quantizers (QONNX ``Quant``, ``QuantizeLinear``/``DequantizeLinear``) are
read by :mod:`.quantizers` into ``OnnxModel.quantization``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from google.protobuf.message import DecodeError
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator

from core.errors import FrontendError
from .handlers import Attrs, Op, module_ops
from .quantizers import (QONNX_DOMAINS, QUANT_OPS, REFERENCE_OPS, GraphQuantization, quant,
                         read_quantizer)

__all__ = ["ONNX_LAYERS", "OnnxModel", "load_onnx", "onnx_ops"]

#: The oldest opset whose operators (Dropout without ``ratio`` attribute, ...) are read here.
MIN_OPSET = 13


class OnnxModel:
    """A loaded ONNX model: the protobuf, and a callable that runs it (float in, float out)."""

    def __init__(self, proto: onnx.ModelProto, path: Path):
        self.proto, self.path = proto, path
        graph = proto.graph
        initializers = {t.name for t in graph.initializer}
        inputs = [i for i in graph.input if i.name not in initializers]
        if len(inputs) != 1 or len(graph.output) != 1:
            raise FrontendError(f"{path}: the ONNX graph has {len(inputs)} inputs and "
                                f"{len(graph.output)} outputs; one of each is supported")
        self.input = inputs[0].name
        dims = inputs[0].type.tensor_type.shape.dim
        self.batch = dims[0].dim_value if dims and dims[0].HasField("dim_value") else None
        self._evaluator = None
        self.quantization: GraphQuantization | None = None   # set by onnx_ops

    def eval(self):
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self._evaluator is None:
            self._evaluator = ReferenceEvaluator(_for_reference(self.proto),
                                                 new_ops=REFERENCE_OPS)
        x = x.detach().cpu().numpy().astype(np.float32)
        step = self.batch or len(x)       # a graph exported for batch 1 runs row by row
        out = [self._evaluator.run(None, {self.input: x[i:i + step]})[0]
               for i in range(0, len(x), step)]
        return torch.from_numpy(np.concatenate(out))


def _for_reference(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The model as ``onnx.reference`` should run it: its BatchNormalization before opset 14
    uses batch statistics whenever ``momentum`` is set (torch writes it), where the operator
    means inference with the running statistics. Opset 14 changes nothing else of the
    supported operators (Reshape's ``allowzero`` defaults to the old behaviour).
    ``onnx.reference`` implements QuantizeLinear/DequantizeLinear from opset 19 only, which
    computes the same for the integer types as opsets 13-18: a QDQ graph runs as opset 19."""
    version = {o.domain or "ai.onnx": o.version for o in proto.opset_import}.get("ai.onnx")
    ops = {n.op_type for n in proto.graph.node}
    if version < 19 and ops & {"QuantizeLinear", "DequantizeLinear"}:
        target = 19
    elif version == 13 and "BatchNormalization" in ops:
        target = 14
    else:
        return proto
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    for entry in copy.opset_import:
        if entry.domain in ("", "ai.onnx"):
            entry.version = target
    return copy


def load_onnx(path: Path) -> OnnxModel:
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, OSError, RuntimeError) as e:
        why = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise FrontendError(f"{path}: not a valid ONNX model ({why}); re-export it with "
                            f"torch.onnx.export") from None
    if not proto.graph.node:
        raise FrontendError(f"{path}: not a valid ONNX model (no graph nodes); re-export it")
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as e:
        raise FrontendError(f"{path}: invalid ONNX model ({str(e).strip().splitlines()[0]}"
                            f"); re-export it") from None
    opset = {o.domain or "ai.onnx": o.version for o in proto.opset_import}.get("ai.onnx", 0)
    if opset < MIN_OPSET:
        raise FrontendError(f"{path}: ONNX opset {opset}; opset >= {MIN_OPSET} is supported "
                            f"(torch.onnx.export(..., opset_version={MIN_OPSET}) or newer)")
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer):
        raise FrontendError(f"{path}: the ONNX model keeps its weights in external files; "
                            f"save it as one file (onnx.save(model, path, "
                            f"save_as_external_data=False))")
    return OnnxModel(proto, path)


def _attrs(node) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _torch(array):
    return None if array is None else torch.from_numpy(np.array(array, dtype=np.float64))


def _gemm(node, t, at, rank):
    if at.get("transA", 0):
        raise ValueError("transA=1")
    alpha, beta = at.get("alpha", 1.0), at.get("beta", 1.0)
    weight = t[1] if at.get("transB", 0) else t[1].T
    bias = None if len(t) < 3 or t[2] is None else np.reshape(t[2], -1) * beta
    if bias is not None and bias.size not in (1, weight.shape[0]):
        raise ValueError(f"a bias of shape {list(np.shape(t[2]))}")
    if bias is not None and bias.size == 1:
        bias = np.full(weight.shape[0], bias[0])
    return "Linear", dict(weight=_torch(weight * alpha), bias=_torch(bias))


def _matmul(node, t, at, rank):
    if t[1].ndim != 2:
        raise ValueError(f"a {t[1].ndim}-d right-hand operand")
    return "Linear", dict(weight=_torch(t[1].T), bias=None)


def _pads(at, kernel_rank=2):
    if at.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise ValueError(f"auto_pad={at['auto_pad']!r}")
    pads = list(at.get("pads", [0] * 2 * kernel_rank))
    if pads[:kernel_rank] != pads[kernel_rank:]:
        raise ValueError(f"asymmetric pads={pads}")
    return tuple(pads[:kernel_rank])


def _conv(node, t, at, rank):
    if t[1].ndim != 4:
        raise ValueError(f"a {t[1].ndim - 2}-d convolution")
    return "Conv2d", dict(weight=_torch(t[1]), bias=_torch(t[2] if len(t) > 2 else None),
                          stride=tuple(at.get("strides", (1, 1))), padding=_pads(at),
                          dilation=tuple(at.get("dilations", (1, 1))),
                          groups=at.get("group", 1))


def _pool(handler):
    def read(node, t, at, rank):
        attrs = dict(kernel_size=tuple(at["kernel_shape"]),
                     stride=tuple(at.get("strides", (1, 1))), padding=_pads(at),
                     ceil_mode=bool(at.get("ceil_mode", 0)))
        if handler == "MaxPool2d":
            attrs["dilation"] = tuple(at.get("dilations", (1, 1)))
        return handler, attrs
    return read


def _batchnorm(node, t, at, rank):
    if at.get("training_mode", 0):
        raise ValueError("training_mode=1; export the model after model.eval()")
    return ("BatchNorm2d" if rank == 4 else "BatchNorm1d",
            dict(weight=_torch(t[1]), bias=_torch(t[2]), running_mean=_torch(t[3]),
                 running_var=_torch(t[4]), eps=at.get("epsilon", 1e-5)))


def _flatten(node, t, at, rank):
    if at.get("axis", 1) != 1:
        raise ValueError(f"axis={at['axis']}")
    return "Flatten", {}


def _reshape(node, t, at, rank):
    shape = list(np.reshape(t[1], -1)) if t[1] is not None else None
    if shape is None or len(shape) != 2:
        shape = "of unknown rank" if shape is None else shape
        raise ValueError(f"a target shape {shape}; only flattening to [N, features] is "
                         f"supported")
    return "Flatten", {}


def _simple(handler):
    return lambda node, t, at, rank: (handler, {})


#: ONNX operator -> how to read it as a torch layer (its handler's name and attributes).
ONNX_LAYERS = {
    "Gemm": _gemm, "MatMul": _matmul, "Conv": _conv,
    "MaxPool": _pool("MaxPool2d"), "AveragePool": _pool("AvgPool2d"),
    "Relu": _simple("ReLU"), "Flatten": _flatten, "Reshape": _reshape,
    "BatchNormalization": _batchnorm, "Identity": _simple("Identity"),
    "Dropout": _simple("Dropout"),
    "Add": None,      # a bias after MatMul: merged into the layer before
}


def _supported() -> str:
    return ", ".join(sorted(ONNX_LAYERS))


def onnx_ops(model: OnnxModel) -> list[Op]:
    """The ops of an ONNX model's graph, in order."""
    graph = model.proto.graph
    where = model.path.name
    tensors = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    dims = _dims(model.proto)
    activation, ops = model.input, []
    shapes: set = set()           # values computed from the activation's shape only
    quantization = model.quantization = GraphQuantization()
    for index, node in enumerate(graph.node):
        label = f"node {node.name or index!r}"
        is_quant = node.op_type in QUANT_OPS and node.domain in (
            QONNX_DOMAINS if node.op_type == "Quant" else ("", "ai.onnx"))
        if node.op_type == "Constant" and not node.input:
            (tensors[node.output[0]],) = ReferenceEvaluator(node).run(None, {})
            continue
        if node.op_type == "Shape" or any(i in shapes for i in node.input) \
                and node.op_type != "Reshape":
            shapes.update(node.output)    # x.view(x.size(0), -1): Shape, Gather, Concat, ...
            continue
        live = [i for i in node.input if i and i not in tensors and i not in shapes]
        if not live:              # tensors only: weight transposes, masks, casts, quantizers
            values = [tensors[i] if i else None for i in node.input]
            if is_quant and node.op_type == "Quant":
                outputs = [quant(*values, **_attrs(node))]
            else:
                outputs = ReferenceEvaluator(node).run(None, {i: tensors[i] for i in node.input
                                                              if i})
            tensors.update(zip(node.output, outputs))
            if is_quant and node.op_type != "QuantizeLinear":
                quantization.weight_inputs[node.output[0]] = _quantizer(where, node, values,
                                                                        label)
            continue
        if live != [activation] or node.input[0] != activation and node.op_type != "Add":
            raise FrontendError(f"{where}: the ONNX graph is not a plain chain of layers (at "
                                f"{label}, {node.op_type}); branches and skip connections are "
                                f"not supported")
        if not is_quant and (node.op_type not in ONNX_LAYERS
                             or node.domain not in ("", "ai.onnx")):
            raise FrontendError(f"{where}: unsupported operator {node.op_type!r} at {label}; "
                                f"supported: {_supported()}")
        if node.op_type == "Dropout" and len(node.output) > 1 and node.output[1]:
            if any(node.output[1] in n.input for n in graph.node):
                raise FrontendError(f"{where}: {label} (Dropout) uses its mask output; "
                                    f"export the model after model.eval()")
        values = [None if i == activation else tensors.get(i) for i in node.input]
        if is_quant:              # on the activation: an identity for the float IR
            if node.op_type != "DequantizeLinear":
                try:
                    quantization.add_activation(len(quantization.weights),
                                                _quantizer(where, node, values, label))
                except ValueError as e:
                    raise FrontendError(f"{where}: {e}") from None
            activation = node.output[0]
            continue
        if node.op_type in ("Gemm", "MatMul", "Conv"):
            quantization.weights.append(quantization.weight_inputs.get(node.input[1]))
        if node.op_type == "Reshape" and node.input[1] in shapes:
            target = dims.get(node.input[1], [None])          # only its rank is known
            rank = target[0] if len(target) == 1 else None
            if rank is None and node.output[0] in dims:
                rank = len(dims[node.output[0]])
            values[1] = None if rank is None else np.zeros(rank)
        name = node.name or f"{node.op_type}_{index}"
        if node.op_type == "Add":
            _bias_add(where, label, values, ops)
        else:
            try:
                handler, attrs = ONNX_LAYERS[node.op_type](node, values, _attrs(node),
                                                          len(dims.get(activation, ())))
            except ValueError as e:
                raise FrontendError(f"{where}: layer {name!r} ({node.op_type}) uses {e}; "
                                    f"supported: {_supported()}") from None
            ops += module_ops(Attrs(handler, node.op_type, **attrs), name)
        activation = node.output[0]
    if activation != graph.output[0].name:
        raise FrontendError(f"{where}: the ONNX graph's output is not its last layer's")
    return ops


def _quantizer(where, node, values, label):
    try:
        return read_quantizer(node, values, _attrs(node), label)
    except ValueError as e:
        raise FrontendError(f"{where}: unsupported quantizer: {e}") from None


def _bias_add(where, label, values, ops):
    bias = values[1] if values[0] is None else values[0]
    prev = ops[-1] if ops else None
    if prev is None or prev.kind != "linear" or prev.bias.any() \
            or np.size(bias) != len(prev.bias):
        raise FrontendError(f"{where}: unsupported operator 'Add' at {label}; only a bias added "
                            f"right after MatMul is supported; supported: {_supported()}")
    prev.bias = prev.bias + np.reshape(bias, -1).astype(np.float64)


def _dims(proto) -> dict:
    """The dimensions (None where symbolic) of every value that shape inference can tell."""
    try:
        inferred = onnx.shape_inference.infer_shapes(proto)
    except Exception:                  # inference is a help for BatchNormalization only
        inferred = proto
    graph = inferred.graph
    return {v.name: [d.dim_value if d.HasField("dim_value") else None
                     for d in v.type.tensor_type.shape.dim]
            for v in [*graph.input, *graph.value_info, *graph.output]
            if v.type.tensor_type.HasField("shape")}
