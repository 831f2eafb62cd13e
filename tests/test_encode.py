"""Sparsity encoding on the R x C grid, PE assignment and the program file."""

import dataclasses

import numpy as np
import pytest
from models import calibration, float_model

from compiler import reference
from compiler.build import compile_model
from core.ir import Grid, IRError
from compiler.passes.assign import assign_rows, block_counts, interleaved, nnz_balanced, pe_work
from compiler.passes.encode import _encode_column, choose_grid
from compiler.serialize import load_program, save_program


def test_relative_index_with_padding_by_hand():
    values, indices = _encode_column(np.array([0, 3, 40]), np.array([5, -6, 7]), 4)
    # 0 -> (5, 0); 3 -> gap 2; 40: gap 36 > 15 -> pad to row 19, then 35 -> gap 4
    assert values == [5, -6, 0, 0, 7]
    assert indices == [0, 2, 15, 15, 4]
    rows = np.cumsum(np.array(indices) + 1) - 1
    assert rows.tolist() == [0, 3, 19, 35, 40]


@pytest.mark.parametrize("pes, want", [(1, (1, 1)), (2, (2, 1)), (3, (3, 1)), (8, (4, 2)),
                                       (12, (4, 3)), (16, (4, 4)), (63, (9, 7)), (64, (8, 8))])
def test_the_default_grid_is_the_squarest_with_rows_at_least_columns(pes, want):
    grid = choose_grid(pes)
    assert (grid.rows, grid.cols) == want and grid.pes == pes
    assert [str(g) for g in Grid.shapes(12)] == ["4x3", "6x2", "12x1"]


def test_a_grid_must_match_the_pes_and_be_tall():
    with pytest.raises(ValueError, match="has 8 PEs, not 16"):
        choose_grid(16, "4x2")
    with pytest.raises(IRError, match="at least as many rows"):
        Grid(2, 4)
    with pytest.raises(IRError, match="RxC"):
        Grid.parse("8by8")


@pytest.mark.parametrize("pes, grid", [(1, None), (4, "2x2"), (6, "3x2"), (8, "8x1"),
                                       (9, "3x3"), (12, None)])
def test_each_pe_stores_exactly_its_block_of_every_layer(pes, grid):
    model = float_model([23, 17, 9, 4], sparsity=0.7, seed=pes)
    program = compile_model(model, calibration(23), pes, grid=grid)
    mats = reference.decode_pes(program)
    g = program.grid
    for m, layer in enumerate(program.layers):
        weights = layer.matrix(quantized=True)
        rebuilt = np.zeros_like(weights)
        for r, red in enumerate(program.reducers):
            rows = red.rows[m]
            for c in range(g.cols):
                src = program.column_sources(m, c)
                block = mats[m][g.pe(r, c)][:len(rows)]
                # nothing stored in a padding column or past the group's rows
                assert not block[:, src < 0].any()
                assert not mats[m][g.pe(r, c)][len(rows):].any()
                rebuilt[np.ix_(rows, src[src >= 0])] += block[:, src >= 0]
        assert np.array_equal(rebuilt, weights)


def test_columns_follow_the_reducer_that_drives_each_bus():
    model = float_model([10, 13, 7], sparsity=0.5, seed=3)
    program = compile_model(model, calibration(10), 6, grid="3x2")
    g = program.grid
    # layer 0: input t * C + c in local column t of group c
    assert program.column_sources(0, 1).tolist() == [1, 3, 5, 7, 9]
    # layer 1: reducers 0 and 2 drive bus 0, reducer 1 bus 1, out_slots columns each
    slots = program.out_slots[0]
    src = program.column_sources(1, 0)
    assert src[:len(program.outputs_of(0, 0))].tolist() == program.outputs_of(0, 0).tolist()
    assert src[slots:slots + len(program.outputs_of(2, 0))].tolist() \
        == program.outputs_of(2, 0).tolist()
    assert program.col_slots[1] == g.bus_reducers * slots
    every = np.concatenate([program.column_sources(1, c) for c in range(g.cols)])
    assert sorted(every[every >= 0].tolist()) == list(range(13))


def test_rows_are_partitioned_with_bounded_rows_per_group():
    mask = np.random.default_rng(0).random((37, 20)) < 0.3
    owners = assign_rows(mask, 5)
    rows = np.sort(np.concatenate(owners))
    assert rows.tolist() == list(range(37))
    assert max(len(o) for o in owners) <= 8


@pytest.mark.parametrize("grid_rows, grid_cols", [(8, 1), (4, 2), (2, 4)])
def test_assignment_beats_interleaving_on_skewed_rows(grid_rows, grid_cols):
    rng = np.random.default_rng(1)
    mask = rng.random((64, 48)) < np.linspace(0.02, 0.5, 64)[:, None]   # row density grows
    active = rng.random((128, 48)) < 0.5
    col_group = np.arange(48) % grid_cols
    interleaved = np.arange(64) % grid_rows
    owners = assign_rows(mask, grid_rows, col_group, grid_cols, active)
    balanced = np.empty(64, dtype=np.int64)
    for k, rows in enumerate(owners):
        balanced[rows] = k

    def worst(owner):
        return pe_work(mask, col_group, owner, grid_rows, grid_cols, active).max(
            axis=(1, 2)).mean()

    # no assignment of rows beats the busiest column group spread over its R PEs
    work = active.astype(int) @ mask.T.astype(int)                     # [S, rows]
    per_group = np.stack([(active[:, col_group == c].astype(int)
                           @ mask[:, col_group == c].T.astype(int)).sum(axis=1)
                          for c in range(grid_cols)], axis=1)             # [S, C]
    floor = np.maximum(work.sum(axis=1) / (grid_rows * grid_cols),
                       per_group.max(axis=1) / grid_rows).mean()
    assert worst(balanced) < worst(interleaved)
    assert worst(balanced) < 1.1 * floor


def test_a_layer_balanced_under_interleaved_rows_keeps_them():
    # every PE block of a 4x2 grid holds 3 nonzeros under row i -> group i mod 4
    rng = np.random.default_rng(2)
    mask = np.zeros((12, 8), dtype=bool)
    col_group = np.arange(8) % 2
    for r, rows in enumerate(interleaved(12, 4)):
        for c in range(2):
            cols = np.flatnonzero(col_group == c)
            block = np.zeros(len(rows) * len(cols), dtype=bool)
            block[rng.choice(block.size, 3, replace=False)] = True
            mask[np.ix_(rows, cols)] = block.reshape(len(rows), len(cols))
    assert (block_counts(mask, col_group, interleaved(12, 4), 2) == 3).all()
    assert nnz_balanced(mask, col_group, interleaved(12, 4), 2)
    mask[np.ix_([0, 4], [0, 2, 4, 6])] = True             # PE (0, 0): 8 or more
    assert not nnz_balanced(mask, col_group, interleaved(12, 4), 2)


def test_the_compiler_keeps_interleaved_rows_only_for_a_balanced_model():
    model = float_model([16, 12, 4], sparsity=0.0, seed=3)    # dense: balanced as it is
    program = compile_model(model, calibration(16), 8)
    assert [r.rows[0].tolist() for r in program.reducers] == [
        rows.tolist() for rows in interleaved(12, 4)]
    skewed = float_model([16, 12, 4], sparsity=0.8, seed=3)
    program = compile_model(skewed, calibration(16), 8)
    assert [r.rows[0].tolist() for r in program.reducers] != [
        rows.tolist() for rows in interleaved(12, 4)]


def test_dense_mode_stores_every_weight():
    model = float_model([8, 6, 4], sparsity=0.8, seed=4)
    program = compile_model(model, calibration(8), 3, dense=True)
    entries = sum(len(pe.entry_value) for pe in program.pe_images)
    assert entries == 8 * 6 + 6 * 4
    x = reference.quantize_input(calibration(8, n=5), program.model.input_scale)
    result = reference.run(program, x)
    assert np.array_equal(result.outputs, reference.run_dense(program.model, x))
    assert (result.pe_entries[:, 0].sum(axis=1) == 48).all()   # zeros are not skipped


def test_program_file_round_trip(tmp_path):
    model = float_model([9, 7, 4], sparsity=0.6, seed=6)
    program = compile_model(model, calibration(9), 6, grid="3x2")
    save_program(program, tmp_path / "p.npz")
    again = load_program(tmp_path / "p.npz")
    x = reference.quantize_input(calibration(9, n=10), program.model.input_scale)
    assert np.array_equal(reference.run(again, x).outputs, reference.run(program, x).outputs)
    assert again.widths == program.widths and again.row_slots == program.row_slots
    assert again.grid == program.grid


def test_verify_rejects_a_broken_partition_and_a_broken_pointer_table():
    model = float_model([5, 4, 2], sparsity=0.5, seed=7)
    program = compile_model(model, calibration(5), 2)
    red = program.reducers[0]
    broken = dataclasses.replace(red, rows=(red.rows[0][:-1], *red.rows[1:]))
    with pytest.raises(IRError, match="not partitioned"):
        dataclasses.replace(program, reducers=(broken, *program.reducers[1:])).verify()
    pe = program.pe_images[0]
    bad = dataclasses.replace(pe, ptr=pe.ptr[::-1].copy())
    with pytest.raises(IRError, match="CSC"):
        dataclasses.replace(program, pe_images=(bad, *program.pe_images[1:])).verify()


def test_widths_bound_every_partial_and_every_row_sum():
    model = float_model([30, 20, 6], sparsity=0.3, seed=9)
    program = compile_model(model, calibration(30), 4, grid="2x2")
    worst = np.full(30, -128)
    result = reference.run(program, worst)
    assert result.outputs.shape == (1, 6)
    for m, layer in enumerate(program.layers):
        mat = np.abs(layer.matrix(quantized=True)) * 128
        assert mat.sum(axis=1).max() < 2 ** (program.widths.accumulator - 1)
        for c in range(program.grid.cols):
            src = program.column_sources(m, c)
            cols = src[src >= 0]
            assert mat[:, cols].sum(axis=1).max() < 2 ** (program.widths.partial - 1)
