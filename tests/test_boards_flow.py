"""Real bitstreams through the open flows (YoWASP yosys + nextpnr from PyPI), and the Arty's
plans and yosys estimate. Slow: minutes each; they run in CI."""

import json
import shutil
from pathlib import Path

import pytest

from compiler.cli import main

EXAMPLE = "examples/digits_mlp.pt"


@pytest.mark.slow
@pytest.mark.parametrize("board, target, suffix", [
    # each at its board's own clock target (a build that misses it fails)
    ("icebreaker", 48.0, ".bin"), ("ulx3s", 100.0, ".bit")])
def test_example_bitstream(board, target, suffix, tmp_path):
    out = tmp_path / board
    # P = 1 keeps CI's wall time down; docs/benchmarks.md has every P
    args = ["build", EXAMPLE, "--board", board, "--pes", "1", "--out", str(out)]
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    bitstream = Path(report["bitstream"])
    assert bitstream.suffix == suffix and bitstream.stat().st_size > 10_000
    assert report["timing"]["met"] and report["fmax_mhz"] >= target
    assert abs(report["timing"]["target_mhz"] - target) < 1
    res = report["resources"]
    kinds = {"icebreaker": ("ICESTORM_LC", "ICESTORM_RAM", "ICESTORM_DSP", "ICESTORM_PLL"),
             "ulx3s": ("TRELLIS_COMB", "DP16KD", "MULT18X18D", "EHXPLLL")}[board]
    for kind in kinds:
        assert res[kind]["used"] >= 1 and res[kind]["available"] >= res[kind]["used"]
    assert report["board_flow"]["pll"] is not None and report["board_flow"]["seed"] == 1
    assert "Fmax" in (out / "report.md").read_text()


@pytest.mark.slow
def test_icebreaker_uploaded_weights_live_in_spram(tmp_path):
    """--weights uploaded: the weight memory becomes an SB_SPRAM256KA (no initial image), the
    report says how many bytes the host must upload, and EBRs are freed for the rest."""
    from compiler.serialize import load_program
    from hw.images import weight_image

    out = tmp_path / "spram"
    args = ["build", EXAMPLE, "--board", "icebreaker", "--pes", "1", "--weights", "uploaded",
            "--allow-timing-failure", "--out", str(out)]
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["resources"]["ICESTORM_SPRAM"]["used"] == 1
    flow = report["board_flow"]
    assert flow["weights"] == "uploaded" and "-spram" in flow["flow"]
    assert flow["weight_image_bytes"] == len(weight_image(load_program(out / "program.npz")))
    assert report["fit"]["spram_blocks"]["used"] == 1
    print(f"iCEBreaker, uploaded weights in SPRAM: {report['fmax_mhz']} MHz")


@pytest.mark.slow
def test_arty_plans_and_estimate(tmp_path):
    out = tmp_path / "arty"
    assert main(["build", EXAMPLE, "--board", "arty_a7", "--pes", "2", "--out", str(out),
                 "--synth-estimate"]) == 0
    report = json.loads((out / "report.json").read_text())
    flow = report["board_flow"]
    assert Path(flow["plans"]["vivado"]).read_text().count("synth_design") == 1
    assert "nextpnr-xilinx" in Path(flow["plans"]["openxc7_script"]).read_text()
    res = report["resources"]
    assert res["LUT"]["used"] > 500 and res["DSP48E1"]["used"] >= 2
    if shutil.which("vivado") is None and shutil.which("nextpnr-xilinx") is None:
        assert report["bitstream"] is None      # estimate only, said so in the report
        assert "estimate only" in flow["flow"]
        # without --synth-estimate the fit check stands in: the plans, no synthesis
        plain = tmp_path / "plain"
        assert main(["build", EXAMPLE, "--board", "arty_a7", "--pes", "2", "--out",
                     str(plain)]) == 0
        report = json.loads((plain / "report.json").read_text())
        # no synthesis: no LUT count of its own, the fit check's estimate beside it
        assert "LUT" not in report["resources"] and "no synthesis" in report["resources"]["source"]
        assert report["fit"]["luts"]["used"] > 500
        assert not (plain / "openxc7" / "synth_xilinx.log").exists()
        assert "fit check" in report["board_flow"]["flow"]
        assert Path(report["board_flow"]["plans"]["vivado"]).is_file()
