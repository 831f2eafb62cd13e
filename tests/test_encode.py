"""Sparsity encoding, PE assignment and the program file."""

import numpy as np
import pytest
from models import calibration, float_model

from compiler import reference
from compiler.build import compile_model
from compiler.ir import IRError
from compiler.passes.assign import assign_rows, lane_work
from compiler.passes.encode import _encode_column
from compiler.serialize import load_program, save_program


def test_relative_index_with_padding_by_hand():
    values, indices = _encode_column(np.array([0, 3, 40]), np.array([5, -6, 7]), 4)
    # 0 -> (5, 0); 3 -> gap 2; 40: gap 36 > 15 -> pad to row 15+... -> pad to 31 -> gap 8
    assert values == [5, -6, 0, 0, 7]
    assert indices == [0, 2, 15, 15, 4]
    rows = np.cumsum(np.array(indices) + 1) - 1
    assert rows.tolist() == [0, 3, 19, 35, 40]


def test_fanout_masks_name_exactly_the_pes_with_entries():
    model = float_model([10, 12, 7, 3], sparsity=0.75, seed=2)
    program = compile_model(model, calibration(10), 4)
    for c in range(10):
        want = sum(1 << k for k, lane in enumerate(program.lanes) if lane.ptr_count[c] > 0)
        assert program.input_fanout[c] == want
    for m in range(len(program.layers) - 1):
        for k, lane in enumerate(program.lanes):
            for i in range(len(lane.rows[m])):
                p = program.ptr_base[m + 1] + program.column_of(m + 1, k, i)
                want = sum(1 << j for j, other in enumerate(program.lanes)
                           if other.ptr_count[p] > 0)
                assert lane.fanout[program.row_base[m] + i] == want


def test_rows_are_partitioned_with_bounded_rows_per_pe():
    mask = np.random.default_rng(0).random((37, 20)) < 0.3
    owners = assign_rows(mask, 5)
    rows = np.sort(np.concatenate(owners))
    assert rows.tolist() == list(range(37))
    assert max(len(o) for o in owners) <= 8


def test_assignment_beats_interleaving_on_skewed_rows():
    rng = np.random.default_rng(1)
    mask = rng.random((64, 48)) < np.linspace(0.02, 0.5, 64)[:, None]   # row density grows
    active = rng.random((128, 48)) < 0.5
    interleaved = np.arange(64) % 8
    owners = assign_rows(mask, 8, active)
    balanced = np.empty(64, dtype=np.int64)
    for k, rows in enumerate(owners):
        balanced[rows] = k
    worst_interleaved = lane_work(mask, interleaved, 8, active).max(axis=1).mean()
    worst_balanced = lane_work(mask, balanced, 8, active).max(axis=1).mean()
    ideal = (active.astype(int) @ mask.T.astype(int)).sum(axis=1).mean() / 8
    assert worst_balanced < worst_interleaved
    assert worst_balanced < 1.1 * ideal


def test_dense_mode_stores_every_weight():
    model = float_model([8, 6, 4], sparsity=0.8, seed=4)
    program = compile_model(model, calibration(8), 3, dense=True)
    entries = sum(len(lane.entry_value) for lane in program.lanes)
    assert entries == 8 * 6 + 6 * 4
    x = reference.quantize_input(calibration(8, n=5), program.model.input_scale)
    result = reference.run(program, x)
    assert np.array_equal(result.outputs, reference.run_dense(program.model, x))
    assert (result.lane_entries[:, 0].sum(axis=1) == 48).all()   # zeros are not skipped


def test_program_file_round_trip(tmp_path):
    model = float_model([9, 7, 4], sparsity=0.6, seed=6)
    program = compile_model(model, calibration(9), 3)
    save_program(program, tmp_path / "p.npz")
    again = load_program(tmp_path / "p.npz")
    x = reference.quantize_input(calibration(9, n=10), program.model.input_scale)
    assert np.array_equal(reference.run(again, x).outputs, reference.run(program, x).outputs)
    assert again.widths == program.widths and again.row_slots == program.row_slots


def test_verify_rejects_a_broken_partition():
    import dataclasses
    model = float_model([5, 4, 2], sparsity=0.5, seed=7)
    program = compile_model(model, calibration(5), 2)
    lane = program.lanes[0]
    broken = dataclasses.replace(lane, rows=(lane.rows[0][:-1], *lane.rows[1:]))
    with pytest.raises(IRError, match="not partitioned"):
        dataclasses.replace(program, lanes=(broken, *program.lanes[1:])).verify()
