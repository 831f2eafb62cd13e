"""Conv2d and pooling: frontend, unrolled matrices, reference model, gateware."""

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from models import assert_accelerator_exact, images, sparsify_

from compiler import reference
from compiler.build import compile_model
from core.errors import FrontendError
from compiler.frontend import to_ir
from hw.options import HardwareOptions


@pytest.mark.parametrize("kernel, stride, padding", [(1, 1, 0), (3, 1, 1), (3, 2, 1), (5, 1, 0),
                                                     (5, 2, 2), ((3, 2), (2, 1), (1, 0))])
def test_unrolled_matrix_is_the_convolution(kernel, stride, padding):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, kernel, stride=stride, padding=padding)
    model = to_ir(nn.Sequential(conv), input_shape=(3, 9, 8))
    x = torch.randn(5, 3, 9, 8)
    want = F.conv2d(x, conv.weight, conv.bias, stride=stride, padding=padding)
    layer = model.layers[0]
    got = x.reshape(5, -1).double().numpy() @ layer.matrix().T + layer.bias[layer.row_channel()]
    np.testing.assert_allclose(got, want.detach().reshape(5, -1).double().numpy(), rtol=1e-5,
                               atol=1e-5)       # float meets float


NETS = {
    "lenet-max": (lambda: nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Flatten(),
        nn.Linear(24, 5)), (1, 8, 8)),
    "avg-then-relu": (lambda: nn.Sequential(
        nn.Conv2d(2, 3, 5), nn.AvgPool2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(12, 4)),
        (2, 9, 9)),
    "floor-pool-at-the-end": (lambda: nn.Sequential(
        nn.Conv2d(3, 5, 1), nn.ReLU(), nn.Conv2d(5, 2, 3, padding=1), nn.ReLU(),
        nn.AvgPool2d(3)), (3, 7, 6)),
}


def _prepared(name, sparsity=0.3):
    make, shape = NETS[name]
    torch.manual_seed(1)
    net = sparsify_(make(), sparsity)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    return net, shape


@pytest.mark.parametrize("name", list(NETS))
@pytest.mark.parametrize("pes", [1, 3, 8])
def test_reference_matches_dense_and_float(name, pes):
    net, shape = _prepared(name)
    model = to_ir(net, input_shape=shape)
    cal = images(shape, n=128)
    program = compile_model(model, cal.reshape(len(cal), -1), pes)
    x = reference.quantize_input(images(shape, n=40, seed=5).reshape(40, -1),
                                 program.model.input_scale)
    got = reference.run(program, x)
    assert np.array_equal(got.outputs, reference.run_dense(program.model, x))
    with torch.no_grad():
        want = net(torch.from_numpy(images(shape, n=40, seed=5))).reshape(40, -1).numpy()
    deq = reference.dequantize(got.outputs, program.model.output_scale)
    # float PyTorch meets integers: within a few output steps
    assert np.abs(deq - want).max() < 6 * program.model.output_scale + 0.05 * np.abs(want).max()


@pytest.mark.parametrize("memory, pipeline", [("block", "deep"), ("distributed", "short")])
@pytest.mark.parametrize("name", list(NETS))
def test_gateware_runs_convolutions_bit_exactly(name, memory, pipeline):
    net, shape = _prepared(name, sparsity=0.5)
    model = to_ir(net, input_shape=shape)
    cal = images(shape, n=64)
    program = compile_model(model, cal.reshape(len(cal), -1), 3)
    x = reference.quantize_input(images(shape, n=2, seed=9).reshape(2, -1),
                                 program.model.input_scale)
    assert_accelerator_exact(program, x, HardwareOptions(memory=memory, pipeline=pipeline),
                             ready_probability=0.6)


@pytest.mark.parametrize("net, match", [
    (nn.Sequential(nn.Conv2d(1, 2, 3, dilation=2)), "dilation"),
    (nn.Sequential(nn.Conv2d(2, 2, 3, groups=2)), "groups=2"),
    (nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(3, stride=1)), "stride"),
    (nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2, padding=1)), "padding"),
    (nn.Sequential(nn.Conv2d(1, 2, 3), nn.Linear(6, 3)), "Flatten"),
    (nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(1, 2, 3)), "must follow a Conv2d"),
    (nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.BatchNorm2d(2)), "directly follow"),
    (nn.Sequential(nn.Conv2d(1, 2, 9)), "does not fit"),
])
def test_unsupported_convolution_settings_are_named(net, match):
    with pytest.raises(FrontendError, match=match):
        to_ir(net.eval(), input_shape=(1 if not isinstance(net[0], nn.Conv2d)
                                       else net[0].in_channels, 6, 6))


def test_a_convolution_needs_the_input_size():
    with pytest.raises(FrontendError, match=r"\[N, 1, H, W\]"):
        to_ir(nn.Sequential(nn.Conv2d(1, 2, 3)).eval())
