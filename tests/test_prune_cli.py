"""``python -m compiler prune`` end to end, and every bad input as a one-line error."""

import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn

from _prune_helpers import digits_mlp, run_main, write_npz
from compiler.frontend import load_model, load_module


@pytest.fixture(scope="module")
def dense_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "dense.pt"
    torch.save(digits_mlp(), path)
    return path


def _assert_one_line_error(code, err, *words):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0], lines[0]


def test_prune_writes_a_plain_model_that_build_loads(dense_file, tmp_path, capsys):
    out = tmp_path / "pruned.pt"
    code, stdout, err = run_main(capsys, "prune", dense_file, "--method", "gradual", "--sparsity",
                             "0.8", "--epochs", "3", "--seed", "1", "--out", out)
    assert code == 0, err
    assert "accuracy on digits test split" in stdout and "total" in stdout
    assert f"saved {out}" in stdout
    module = load_module(out)                       # weights_only, no --trust-pickle
    assert isinstance(module, nn.Sequential)
    weights = [m.weight for m in module if isinstance(m, nn.Linear)]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert zeros == pytest.approx(0.8, abs=1e-3)
    model = load_model(out)                         # what `build` does first
    assert model.layers[0].sparsity > 0.5


def test_prune_default_out_is_beside_the_model(dense_file, capsys):
    code, stdout, err = run_main(capsys, "prune", dense_file, "--method", "magnitude",
                             "--sparsity", "0.5", "--epochs", "0")
    assert code == 0, err
    assert (dense_file.parent / "dense-magnitude-50.pt").is_file()


def test_prune_trains_on_an_npz_only(dense_file, tmp_path, capsys):
    rng = np.random.default_rng(0)
    data = write_npz(tmp_path / "d.npz", X=rng.random((50, 64), dtype=np.float32),
                     y=rng.integers(0, 10, 50).astype(np.int64))
    out = tmp_path / "p.pt"
    code, stdout, err = run_main(capsys, "prune", dense_file, "--method", "l1", "--sparsity",
                             "0.6", "--epochs", "2", "--data", data, "--out", out)
    assert code == 0, err
    assert f"accuracy on {data} (10 held-out samples" in stdout
    assert out.is_file()


def test_prune_auto_prints_per_layer_targets(dense_file, tmp_path, capsys):
    code, stdout, err = run_main(capsys, "prune", dense_file, "--method", "magnitude", "--sparsity",
                             "auto", "--max-accuracy-drop", "2", "--epochs", "1", "--out",
                             tmp_path / "a.pt")
    assert code == 0, err
    assert "target auto" in stdout and "per-layer targets" in stdout


def _npz_cases(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.random((20, 64), dtype=np.float32), rng.integers(0, 10, 20)
    return {
        "keys": (write_npz(tmp_path / "keys.npz", a=x, b=y), ["lacks 'X' and 'y'",
                                                              "numpy.savez"]),
        "y missing": (write_npz(tmp_path / "y.npz", X=x), ["lacks 'y'"]),
        "X 1-D": (write_npz(tmp_path / "x1.npz", X=x[:, 0], y=y), ["shape"]),
        "y 2-D": (write_npz(tmp_path / "y2.npz", X=x, y=y[:, None]), ["shape"]),
        "lengths": (write_npz(tmp_path / "len.npz", X=x, y=y[:5]), ["same N"]),
        "features": (write_npz(tmp_path / "feat.npz", X=x[:, :10], y=y),
                     ["does not accept the data's inputs"]),
        "X ints": (write_npz(tmp_path / "xi.npz", X=(x * 9).astype(np.int64), y=y),
                   ["not floating point"]),
        "y floats": (write_npz(tmp_path / "yf.npz", X=x, y=y.astype(np.float32)),
                     ["not integer"]),
        "labels": (write_npz(tmp_path / "lab.npz", X=x, y=y + 20), ["labels up to"]),
        "nan": (write_npz(tmp_path / "nan.npz", X=np.full_like(x, np.nan), y=y), ["NaN"]),
        "not npz": (tmp_path / "data.csv", ["'digits' or a .npz"]),
        "missing": (tmp_path / "none.npz", ["no such file"]),
    }


@pytest.mark.parametrize("case", ["keys", "y missing", "X 1-D", "y 2-D", "lengths", "features",
                                  "X ints", "y floats", "labels", "nan", "not npz", "missing"])
def test_bad_data_is_a_one_line_error(case, dense_file, tmp_path, capsys):
    path, words = _npz_cases(tmp_path)[case]
    code, _, err = run_main(capsys, "prune", dense_file, "--method", "magnitude", "--sparsity",
                        "0.5", "--data", path, "--out", tmp_path / "o.pt")
    _assert_one_line_error(code, err, *words)
    assert not (tmp_path / "o.pt").exists()


@pytest.mark.parametrize("argv, words", [
    (["--method", "nope", "--sparsity", "0.5"], ["invalid choice: 'nope'"]),
    (["--method", "gradual", "--sparsity", "1.0"], ["[0, 1)", "not 1"]),
    (["--method", "gradual", "--sparsity", "-0.1"], ["[0, 1)"]),
    (["--method", "gradual", "--sparsity", "lots"], ["'auto'"]),
    (["--method", "gradual", "--sparsity", "nan"], ["[0, 1)"]),
    (["--method", "gradual", "--sparsity", "0.5", "--pes", "0"], ["at least 1"]),
    (["--method", "gradual", "--sparsity", "0.5", "--epochs", "-1"], ["at least 0"]),
    (["--method", "gradual", "--sparsity", "auto", "--max-accuracy-drop", "-1"], [">= 0"]),
    (["--method", "gradual", "--sparsity", "0.5", "--device", "tpu"], ["invalid choice"]),
    (["--method", "gradual", "--sparsity", "0.5", "--seed", "-3"], ["at least 0"]),
    (["--method", "gradual", "--sparsity", "0.5", "--lr", "0"], ["> 0"]),
    (["--sparsity", "0.5"], ["--method"]),
])
def test_bad_options_are_one_line_errors(argv, words, dense_file, capsys):
    code, _, err = run_main(capsys, "prune", dense_file, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err
    for word in words:
        assert word in lines[0]


def test_model_without_prunable_layers(tmp_path, capsys):
    path = tmp_path / "relu.pt"
    torch.save(nn.Sequential(nn.ReLU(), nn.Flatten()), path)
    code, _, err = run_main(capsys, "prune", path, "--method", "gradual", "--sparsity", "0.5")
    _assert_one_line_error(code, err, "no prunable layers", "nn.Linear")


def test_missing_and_corrupt_model_files(tmp_path, capsys):
    code, _, err = run_main(capsys, "prune", tmp_path / "none.pt", "--method", "l1", "--sparsity",
                        "0.5")
    _assert_one_line_error(code, err, "no such file")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"PK\x03\x04garbage")
    code, _, err = run_main(capsys, "prune", bad, "--method", "l1", "--sparsity", "0.5")
    _assert_one_line_error(code, err, "corrupt")


def test_cuda_asked_for_but_absent(dense_file, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, _, err = run_main(capsys, "prune", dense_file, "--method", "gradual", "--sparsity", "0.5",
                        "--device", "cuda", "--out", tmp_path / "o.pt")
    _assert_one_line_error(code, err, "--device cuda", "CUDA is not available",
                           "--device cpu")


def test_out_folder_must_exist(dense_file, tmp_path, capsys):
    code, _, err = run_main(capsys, "prune", dense_file, "--method", "gradual", "--sparsity", "0.5",
                        "--out", tmp_path / "no" / "where.pt")
    _assert_one_line_error(code, err, "does not exist")


def test_a_real_process_prints_one_line_and_no_traceback(dense_file, tmp_path):
    bad = write_npz(tmp_path / "k.npz", a=np.zeros(3))
    proc = subprocess.run([sys.executable, "-m", "compiler", "prune", str(dense_file),
                           "--method", "magnitude", "--sparsity", "0.5", "--data", str(bad)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error: ")
    assert "Traceback" not in proc.stderr + proc.stdout
