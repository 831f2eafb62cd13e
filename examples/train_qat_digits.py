"""Quantization-aware training of the digits MLP (64-128-64-10, ReLU), pruned to >= 90 %
weight sparsity, exported as QONNX (``Quant`` nodes, as Brevitas writes them) and as ONNX QDQ
(``QuantizeLinear``/``DequantizeLinear``).

    python examples/train_qat_digits.py    # writes examples/digits_mlp_w{4,8}.qonnx.onnx and
                                           # examples/digits_mlp_w{4,8}_qdq.onnx

Plain torch, no Brevitas: fake quantization with a straight-through estimator, the quantizers
Brevitas calls ``...FixedPoint`` (power-of-two scales, what FINN builds from):

- weights: signed, narrow range (4 bits: -7..7, 8 bits: -127..127), zero point 0, one
  power-of-two scale per output channel (the smallest that holds the channel's largest weight);
- activations: zero point 0, one power-of-two scale per tensor from the running maximum seen in
  training; the input and the logits signed 8-bit, the hidden layers (after ReLU) unsigned
  7-bit (0..127: what the array's signed int8 activations hold after a ReLU);
- biases: on the accumulator's grid (input scale x weight scale), 32-bit, as Brevitas'
  ``Int32Bias``;
- rounding half to even everywhere (``torch.round``, QONNX ``ROUND``, ``QuantizeLinear``).

Pruning: global magnitude, gradually from epoch 30 to 80 (cubic schedule), then fine-tuned
with the mask fixed. The split is compiler.datasets.digits_split().
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn as nn
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

QONNX_DOMAIN = "qonnx.custom_op.general"


def _po2(peak: torch.Tensor, qmax: int) -> torch.Tensor:
    """The smallest power of two ``s`` with ``peak / s <= qmax`` (1 where peak is 0)."""
    peak = torch.where(peak > 0, peak, torch.full_like(peak, qmax))
    return torch.exp2(torch.ceil(torch.log2(peak / qmax)))


def fake_quant(x, scale, lo: int, hi: int):
    """``clamp(round(x / scale), lo, hi) * scale`` with a straight-through gradient."""
    q = torch.clamp(torch.round(x / scale), lo, hi) * scale
    return x + (q - x).detach()


class QATLinear(nn.Module):
    def __init__(self, n_in: int, n_out: int, weight_bits: int):
        super().__init__()
        self.linear = nn.Linear(n_in, n_out)
        self.qmax = 2 ** (weight_bits - 1) - 1
        self.register_buffer("mask", torch.ones(n_out, n_in))

    def weight_scale(self) -> torch.Tensor:
        w = (self.linear.weight * self.mask).detach()
        return _po2(w.abs().amax(dim=1), self.qmax)

    def quantized(self, in_scale: float):
        """Fake-quantized (weight, bias) and their integers."""
        s = self.weight_scale()
        w = fake_quant(self.linear.weight * self.mask, s[:, None], -self.qmax, self.qmax)
        b = fake_quant(self.linear.bias, s * in_scale, -2 ** 31, 2 ** 31 - 1)
        return w, b, s

    def forward(self, x, in_scale: float):
        w, b, _ = self.quantized(in_scale)
        return F.linear(x, w, b)


class ActQuant(nn.Module):
    """Activation fake-quantizer with a power-of-two scale from the running maximum."""

    def __init__(self, lo: int, hi: int, momentum: float = 0.1):
        super().__init__()
        self.lo, self.hi, self.momentum = lo, hi, momentum
        self.register_buffer("peak", torch.tensor(0.0))

    @property
    def scale(self) -> float:
        return float(_po2(self.peak.clamp(min=1e-8), self.hi))

    def forward(self, x):
        if self.training:
            peak = x.detach().abs().max()
            self.peak.copy_(peak if self.peak == 0 else
                            (1 - self.momentum) * self.peak + self.momentum * peak)
        return fake_quant(x, self.scale, self.lo, self.hi)


class QATMLP(nn.Module):
    """64-128-64-10 with ReLU; every activation and weight fake-quantized."""

    def __init__(self, weight_bits: int, sizes=(64, 128, 64, 10)):
        super().__init__()
        self.weight_bits = weight_bits
        self.layers = nn.ModuleList(QATLinear(a, b, weight_bits)
                                    for a, b in zip(sizes, sizes[1:]))
        # the input (pixels in [0, 1]): signed 8-bit; hidden: unsigned 7-bit; logits: signed 8
        self.quants = nn.ModuleList([ActQuant(-128, 127)] +
                                    [ActQuant(0, 127) for _ in sizes[2:]] +
                                    [ActQuant(-128, 127)])
        self.quants[0].peak.fill_(1.0)           # fixed: 2**-7, 1.0 saturates at 127/128

    def forward(self, x):
        x = x.reshape(len(x), -1)
        if self.training:
            self.quants[0].peak.fill_(1.0)
        x = self.quants[0](x)
        for i, layer in enumerate(self.layers):
            x = layer(x, self.quants[i].scale)
            if i < len(self.layers) - 1:
                x = F.relu(x)
            x = self.quants[i + 1](x)
        return x

    def sparsity(self) -> float:
        masks = [layer.mask for layer in self.layers]
        return 1 - float(sum(m.sum() for m in masks)) / sum(m.numel() for m in masks)

    def prune_to(self, sparsity: float):
        """Global magnitude pruning of the (masked) float weights to ``sparsity``."""
        weights = [(layer.linear.weight * layer.mask).detach().abs() for layer in self.layers]
        flat = torch.cat([w.reshape(-1) for w in weights])
        k = int(round(sparsity * flat.numel()))
        if k == 0:
            return
        threshold = flat.kthvalue(k).values
        for layer, w in zip(self.layers, weights):
            layer.mask.copy_((w > threshold).float())


def train_qat(weight_bits: int, *, sparsity: float = 0.9, epochs: int = 120, seed: int = 0,
              sizes=(64, 128, 64, 10), data=None, lr: float = 3e-3) -> QATMLP:
    """Train :class:`QATMLP` on the digits (``data``: (x_train, y_train) float/int arrays)."""
    from compiler.datasets import digits_split

    torch.manual_seed(seed)
    if data is None:
        x_train, _, y_train, _ = digits_split()
    else:
        x_train, y_train = data
    x_train, y_train = torch.from_numpy(x_train), torch.from_numpy(y_train)
    model = QATMLP(weight_bits, sizes)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    start, end = epochs // 4, (2 * epochs) // 3
    generator = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        model.train()
        if start <= epoch <= end and (epoch - start) % 5 == 0:
            progress = min(1.0, (epoch - start) / max(1, end - start - 4))
            model.prune_to(sparsity * (1 - (1 - progress) ** 3))
        for g in opt.param_groups:        # cosine decay
            g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * epoch / epochs))
        order = torch.randperm(len(x_train), generator=generator)
        for i in range(0, len(order), 64):
            batch = order[i:i + 64]
            loss = F.cross_entropy(model(x_train[batch]), y_train[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.prune_to(sparsity)
    return model.eval()


def _integers(model: QATMLP):
    """Per layer: (int weights [out, in], weight scales [out], int32 bias), and the
    activation scales (input first)."""
    scales = [q.scale for q in model.quants]
    layers = []
    with torch.no_grad():
        for i, layer in enumerate(model.layers):
            w, b, s = layer.quantized(scales[i])
            s = s.double().numpy()
            w_int = np.rint(w.double().numpy() / s[:, None]).astype(np.int8)
            b_int = np.rint(b.double().numpy() / (s * scales[i])).astype(np.int32)
            layers.append((w_int, s, b_int))
    return layers, scales


def _graph(nodes, inits, name, features=64, classes=10):
    graph = helper.make_graph(
        nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", classes])], inits)
    return graph


def export_qonnx(model: QATMLP, path) -> onnx.ModelProto:
    """QONNX as Brevitas exports a QuantLinear/QuantReLU network: float weights through
    ``Quant`` (narrow, signed), the bias through a 32-bit ``Quant`` on the accumulator's
    scale, ``Quant`` on the input and after every ReLU and on the logits."""
    layers, scales = _integers(model)
    inits, nodes = [], []

    def const(name, value, dtype=np.float32):
        inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def quant_node(x, out, scale, bits, signed, narrow):
        n = len(nodes)
        nodes.append(helper.make_node(
            "Quant", [x, const(f"q{n}_scale", scale), const(f"q{n}_zeropt", 0.0),
                      const(f"q{n}_bits", float(bits))], [out], name=f"Quant_{n}",
            domain=QONNX_DOMAIN, signed=int(signed), narrow=int(narrow),
            rounding_mode="ROUND"))
        return out

    act = quant_node("x", "x_q", scales[0], 8, True, False)
    last = len(layers) - 1
    for i, (w_int, s, b_int) in enumerate(layers):
        w = const(f"fc{i}.weight", w_int.astype(np.float64) * s[:, None])
        wq = quant_node(w, f"fc{i}.weight_q", s[:, None], model.weight_bits, True, True)
        b = const(f"fc{i}.bias", b_int.astype(np.float64) * s * scales[i])
        bq = quant_node(b, f"fc{i}.bias_q", s * scales[i], 32, True, False)
        nodes.append(helper.make_node("Gemm", [act, wq, bq], [f"fc{i}"], name=f"Gemm_{i}",
                                      transB=1))
        act = f"fc{i}"
        if i < last:
            nodes.append(helper.make_node("Relu", [act], [f"relu{i}"], name=f"Relu_{i}"))
            act = quant_node(f"relu{i}", f"relu{i}_q", scales[i + 1], 7, False, False)
    quant_node(act, "y", scales[-1], 8, True, False)
    proto = helper.make_model(_graph(nodes, inits, "digits_mlp_qonnx"),
                              opset_imports=[helper.make_opsetid("", 13),
                                             helper.make_opsetid(QONNX_DOMAIN, 1)],
                              producer_name="sparsemac examples/train_qat_digits.py")
    onnx.save(proto, str(path))
    return proto


def export_qdq(model: QATMLP, path) -> onnx.ModelProto:
    """ONNX QDQ: int8 weight initializers (4-bit values in int8 for 4-bit training) and int32
    biases through ``DequantizeLinear`` (per output channel, axis 0); ``QuantizeLinear`` +
    ``DequantizeLinear`` (int8, zero point 0) on the input, after every ReLU and on the
    logits."""
    layers, scales = _integers(model)
    inits, nodes = [], []

    def const(name, value, dtype):
        inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def qdq(x, out, scale):
        n = len(nodes)
        s, z = const(f"a{n}_scale", scale, np.float32), const(f"a{n}_zero", 0, np.int8)
        nodes.append(helper.make_node("QuantizeLinear", [x, s, z], [f"{out}_int"],
                                      name=f"QuantizeLinear_{n}"))
        nodes.append(helper.make_node("DequantizeLinear", [f"{out}_int", s, z], [out],
                                      name=f"DequantizeLinear_{n}"))
        return out

    act = qdq("x", "x_q", scales[0])
    last = len(layers) - 1
    for i, (w_int, s, b_int) in enumerate(layers):
        zero = np.zeros(len(s))
        nodes.append(helper.make_node(
            "DequantizeLinear", [const(f"fc{i}.weight_int", w_int, np.int8),
                                 const(f"fc{i}.weight_scale", s, np.float32),
                                 const(f"fc{i}.weight_zero", zero, np.int8)],
            [f"fc{i}.weight"], name=f"DequantizeLinear_w{i}", axis=0))
        nodes.append(helper.make_node(
            "DequantizeLinear", [const(f"fc{i}.bias_int", b_int, np.int32),
                                 const(f"fc{i}.bias_scale", s * scales[i], np.float32),
                                 const(f"fc{i}.bias_zero", zero, np.int32)],
            [f"fc{i}.bias"], name=f"DequantizeLinear_b{i}", axis=0))
        nodes.append(helper.make_node("Gemm", [act, f"fc{i}.weight", f"fc{i}.bias"],
                                      [f"fc{i}"], name=f"Gemm_{i}", transB=1))
        act = f"fc{i}"
        if i < last:
            nodes.append(helper.make_node("Relu", [act], [f"relu{i}"], name=f"Relu_{i}"))
            act = qdq(f"relu{i}", f"relu{i}_q", scales[i + 1])
    qdq(act, "y", scales[-1])
    proto = helper.make_model(_graph(nodes, inits, "digits_mlp_qdq"),
                              opset_imports=[helper.make_opsetid("", 13)],
                              producer_name="sparsemac examples/train_qat_digits.py")
    onnx.save(proto, str(path))
    return proto


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path(__file__).parent)
    p.add_argument("--sparsity", type=float, default=0.9)
    p.add_argument("--epochs", type=int, default=120)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    from compiler.datasets import digits_split

    _, x_test, _, y_test = digits_split()
    args.out.mkdir(parents=True, exist_ok=True)
    for bits in (4, 8):
        model = train_qat(bits, sparsity=args.sparsity, epochs=args.epochs, seed=args.seed)
        with torch.no_grad():
            accuracy = float((model(torch.from_numpy(x_test)).argmax(1).numpy() == y_test)
                             .mean())
        export_qonnx(model, args.out / f"digits_mlp_w{bits}.qonnx.onnx")
        export_qdq(model, args.out / f"digits_mlp_w{bits}_qdq.onnx")
        print(f"{bits}-bit weights: sparsity {model.sparsity():.3f}, fake-quant test accuracy "
              f"{accuracy:.4f}")


if __name__ == "__main__":
    main()
