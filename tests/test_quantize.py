"""Quantization parameters."""

import dataclasses

import numpy as np
import pytest
from models import calibration, float_model

from compiler import reference
from core.arith import MULTIPLIER_BITS
from compiler.passes.quantize import QuantizationError, quantize, quantize_multiplier


def test_multiplier_is_normalised_and_accurate():
    for real in np.geomspace(1e-7, 3e3, 400):
        m, s = quantize_multiplier(float(real))
        assert 2 ** (MULTIPLIER_BITS - 1) <= m < 2 ** MULTIPLIER_BITS
        assert abs(m * 2.0 ** -s - real) <= real * 2.0 ** -(MULTIPLIER_BITS - 1)


def test_weights_are_symmetric_int8_per_channel():
    model = float_model([12, 10, 4], sparsity=0.5, seed=1)
    q = quantize(model, calibration(12))
    for layer in q.layers:
        w = layer.quant.weight.astype(np.int64)
        assert np.abs(w).max() == 127
        peaks = np.abs(w).max(axis=1)
        assert ((peaks == 127) | (peaks == 0)).all()          # every nonzero row uses the range
        assert np.array_equal(w != 0, np.rint(layer.weight / layer.quant.weight_scale[:, None])
                              != 0)


def test_quantized_model_tracks_the_float_model():
    model = float_model([30, 40, 10], sparsity=0.5, seed=2)
    cal = calibration(30, n=300, seed=3)
    q = quantize(model, cal)
    x = calibration(30, n=300, seed=4)
    from compiler.passes.quantize import float_forward
    want = float_forward(model, x)[-1]
    got = reference.dequantize(reference.run_dense(q, reference.quantize_input(
        x, q.input_scale)), q.output_scale)
    assert (want.argmax(1) == got.argmax(1)).mean() > 0.9       # float meets integers here


def test_bias_beyond_int32_is_an_error():
    model = float_model([4, 3], sparsity=0.0, seed=0)
    layer = model.layers[0]
    huge = dataclasses.replace(layer, bias=np.full(3, 1e12, dtype=np.float32))
    with pytest.raises(QuantizationError, match="int32"):
        quantize(dataclasses.replace(model, layers=(huge,)), calibration(4))


def test_a_layer_shares_one_shift_and_keeps_its_largest_scale_exact():
    from compiler.passes.quantize import quantize_multipliers
    reals = np.array([3e-3, 1.5e-3, 7e-4, 0.0, 2.9e-3])
    mults, shift = quantize_multipliers(reals)
    assert 2 ** (MULTIPLIER_BITS - 1) <= mults.max() < 2 ** MULTIPLIER_BITS
    # every channel within half a step of its exact multiplier
    assert np.abs(mults * 2.0 ** -shift - reals).max() <= 2.0 ** -(shift + 1)
    assert mults[3] == 0
    model = float_model([12, 10, 4], sparsity=0.5, seed=1)
    for layer in quantize(model, calibration(12)).layers:
        assert len(set(layer.quant.shift.tolist())) == 1
