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
    # 3 epochs at 80 % lose ~10 points on this 2 720-weight model: --force, as the point here
    # is the file's format, not its accuracy
    out = tmp_path / "pruned.pt"
    code, stdout, err = run_main(capsys, "prune", dense_file, "--method", "gradual", "--sparsity",
                             "0.8", "--epochs", "3", "--seed", "1", "--out", out, "--force")
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
    # random labels: the accuracies mean nothing, so any drop is allowed
    code, stdout, err = run_main(capsys, "prune", dense_file, "--method", "l1", "--sparsity",
                             "0.6", "--epochs", "2", "--data", data, "--out", out,
                             "--max-accuracy-drop", "100")
    assert code == 0, err
    assert f"accuracy on {data} (10 held-out samples" in stdout
    assert "a held-out part of that same file, the other 40 train" in stdout
    assert "warning" not in err                     # random rows: not digits training samples
    assert out.is_file()


def test_prune_auto_prints_per_layer_targets(dense_file, tmp_path, capsys):
    code, stdout, err = run_main(capsys, "prune", dense_file, "--method", "magnitude", "--sparsity",
                             "auto", "--max-accuracy-drop", "2", "--epochs", "3", "--out",
                             tmp_path / "a.pt")
    assert code == 0, err
    assert "target auto" in stdout and "per-layer targets" in stdout


# --max-accuracy-drop and --force ------------------------------------------------------------

_COLLAPSE = ("--method", "gradual", "--sparsity", "0.97", "--epochs", "2")  # ~75 points lost


def test_a_model_that_lost_too_much_is_refused_and_nothing_is_saved(dense_file, tmp_path,
                                                                      capsys):
    from compiler.datasets import digits_split
    _, x_test, _, y_test = digits_split()
    dense = f"dense {100 * _accuracy(load_module(dense_file), x_test, y_test):.2f} %"
    out = tmp_path / "p.pt"
    code, stdout, err = run_main(capsys, "prune", dense_file, *_COLLAPSE, "--out", out)
    # one line: the progress bars (drawn during training) are cleared before the error
    _assert_one_line_error(code, err, "accuracy points on digits test split", dense,
                           "-> pruned", "more than --max-accuracy-drop 3", "nothing saved",
                           "--force", "--sparsity", "--epochs")
    assert "saved " not in stdout
    assert list(tmp_path.iterdir()) == []           # no output, no partial file


def test_force_saves_it_with_a_warning(dense_file, tmp_path, capsys):
    out = tmp_path / "p.pt"
    code, stdout, err = run_main(capsys, "prune", dense_file, *_COLLAPSE, "--out", out,
                                 "--force")
    assert code == 0, err
    assert out.is_file() and f"saved {out}" in stdout
    warnings = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and "saved anyway because of --force" in warnings[0]
    assert "more than --max-accuracy-drop 3" in warnings[0]
    assert [p.name for p in tmp_path.iterdir()] == ["p.pt"]


def test_max_accuracy_drop_sets_the_limit(dense_file, tmp_path, capsys):
    code, stdout, err = run_main(capsys, "prune", dense_file, *_COLLAPSE, "--out",
                                 tmp_path / "p.pt", "--max-accuracy-drop", "90")
    assert code == 0, err
    assert "warning" not in err and "--max-accuracy-drop 90" in stdout
    strict = ["prune", dense_file, "--method", "magnitude", "--epochs", "0", "--out",
              tmp_path / "q.pt", "--max-accuracy-drop", "0"]
    code, _, err = run_main(capsys, *strict, "--sparsity", "0")    # nothing lost: saved
    assert code == 0, err
    code, _, err = run_main(capsys, *strict, "--sparsity", "0.3")  # ~1 point lost: refused
    _assert_one_line_error(code, err, "more than --max-accuracy-drop 0")


def test_the_check_is_one_function():
    from compiler.prune.api import AccuracyDropError, PruneConfig, _check_drop

    class R:
        accuracy_before, accuracy_after, eval_name = 0.9, 0.87, "x"
        drop = 3.0000000000000027                   # 0.9 - 0.87 in floating point

    config = PruneConfig(method="l1")
    assert config.max_accuracy_drop == 3 and _check_drop(R, config) is None
    R.accuracy_after, R.drop = 0.86, 4.0
    with pytest.raises(AccuracyDropError, match="lost 4.00 accuracy points on x"):
        _check_drop(R, config)
    config.force = True
    assert "saved anyway" in _check_drop(R, config)


# --val and the validation samples ------------------------------------------------------------

def _accuracy(model, x, y):
    with torch.no_grad():
        return float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def test_val_is_the_split_of_both_accuracies(dense_file, tmp_path, capsys):
    from compiler.datasets import digits_split
    _, x_test, _, y_test = digits_split()
    dense = load_module(dense_file)
    wrong = (dense(torch.from_numpy(x_test)).argmax(1).numpy() != y_test).nonzero()[0]
    assert len(wrong) >= 8
    # half misclassified: dense scores 50 % here, ~96 % on the whole test split
    pick = np.concatenate([wrong[:8], np.setdiff1d(np.arange(len(y_test)), wrong)[:8]])
    val = write_npz(tmp_path / "val.npz", X=x_test[pick], y=y_test[pick])
    out = tmp_path / "p.pt"
    code, stdout, err = run_main(capsys, "prune", dense_file, "--method", "magnitude",
                                 "--sparsity", "0.5", "--epochs", "1", "--val", val,
                                 "--out", out)
    assert code == 0, err
    after = _accuracy(load_module(out), x_test[pick], y_test[pick])
    assert f"accuracy on {val} (--val, 16 samples): dense 50.00 % -> pruned " \
           f"{100 * after:.2f} %" in stdout
    assert "warning" not in err                     # test-split samples: never trained on


def test_with_val_all_of_data_trains(tmp_path):
    from compiler.prune.data import load_data
    rng = np.random.default_rng(1)
    x, y = rng.random((30, 64), dtype=np.float32), rng.integers(0, 10, 30)
    data = write_npz(tmp_path / "d.npz", X=x, y=y)
    val = write_npz(tmp_path / "v.npz", X=x[:4] + 1, y=y[:4])
    d = load_data(str(data), val=str(val))
    assert np.array_equal(d.x_train, x) and np.array_equal(d.x_eval, x[:4] + 1)
    assert d.warnings == ()
    held = load_data(str(data))
    assert len(held.x_train) == 24 and len(held.x_eval) == 6


def test_overlap_with_data_warns_and_a_disjoint_val_does_not(dense_file, tmp_path, capsys):
    rng = np.random.default_rng(2)
    x, y = rng.random((60, 64), dtype=np.float32), rng.integers(0, 10, 60)
    data = write_npz(tmp_path / "d.npz", X=x, y=y)
    argv = ["prune", dense_file, "--method", "magnitude", "--sparsity", "0.5", "--epochs", "1",
            "--data", data, "--max-accuracy-drop", "100", "--out", tmp_path / "p.pt"]
    overlapping = write_npz(tmp_path / "o.npz", X=np.concatenate([x[5:8], x[:2] + 0.5]),
                            y=np.concatenate([y[5:8], y[:2]]))
    code, _, err = run_main(capsys, *argv, "--val", overlapping)
    assert code == 0, err
    assert f"warning: --val {overlapping}: 3 of its 5 samples are also in --data {data} " \
           f"(identical rows)" in err
    disjoint = write_npz(tmp_path / "j.npz", X=x[:5] + 0.5, y=y[:5])
    code, _, err = run_main(capsys, *argv, "--val", disjoint)
    assert code == 0, err
    assert "warning" not in err


def test_digits_training_samples_warn(dense_file, tmp_path, capsys):
    """The digits split knows what the bundled examples were trained on."""
    from compiler.datasets import digits_split
    x_train, x_test, y_train, y_test = digits_split()
    argv = ["prune", dense_file, "--method", "magnitude", "--sparsity", "0.5", "--epochs", "0",
            "--out", tmp_path / "p.pt"]
    trained = write_npz(tmp_path / "train.npz", X=x_train[:200], y=y_train[:200])
    code, stdout, err = run_main(capsys, *argv, "--data", trained)     # held out of it
    assert code == 0, err
    assert f"warning: the held-out part of --data {trained}: 40 of its 40 samples are in the " \
           f"training part of the digits split" in err
    assert "a held-out part of that same file" in stdout
    code, _, err = run_main(capsys, *argv, "--val", trained)           # --data digits
    assert code == 0, err
    assert f"warning: --val {trained}: 200 of its 200 samples are also in --data digits" in err
    test = write_npz(tmp_path / "test.npz", X=x_test, y=y_test)
    for flags in (["--data", test], ["--val", test], ["--data", test, "--val", test]):
        code, _, err = run_main(capsys, *argv, *flags)
        assert code == 0, err
        if flags[-2] == "--val" and flags[0] == "--data":
            assert "also in --data" in err and "digits split" not in err
        else:
            assert "warning" not in err, flags


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
    _assert_one_line_error(code, err, f"--data {path}", *words)
    assert not (tmp_path / "o.pt").exists()


@pytest.mark.parametrize("case", ["keys", "y missing", "X 1-D", "lengths", "X ints",
                                  "y floats", "nan", "not npz", "missing"])
def test_bad_val_is_a_one_line_error_naming_val(case, dense_file, tmp_path, capsys):
    path, words = _npz_cases(tmp_path)[case]
    code, _, err = run_main(capsys, "prune", dense_file, "--method", "magnitude", "--sparsity",
                        "0.5", "--val", path, "--out", tmp_path / "o.pt")
    _assert_one_line_error(code, err, f"--val {path}", *[w for w in words if "digits" not in w])
    assert not (tmp_path / "o.pt").exists()


def test_val_that_does_not_fit_the_model(dense_file, tmp_path, capsys):
    rng = np.random.default_rng(0)
    x, y = rng.random((20, 64), dtype=np.float32), rng.integers(0, 10, 20)
    narrow = write_npz(tmp_path / "n.npz", X=x[:, :10], y=y)
    code, _, err = run_main(capsys, "prune", dense_file, "--method", "magnitude", "--sparsity",
                            "0.5", "--val", narrow)
    _assert_one_line_error(code, err, f"--val {narrow}: its samples have shape [10] but the "
                                      f"model takes [64]", "same features")
    labels = write_npz(tmp_path / "l.npz", X=x, y=y + 20)
    code, _, err = run_main(capsys, "prune", dense_file, "--method", "magnitude", "--sparsity",
                            "0.5", "--val", labels)
    _assert_one_line_error(code, err, f"--val {labels} has labels up to 29", "only 10 outputs")


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
