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


def _outlier_model():
    """An MLP whose first layer holds one 1e4 weight among weights of about 0.2."""
    model = float_model([30, 40, 10], sparsity=0.5, seed=2)
    first = model.layers[0]
    w = first.weight.copy()
    w[3, 5] = 1e4
    return dataclasses.replace(model, layers=(dataclasses.replace(first, weight=w),
                                              *model.layers[1:]))


def test_an_outlier_that_crushes_a_layer_warns_and_names_it():
    from compiler.passes.quantize import quantization_warnings
    model, cal = _outlier_model(), calibration(30, n=200, seed=3)
    warnings = quantization_warnings(model, quantize(model, cal), cal)
    # the outlier's layer first, by name; its crushed outputs may crush the next layer's too
    assert warnings and warnings[0].startswith("layer 'fc0': "), warnings
    assert "outlier weight (channel 3: 10000)" in warnings[0]
    assert any(w.startswith("layer 'fc0': ") and "calibration outputs quantize to 0" in w
               for w in warnings), warnings


def test_a_normal_model_does_not_warn():
    from compiler.passes.quantize import quantization_warnings
    for seed in range(5):
        model = float_model([30, 40, 10], sparsity=0.5 + 0.1 * seed, seed=seed)
        cal = calibration(30, n=200, seed=seed + 10)
        assert quantization_warnings(model, quantize(model, cal), cal) == []


def test_the_build_reports_and_prints_the_warning(tmp_path, capsys):
    import json

    import torch
    import torch.nn as nn

    from compiler.cli import main
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    with torch.no_grad():
        model[0].weight[2, 7] = 1e4
    torch.save(model, tmp_path / "outlier.pt")
    np.save(tmp_path / "cal.npy", calibration(12, n=64))
    out = tmp_path / "build"
    assert main(["build", str(tmp_path / "outlier.pt"), "--board", "arty_a7", "--pes", "2",
                 "--calibration", str(tmp_path / "cal.npy"), "--no-bitstream",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "warning" in printed and "layer '0'" in printed
    warnings = json.loads((out / "report.json").read_text())["warnings"]
    assert warnings and warnings[0].startswith("layer '0': ")
    assert "## Warnings" in (out / "report.md").read_text()
