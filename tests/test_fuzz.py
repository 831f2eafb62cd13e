"""The fuzz campaign (compiler/fuzz/): a smoke campaign of three seeded models on Icarus with no
mismatch, and a broken reference that the campaign must catch, write out as a reproducer and
fail on."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import compiler.fuzz.campaign as campaign
from compiler.cli import main
from compiler.fuzz import generate_model, run_campaign

ROOT = Path(__file__).resolve().parent.parent


def test_models_are_a_function_of_seed_and_index():
    a, b = generate_model(5, 3, cases=12), generate_model(5, 3, cases=12)
    assert a.options == b.options and a.input_kinds == b.input_kinds
    assert np.array_equal(a.inputs, b.inputs) and np.array_equal(a.calibration, b.calibration)
    for pa, pb in zip(a.module.state_dict().values(), b.module.state_dict().values()):
        assert torch.equal(pa, pb)
    c = generate_model(5, 4, cases=12)
    assert not (a.options == c.options and np.array_equal(a.calibration, c.calibration))
    # the input kinds in turn: all zero, saturating, negative among them
    assert {"zero", "saturating", "far", "negative"} <= set(a.input_kinds)
    assert not a.inputs[a.input_kinds.index("zero")].any()
    assert (a.inputs[a.input_kinds.index("negative")] <= 0).all()
    # layer widths capped on request
    small = generate_model(5, 3, cases=2, max_size=4)
    assert all(s <= 4 for s in small.features["sizes"])


@pytest.mark.slow
def test_smoke_campaign_has_no_mismatch(tmp_path):
    result = run_campaign(cases=30, cases_per_model=10, seed=38, max_size=12,
                          simulator="icarus", out_dir=tmp_path)
    s = result.summary
    assert not result.failed and s["failures"] == [], s["failures"]
    assert (s["cases"], s["models"], s["cases_checked"], s["models_checked"]) == (30, 3, 30, 3)
    assert (s["mismatches"], s["crashes"], s["tool_errors"], s["refused"]) == (0, 0, 0, 0)
    assert s["pes_covered"] == [3, 4, 5] and s["kinds"] == {"mlp": 2, "cnn": 1}
    assert s["correlation"]["worst"] > 0.99 and s["argmax_agreement"]["worst"] == 1.0
    assert [r["status"] for r in s["per_model"]] == ["ok"] * 3
    assert json.loads((tmp_path / "summary.json").read_text()) == json.loads(json.dumps(s))
    assert not (tmp_path / "failures").exists() and not (tmp_path / "models").exists()


@pytest.mark.slow
def test_a_broken_reference_is_reported_written_out_and_fails(tmp_path, monkeypatch, capsys):
    real = campaign.expected_outputs

    def broken(program, xq):
        out = real(program, xq).copy()
        out[-1, 0] += 1                  # one output of the last case off by one
        return out

    monkeypatch.setattr(campaign, "expected_outputs", broken)
    out = tmp_path / "fuzz"
    assert main(["fuzz", "--cases", "6", "--cases-per-model", "6", "--seed", "14",
                 "--max-size", "12", "--simulator", "icarus", "--out", str(out)]) == 1
    printed = capsys.readouterr().out
    assert "model 0: mismatch: RTL differs from the reference in 1 of 6 cases; first: case 5" \
        in printed, printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mismatches"] == 1 and summary["failures"][0]["status"] == "mismatch"
    folder = out / "failures" / "model_00000"
    assert summary["failures"][0]["reproducer"] == str(folder)
    assert {p.name for p in folder.iterdir()} >= {"model.pt", "calibration.npy", "inputs.npy",
                                                 "options.json", "command.sh"}
    options = json.loads((folder / "options.json").read_text())
    assert options["seed"] == 14 and options["model"] == 0
    assert np.load(folder / "inputs.npy").shape[0] == 6
    # the reproducer rebuilds and re-simulates with the public CLI (here the reference is
    # the real one, so it passes)
    monkeypatch.undo()
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(["sh", str(folder / "command.sh")], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "RTL == reference (bit-exact)" in proc.stdout and "6 inferences" in proc.stdout
