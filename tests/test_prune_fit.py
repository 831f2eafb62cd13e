"""Prune to fit a board: the sparsity search, ``prune --fit-board`` and build's advice.

The bundled digits MLP fits every board dense wherever sparsity matters, so the search runs on
a wider MLP (64-256-256-10, 84 480 weights) that does not fit the iCEBreaker at P = 1 dense:
its weights overflow the SPRAM and the block RAM (fit check only, no synthesis)."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn as nn

from _prune_helpers import run_main
from boards import get_board
from compiler.build import BuildConfig, build
from compiler.datasets import digits_split
from compiler.prune.api import PruneConfig, prune_file
from compiler.prune.fit import (SparsityWouldNotHelp, _projected, fit_estimate, fit_sparsity,
                                projection_scope)
from compiler.prune.layers import prunable_layers
from core.errors import FitError

EXAMPLE = "examples/digits_mlp.pt"


def _wide() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                         nn.Linear(256, 10)).eval()


@pytest.fixture(scope="module")
def wide_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("fit") / "wide.pt"
    torch.save(_wide(), path)
    return path


@pytest.fixture(scope="module")
def search():
    return fit_sparsity(_wide(), digits_split()[0], get_board("icebreaker"), 1)


def _zeros(model) -> tuple[int, int]:
    weights = [m.weight for _, m in prunable_layers(model)]
    return sum(int((w == 0).sum()) for w in weights), sum(w.numel() for w in weights)


def test_search_finds_the_edge(search):
    x, board = digits_split()[0], get_board("icebreaker")
    assert 0.05 < search.sparsity < 0.9 and not search.fits_at_minimum
    assert search.tried[0] == (0.0, False)          # dense does not fit
    at = fit_estimate(_projected(_wide(), search.sparsity, "global"), x, board, 1)
    assert at.fits
    below = fit_estimate(_projected(_wide(), search.sparsity - 0.02, "global"), x, board, 1)
    assert not below.fits
    assert search.below is not None and search.sparsity - search.below <= 0.0051


def test_search_fits_at_minimum_and_scopes():
    example = torch.load(EXAMPLE, weights_only=False)
    found = fit_sparsity(example, digits_split()[0], get_board("icebreaker"), 1, minimum=0.9)
    assert found.fits_at_minimum and found.sparsity == 0.9 and len(found.tried) == 1
    assert projection_scope("magnitude") == "layer" == projection_scope("balanced")
    assert projection_scope("global-magnitude") == "global"


def test_sparsity_cannot_fix_logic():
    example = torch.load(EXAMPLE, weights_only=False)
    with pytest.raises(SparsityWouldNotHelp, match=r"99\.5 % sparsity .* icebreaker .* "
                                                   r"P = 2: logic") as e:
        fit_sparsity(example, digits_split()[0], get_board("icebreaker"), 2)
    assert e.value.short == "logic"


def test_prune_cli_fits_the_board(capsys, tmp_path, wide_path, search):
    out = tmp_path / "fit.pt"
    code, text, err = run_main(capsys, "prune", wide_path, "--method", "global-magnitude",
                               "--fit-board", "icebreaker", "--pes", "1", "--epochs", "1",
                               "--max-accuracy-drop", "100", "--out", out)
    assert code == 0, err
    level = f"{100 * search.sparsity:.1f} %"
    assert f"target {level}" in text
    assert f"lowest sparsity that fits icebreaker at P = 1: {level}" in text
    assert re.search(r"fit: icebreaker at P = 1 \(1x1, weights in \w+\): LUT \d+/5280, "
                     r"FF \d+/5280, block RAM \d+/30, SPRAM \d/4, DSP \d/8", text)
    assert "accuracy on digits test split: dense" in text
    zeros, total = _zeros(torch.load(out, weights_only=False))
    assert zeros == total - round((1 - search.sparsity) * total)      # exactly the target


def test_prune_fit_larger_sparsity_wins_and_report(tmp_path, wide_path):
    config = PruneConfig(method="magnitude", sparsity=0.5, fit_board="icebreaker", pes=1,
                         epochs=1, max_accuracy_drop=100)
    result = prune_file(wide_path, config, out=tmp_path / "half.pt")
    assert result.config.sparsity == 0.5
    assert any("fits icebreaker at P = 1 already: pruning to 50.0 %" in n for n in result.notes)
    fit = result.summary()["info"]["fit"]
    assert fit["sparsity"] == 0.5 and fit["tried"] == [[0.5, True]]
    final = fit["final"]
    assert final["fits"] and final["pes"] == 1
    assert final["estimate"]["bram_blocks"]["available"] == 30


@pytest.mark.parametrize("argv, message", [
    (["--fit-board", "nope"], "--fit-board: unknown board 'nope'"),
    (["--fit-board", "icebreaker", "--sparsity", "auto"], "--sparsity auto's per-layer"),
    ([], "prune needs --sparsity S"),
    (["--fit-board", "icebreaker", "--pes", "0"], "--pes: must be at least 1"),
])
def test_prune_fit_bad_input(capsys, argv, message):
    code, _, err = run_main(capsys, "prune", EXAMPLE, "--method", "global-magnitude", *argv)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_build_names_the_sparsity_that_fits(tmp_path, wide_path, search):
    config = BuildConfig(model=str(wide_path), board="icebreaker", pes=1, bitstream=False,
                         out=str(tmp_path / "b"))
    with pytest.raises(FitError) as e:
        build(config)
    text = str(e.value)
    assert "does not fit icebreaker" in text
    m = re.search(r"At about (\d+\.\d) % sparsity \(now 0\.0 %\) it would fit icebreaker at "
                  r"P = 1: `python -m compiler prune \S+ --method global-magnitude "
                  r"--fit-board icebreaker --pes 1`", text)
    assert m, text
    assert abs(float(m.group(1)) - 100 * search.sparsity) <= 1.0


def test_build_says_when_sparsity_would_not_help(tmp_path):
    config = BuildConfig(model=EXAMPLE, board="icebreaker", pes=2, bitstream=False,
                         out=str(tmp_path / "b"))
    with pytest.raises(FitError, match=r"Sparsity would not help at P = 2: even at 99\.5 % "
                                       r"sparsity these stay short: logic"):
        build(config)
