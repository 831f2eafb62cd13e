"""``python -m compiler inspect``: the sparsity table and the heatmap PNG."""

import pytest
import torch
import torch.nn as nn

from _prune_helpers import run_main
from compiler.prune.inspection import inspect_model, plot_sparsity
from compiler.prune.metrics import sparsity_report

PNG = b"\x89PNG\r\n\x1a\n"


def _models():
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))
    pruned = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))
    pruned.load_state_dict(dense.state_dict())
    with torch.no_grad():
        pruned[0].weight[:3] = 0.0            # half the rows of layer 0
        pruned[2].weight[:, ::2] = 0.0        # every other column of layer 2
    return dense, pruned


@pytest.fixture
def files(tmp_path):
    dense, pruned = _models()
    torch.save(dense, tmp_path / "dense.pt")
    torch.save(pruned, tmp_path / "pruned.pt")
    return tmp_path


def test_inspect_prints_the_table_and_writes_the_heatmap_beside_the_model(files, capsys):
    code, out, err = run_main(capsys, "inspect", files / "pruned.pt")
    assert code == 0, err
    assert "Linear" in out and "total" in out
    assert "24/48" in out and "50.0 %" in out          # layer 0: 24 of 48 weights left
    assert "9/18" in out                               # layer 2: 9 of 18
    assert "needs the dense model" in out              # magnitude share needs --reference
    png = files / "pruned-sparsity.png"
    assert png.read_bytes().startswith(PNG)


def test_inspect_with_reference_and_png_path(files, capsys):
    png = files / "map.png"
    code, out, err = run_main(capsys, "inspect", files / "pruned.pt", "--reference",
                          files / "dense.pt", "--png", png)
    assert code == 0, err
    assert "n/a" not in out
    assert png.read_bytes().startswith(PNG)
    dense, pruned = _models()
    expected = sparsity_report(pruned, dense).total.magnitude
    assert f"{100 * expected:.1f} %" in out


def test_inspect_library_matches_metrics_and_plots(tmp_path):
    dense, pruned = _models()
    report = inspect_model(pruned, dense)
    assert report.total.parameter == pytest.approx((24 + 9) / 66)
    assert report.layers[0].structural == pytest.approx(0.5)
    path = plot_sparsity(pruned, report, tmp_path / "p.png", title="t")
    assert path.read_bytes().startswith(PNG)


def test_inspect_errors_are_one_line(files, tmp_path, capsys):
    torch.save(nn.Sequential(nn.ReLU()), tmp_path / "relu.pt")
    other = nn.Sequential(nn.Linear(8, 3))
    torch.save(other, tmp_path / "other.pt")
    cases = [
        (["inspect", tmp_path / "relu.pt"], "no prunable layers"),
        (["inspect", files / "pruned.pt", "--png", tmp_path / "no" / "x.png"], "does not exist"),
        (["inspect", files / "pruned.pt", "--png", tmp_path / "x.jpg"], ".png"),
        (["inspect", files / "pruned.pt", "--reference", tmp_path / "other.pt"],
         "do not match"),
        (["inspect", tmp_path / "missing.pt"], "no such file"),
    ]
    for argv, words in cases:
        code, _, err = run_main(capsys, *argv)
        assert code == 2, (argv, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], err
