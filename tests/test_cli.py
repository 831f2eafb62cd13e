"""The documented CLI end to end, and a one-line error for each kind of bad input."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from models import torch_mlp

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "digits_mlp.pt"


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "compiler", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=900)


def assert_one_line_error(result, *fragments):
    assert result.returncode != 0, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.slow
@pytest.mark.parametrize("simulator", ["icarus", "verilator"])
def test_build_and_simulate_the_example(tmp_path, simulator):
    out = tmp_path / "build"
    result = cli("build", EXAMPLE, "--board", "arty_a7", "--pes", "8", "--out", out,
                 "--no-bitstream")
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    for key in ("board", "pes", "grid", "plan", "layers", "input_scale", "output_scale",
                "cycles", "verilog", "resources", "fmax_mhz", "bitstream"):
        assert key in report
    assert report["pes"] == 8 and report["grid"] == "4x2" and report["board"] == "arty_a7_35"
    assert [layer["out_features"] for layer in report["layers"]] == [128, 64, 10]
    assert all(layer["sparsity"] > 0.7 for layer in report["layers"])
    assert report["totals"]["sparsity"] >= 0.9
    assert report["cycles"]["measured"] is None and report["cycles"]["dense"] == 2128
    assert Path(report["verilog"]).is_file()

    inputs = tmp_path / "x.npy"
    np.save(inputs, np.load(ROOT / "examples" / "digits_test_x.npy")[:6])
    outputs = tmp_path / "out.npz"
    result = cli("simulate", out, "--simulator", simulator, "--inputs", inputs, "--outputs",
                 outputs)
    assert result.returncode == 0, result.stderr
    assert "bit-exact" in result.stdout
    with np.load(outputs) as f:
        assert np.array_equal(f["hw"], f["reference"]) and f["hw"].shape == (6, 10)
        assert f["dequantized"].shape == (6, 10) and f["cycles"].shape == (6,)
        assert f["intervals"].shape == (6,)
        scale = report["output_scale"]
        assert np.array_equal(f["dequantized"], f["hw"] * scale)
    report = json.loads((out / "report.json").read_text())
    sim = report["cycles"]["simulation"]
    assert report["cycles"]["measured"] == sim["measured_mean"]
    assert sim["latency_mean"] > sim["ideal_mean"]

    # with labels: the RTL's accuracy beside float PyTorch's, on the same inputs
    labels = np.load(ROOT / "examples" / "digits_test_y.npy")[:6]
    wrong = labels.copy()
    wrong[:3] = (wrong[:3] + 1) % 10
    np.save(tmp_path / "y.npy", wrong)
    result = cli("simulate", out, "--simulator", simulator, "--inputs", inputs, "--labels",
                 tmp_path / "y.npy")
    assert result.returncode == 0, result.stderr
    with np.load(outputs) as f:
        rtl = float((f["hw"].argmax(1) == wrong).mean())
    acc = json.loads((out / "report.json").read_text())["accuracy"]
    assert acc["inputs"] == 6 and acc["rtl"] == round(rtl, 6) and acc["rtl"] <= 0.5
    model = torch.load(EXAMPLE, weights_only=False).eval()
    with torch.no_grad():
        x6 = torch.from_numpy(np.load(inputs).astype(np.float32))
        float_acc = float((model(x6).argmax(1).numpy() == wrong).mean())
    assert acc["float"] == round(float_acc, 6)
    assert f"RTL {100 * rtl:.2f} %, float PyTorch {100 * float_acc:.2f} %" in result.stdout
    np.save(tmp_path / "short.npy", labels[:4])
    assert_one_line_error(cli("simulate", out, "--inputs", inputs, "--labels",
                              tmp_path / "short.npy"), "labels array", "has shape [4]",
                          "there are 6 inputs")
    np.save(tmp_path / "big.npy", labels + 10)
    assert_one_line_error(cli("simulate", out, "--inputs", inputs, "--labels",
                              tmp_path / "big.npy"), "the model has 10 outputs")


@pytest.mark.slow
def test_simulate_a_build_with_uploaded_weights(tmp_path):
    """`simulate` on a build whose weights are uploaded (iCE40 SPRAM) streams the weight image
    in first, as the board's runtime does over the UART."""
    out = tmp_path / "build"
    result = cli("build", EXAMPLE, "--board", "icebreaker", "--pes", "1", "--weights",
                 "uploaded", "--out", out, "--no-bitstream")
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "report.json").read_text())["plan"]["options"]["weights"] \
        == "uploaded"
    assert "uploaded_entries" in (out / "sparsemac_top.v").read_text()
    inputs = tmp_path / "x.npy"
    np.save(inputs, np.load(ROOT / "examples" / "digits_test_x.npy")[:4])
    result = cli("simulate", out, "--inputs", inputs, "--outputs", tmp_path / "o.npz")
    assert result.returncode == 0, result.stderr
    with np.load(tmp_path / "o.npz") as f:
        assert np.array_equal(f["hw"], f["reference"]) and f["hw"].shape == (4, 10)


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    (d / "text.pt").write_text("not a model")
    good = EXAMPLE.read_bytes()
    (d / "corrupt.pt").write_bytes(good[: len(good) // 3])
    torch.save(nn.Sequential(nn.Linear(4, 3), nn.Tanh()), d / "tanh.pt")
    nan = torch_mlp([4, 3, 2])
    with torch.no_grad():
        nan[0].weight[0, 0] = float("nan")
    torch.save(nan, d / "nan.pt")
    np.save(d / "cal_wrong.npy", np.zeros((10, 5), dtype=np.float32))
    np.save(d / "x_wrong.npy", np.zeros((3, 63), dtype=np.float32))
    torch.save({"model": _Evil()}, d / "evil.pt")
    return d


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_missing_file(tmp_path):
    assert_one_line_error(cli("build", tmp_path / "nope.pt", "--board", "arty_a7"),
                          "no such file")


def test_not_a_model_file(bad_files):
    assert_one_line_error(cli("build", bad_files / "text.pt", "--board", "arty_a7"),
                          "not a model file")


def test_corrupt_file(bad_files):
    assert_one_line_error(cli("build", bad_files / "corrupt.pt", "--board", "arty_a7"),
                          "corrupt")


def test_unsupported_layer(bad_files):
    assert_one_line_error(cli("build", bad_files / "tanh.pt", "--board", "arty_a7"),
                          "unsupported layer '1' (Tanh)", "supported: ", "Linear")


def test_nan_weights(bad_files):
    assert_one_line_error(cli("build", bad_files / "nan.pt", "--board", "arty_a7"),
                          "NaN or Inf")


def test_calibration_of_the_wrong_shape(bad_files, tmp_path):
    assert_one_line_error(cli("build", EXAMPLE, "--board", "arty_a7", "--calibration",
                              bad_files / "cal_wrong.npy", "--out", tmp_path),
                          "shape [10, 5]", "[N, 64]")


def test_unknown_board(tmp_path):
    assert_one_line_error(cli("build", EXAMPLE, "--board", "de10nano", "--out", tmp_path),
                          "unknown board 'de10nano'", "icebreaker", "arty_a7")


def test_fewer_than_one_pe(tmp_path):
    assert_one_line_error(cli("build", EXAMPLE, "--board", "arty_a7", "--pes", "0"),
                          "--pes", "at least 1")


def test_a_pickle_needing_code_is_refused_and_nothing_runs(bad_files, tmp_path):
    result = cli("build", bad_files / "evil.pt", "--board", "arty_a7", "--out", tmp_path / "o",
                 cwd=tmp_path)
    assert_one_line_error(result, "refused", "--trust-pickle")
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.slow
def test_simulation_inputs_of_the_wrong_shape(bad_files, tmp_path):
    out = tmp_path / "b"
    assert cli("build", EXAMPLE, "--board", "arty_a7", "--pes", "2", "--out", out,
               "--no-bitstream").returncode \
        == 0
    assert_one_line_error(cli("simulate", out, "--inputs", bad_files / "x_wrong.npy"),
                          "shape [3, 63]", "[N, 64]")
    assert_one_line_error(cli("simulate", tmp_path / "nowhere"), "not a build folder")


def test_gateware_choices_reach_the_gateware(tmp_path):
    reports = {}
    for memory, pipeline, banks, pointers in (("block", "deep", "1", "counted"),
                                              ("distributed", "short", "2,1,2", "csc")):
        out = tmp_path / f"{memory}-{pipeline}"
        result = cli("build", EXAMPLE, "--board", "arty_a7", "--pes", "6", "--grid", "3x2",
                     "--memory", memory, "--pipeline", pipeline, "--banks", banks,
                     "--pointers", pointers, "--fifo-depth", "12", "--out", out,
                     "--no-bitstream")
        assert result.returncode == 0, result.stderr
        reports[memory] = report = json.loads((out / "report.json").read_text())
        assert (report["memory_style"], report["pipeline"], report["pointers"]) == \
            (memory, pipeline, pointers)
        assert report["banks"] == [int(b) for b in banks.split(",")] * (3 if banks == "1" else 1)
        assert report["grid"] == "3x2" and report["fifo_depth"] == 12
        verilog = (out / "sparsemac_top.v").read_text()
        # one accumulator memory per bank in every PE; the block style registers the pointer
        # words before use (`l2_item`)
        header = next(line for line in verilog.splitlines()
                      if line.startswith("module \\sparsemac_top.pe0_0.banks "))
        assert header
        banks_of_pe = len(re.findall(r"^  reg .* bank\d+ \[", verilog, re.M)) // 6
        assert banks_of_pe == sum(report["banks"])
        assert ("l2_item" in verilog) == (memory == "block")
    # same program, same ideal cycles; only the gateware differs
    assert reports["block"]["cycles"]["ideal"] == reports["distributed"]["cycles"]["ideal"]


def test_a_grid_that_does_not_match_the_pes_is_refused(tmp_path):
    assert_one_line_error(cli("build", EXAMPLE, "--board", "arty_a7", "--pes", "8", "--grid",
                              "4x4", "--out", tmp_path), "--grid 4x4 has 16 PEs", "--pes is 8")
    assert_one_line_error(cli("build", EXAMPLE, "--board", "arty_a7", "--grid", "2x4",
                              "--out", tmp_path), "--grid", "at least as many rows")
    assert_one_line_error(cli("build", EXAMPLE, "--board", "arty_a7", "--pes", "4",
                              "--banks", "2,2", "--out", tmp_path), "--banks", "3 layers")


def test_unknown_memory_style_is_refused(tmp_path):
    result = cli("build", EXAMPLE, "--board", "arty_a7", "--memory", "sram", "--out", tmp_path)
    assert result.returncode == 2 and "--memory" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_build_and_simulate_the_cnn_example(tmp_path):
    """Issue 5: the CNN example through the same CLI, with image-shaped arrays [N, 1, 8, 8]."""
    cnn = ROOT / "examples" / "digits_cnn.pt"
    images = np.load(ROOT / "examples" / "digits_test_images.npy")
    calibration = tmp_path / "cal.npy"
    np.save(calibration, images[:64])
    out = tmp_path / "cnn"
    result = cli("build", cnn, "--board", "arty_a7", "--pes", "4", "--calibration", calibration,
                 "--out", out, "--no-bitstream")
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["layers"][0]["in_features"] == 64 and report["pes"] == 4

    inputs, outputs = tmp_path / "x.npy", tmp_path / "out.npz"
    np.save(inputs, images[64:68])
    result = cli("simulate", out, "--simulator", "verilator", "--inputs", inputs,
                 "--outputs", outputs)
    assert result.returncode == 0, result.stderr
    with np.load(outputs) as f:
        assert np.array_equal(f["hw"], f["reference"]) and f["hw"].shape == (4, 10)
        assert f["dequantized"].shape == (4, 10)
        model = torch.load(cnn, weights_only=False).eval()
        with torch.no_grad():
            float_out = model(torch.from_numpy(images[64:68])).numpy()
        # int8 against float PyTorch: the same class for each of these four digits
        assert np.array_equal(f["dequantized"].argmax(1), float_out.argmax(1))

    # image inputs must be images: a flat [N, 64] array is refused with the expected shape
    flat = tmp_path / "flat.npy"
    np.save(flat, images[:3].reshape(3, 1, 4, 16))
    assert_one_line_error(cli("simulate", out, "--inputs", flat), "[N, 1, 8, 8]")
