"""The integer reference model: rounding rules by hand, and the sparse-image path against the
dense weight matrices."""

import numpy as np
import pytest
from models import calibration, float_model

from compiler import reference
from compiler.build import compile_model
from core.arith import ACT_MAX, ACT_MIN
from compiler.passes.quantize import quantize


@pytest.mark.parametrize("value, multiplier, shift, relu, expected", [
    (3, 1 << 14, 15, False, 2),        # 1.5 rounds half up
    (-3, 1 << 14, 15, False, -1),      # -1.5 rounds half up too (toward +inf)
    (5, 1 << 14, 15, False, 3),        # 2.5 -> 3
    (-5, 1 << 14, 15, False, -2),      # -2.5 -> -2
    (100, 1 << 14, 15, False, 50),     # exact
    (10**6, 1 << 14, 15, False, 127),  # saturates high
    (-10**6, 1 << 14, 15, False, -128),
    (-10**6, 1 << 14, 15, True, 0),    # ReLU
    (-7, 1 << 14, 15, True, 0),
    (7, 0, 1, False, 0),               # multiplier 0
    (2**32, (1 << 15) - 1, 62, False, 0),
])
def test_requantize_by_hand(value, multiplier, shift, relu, expected):
    assert int(reference.requantize(value, multiplier, shift, relu)) == expected


def test_requantize_matches_exact_rational_rounding():
    rng = np.random.default_rng(0)
    v = rng.integers(-2**30, 2**30, 2000)
    m = rng.integers(0, 2**15, 2000)
    s = rng.integers(1, 40, 2000)
    got = reference.requantize(v, m, s, False)
    # floor(v*m/2**s + 1/2) with Python's exact integers
    exact = [min(ACT_MAX, max(ACT_MIN, (int(a) * int(b) + (1 << (int(c) - 1))) >> int(c)))
             for a, b, c in zip(v, m, s)]
    assert np.array_equal(got, exact)


def test_quantize_input_rounds_half_to_even_and_saturates():
    q = reference.quantize_input([0.5, 1.5, 2.5, -0.5, 1000.0, -1000.0], 1.0)
    assert q.tolist() == [0, 2, 2, 0, 127, -128]


@pytest.mark.parametrize("pes, grid", [(1, None), (2, None), (3, None), (5, None), (8, None),
                                       (8, "8x1"), (9, "3x3"), (16, "4x4"), (64, None)])
@pytest.mark.parametrize("index_bits", [None, 1, 2])
def test_sparse_images_compute_the_dense_model(pes, grid, index_bits):
    model = float_model([20, 17, 9, 5], sparsity=0.7, seed=pes,
                        zero_rows=[(0, 3), (1, 0)], zero_cols=[(0, 5), (2, 1)])
    cal = calibration(20, seed=pes)
    program = compile_model(model, cal, pes, grid=grid, index_bits=index_bits)
    x = reference.quantize_input(calibration(20, n=40, seed=99), program.model.input_scale)
    got = reference.run(program, x)
    assert np.array_equal(got.outputs, reference.run_dense(program.model, x))
    if index_bits == 1:
        padding = sum(int((pe.entry_value == 0).sum()) for pe in program.pe_images)
        assert padding > 0, "a 1-bit index must need padding entries here"


def test_zero_sparsity_and_all_zero_layer_input():
    model = float_model([6, 5, 4], sparsity=0.0, seed=3)
    program = compile_model(model, calibration(6), 3)
    x = np.zeros((1, 6), dtype=np.int64)            # every input zero: bias-only outputs
    result = reference.run(program, x)
    assert np.array_equal(result.outputs, reference.run_dense(program.model, x))
    assert result.nnz_active[0, 0] == 0 and result.pe_entries[0, 0].sum() == 0


def test_ideal_cycles_by_hand():
    model = float_model([4, 3, 2], sparsity=0.0, seed=0)
    q = quantize(model, calibration(4))
    program = compile_model(model, calibration(4), 2)
    x = np.array([[5, 0, 0, 7]])
    result = reference.run(program, x)
    # layer 0: 2 active columns x 3 rows = 6 nonzeros -> ceil(6/2) = 3
    assert result.nnz_active[0, 0] == 6
    hidden = result.activations[1][0]
    expected_l1 = int(np.count_nonzero(hidden)) * 2
    assert result.nnz_active[0, 1] == expected_l1
    assert result.ideal_cycles[0] == 3 + -(-expected_l1 // 2)
    assert q.layers[0].quant.weight.shape == (3, 4)


def test_accumulator_widths_hold_adversarial_inputs():
    model = float_model([16, 12, 6], sparsity=0.3, seed=5)
    program = compile_model(model, calibration(16), 3)
    limit = 2 ** (program.widths.partial - 1)
    mats = reference.decode_pes(program)
    for m in range(len(program.layers)):
        for mat in mats[m]:
            # the largest |sum| any int8 input vector can produce in one PE, per row
            worst = np.abs(mat).sum(axis=1) * 128
            assert (worst < limit).all()


def test_the_pe_bound_counts_every_layer_of_the_busiest_pe():
    model = float_model([12, 10, 4], sparsity=0.5, seed=8)
    program = compile_model(model, calibration(12), 4)
    x = reference.quantize_input(calibration(12, n=7, seed=2), program.model.input_scale)
    result = reference.run(program, x)
    assert np.array_equal(result.pe_bound, result.pe_entries.sum(axis=1).max(axis=1))
    assert (result.pe_bound <= result.layer_bound).all()
    assert (result.ideal_cycles <= result.pe_bound + len(program.layers)).all()
