"""The FPGA family objects (boards/families/): each one's fit-check numbers, synthesis
options, default gateware styles, PLLs and flow facts, pinned to what the code computed before
the families owned them (issue 12)."""

import pytest

from boards import BOARDS, get_board
from boards.families import (ECP5, FAMILIES, GOWIN, ICE40, XC7, Family, family_of_platform,
                             get_family)
from core.errors import InputError
from hw.options import Choices, HardwareOptions

EXAMPLE = "examples/digits_mlp.pt"


def _numbers(est):
    d = est.as_dict()
    return (d["bram_blocks"], d["spram_blocks"], d["dsps"], d["luts"], d["ffs"],
            d["block_ram_bits"], d["logic_memory_bits"], d["fits"], d["problems"])


def test_every_board_names_a_registered_family():
    assert list(FAMILIES) == ["ice40", "ecp5", "xc7", "gowin"]
    for board in BOARDS.values():
        assert isinstance(board.family, Family) and FAMILIES[board.family.name] is board.family
    assert get_family("ecp5") is ECP5
    with pytest.raises(InputError, match="unknown FPGA family"):
        get_family("altera")


def test_platform_classes_map_to_families():
    from amaranth_boards.arty_a7 import ArtyA7_35Platform
    from amaranth_boards.icebreaker import ICEBreakerPlatform
    from amaranth_boards.ulx3s import ULX3S_85F_Platform
    assert family_of_platform(ICEBreakerPlatform) is ICE40
    assert family_of_platform(ULX3S_85F_Platform) is ECP5
    assert family_of_platform(ArtyA7_35Platform) is XC7
    assert family_of_platform(object) is None
    board = get_board("amaranth_boards.nexys4ddr:Nexys4DDRPlatform")
    assert (board.family, board.flow, board.clock_mhz) == (XC7, "xilinx", 100.0)
    assert get_board("amaranth_boards.tinyfpga_bx:TinyFPGABXPlatform").clock_mhz == 48.0
    # 7-series boards get the openXC7 flavour, whose files Yosys reads
    assert get_board("arty_a7").create_platform().toolchain == "Xray"


def test_fit_numbers_per_family(digits):
    from boards.fit import estimate

    p2, p8, p16 = digits(2), digits(8), digits(16)
    ice, ulx25, arty = get_board("icebreaker"), get_board("ulx3s_25f"), get_board("arty_a7_35")
    assert _numbers(estimate(p2, ice, ICE40.options_for(p2))) == (
        {"used": 35, "available": 30}, {"used": 0, "available": 4},
        {"used": 6, "available": 8}, {"used": 4943, "available": 5280},
        {"used": 2850, "available": 5280}, 48258, 236, False,
        ["block RAM: 35 x 4 kbit EBR needed (48258 bits of weights, pointers and buffers), "
         "30 available",
         "logic: about 4943 logic cells estimated (2378 LUT4 + 2850 flip-flops), 5280 "
         "available (4857 usable)"])
    up = estimate(digits(1), ice, HardwareOptions(weights="uploaded", memory="block",
                                                  pipeline="deep", accumulators="block",
                                                  pointers="counted"))
    assert (up.spram_blocks, up.bram_blocks, up.luts, up.ffs, up.fits) == (1, 17, 3326, 1875,
                                                                          True)
    assert _numbers(estimate(p16, ulx25, ECP5.options_for(p16))) == (
        {"used": 16, "available": 56}, {"used": 0, "available": 0},
        {"used": 24, "available": 28}, {"used": 18426, "available": 24288},
        {"used": 10030, "available": 24288}, 22126, 55248, True, [])
    # RAMB36 units, DSP48E1 25 x 18 tiles
    assert _numbers(estimate(p8, arty, XC7.options_for(p8))) == (
        {"used": 9, "available": 50}, {"used": 0, "available": 0},
        {"used": 12, "available": 90}, {"used": 6740, "available": 20800},
        {"used": 5248, "available": 41600}, 32758, 28264, True, [])


def test_logic_dsp_and_fmax_models(digits):
    from boards.fit import component_logic, dsps
    from hw.images import geometry

    p8 = digits(8)
    assert component_logic(geometry(p8, ECP5.options_for(p8)), ECP5) == {
        "pe_lut": 499, "pe_ff": 336, "reducer_lut": 431, "reducer_ff": 340,
        "fixed_lut": 1800, "fixed_ff": 1200}
    assert dsps(p8, XC7) == (8, 4) and dsps(p8, ECP5) == (8, 8) and dsps(p8, ICE40) == (8, 8)
    assert (ICE40.predicted_fmax(4), XC7.predicted_fmax(8)) == (50.0, 141.0)
    assert ECP5.predicted_fmax(16) == round(ECP5.fmax_points[16], 1)
    assert (ICE40.dsp_tiles(19, 17), ECP5.dsp_tiles(19, 17), XC7.dsp_tiles(19, 17)) == (2, 2, 1)


def test_synth_options_per_family():
    uploaded = HardwareOptions(weights="uploaded")
    ice, ulx, arty = get_board("icebreaker"), get_board("ulx3s"), get_board("arty_a7")
    assert ICE40.synth_options(ice) == "-dsp -device u -dff"
    assert ICE40.synth_options(ice, uploaded) == "-dsp -device u -dff -spram"
    lp = get_board("amaranth_boards.tinyfpga_bx:TinyFPGABXPlatform")
    assert ICE40.synth_options(lp) == "-dsp -device lp -dff"
    assert ECP5.synth_options(ulx, uploaded) == "" and XC7.synth_options(arty) == ""
    assert [f.flow_tools for f in (ICE40, ECP5, XC7)] == [
        ("yosys", "nextpnr-ice40", "icepack"), ("yosys", "nextpnr-ecp5", "ecppack"),
        ("yosys",)]
    assert [(f.nextpnr, f.bitstream_suffix) for f in (ICE40, ECP5, XC7)] == [
        ("nextpnr-ice40", ".bin"), ("nextpnr-ecp5", ".bit"), ("", ".bit")]
    # flash --persist: iCE40 boards always program their flash
    assert (ICE40.flash_persist_args, ECP5.flash_persist_args, XC7.flash_persist_args) == \
        ((), ("-f",), ("-f",))
    assert ICE40.resource_names["ICESTORM_LC"] == "logic cells (LUT4+FF)"
    assert ECP5.resource_names["DP16KD"] == "block RAM (18 kbit DP16KD)"


def test_default_gateware_styles_per_family(digits):
    p1, p4, p8 = digits(1), digits(4), digits(8)
    defaults = HardwareOptions()
    assert ICE40.options_for(p4) == HardwareOptions(memory="block", pipeline="deep",
                                                    accumulators="block", pointers="counted")
    assert ECP5.options_for(p4) == defaults
    assert XC7.options_for(p1) == defaults                 # P = 1: 1702 entries, block RAM
    assert XC7.options_for(p8) == HardwareOptions(memory="distributed")
    assert XC7.options_for(p8, Choices(memory="block", banks=(1, 2, 1))) == \
        HardwareOptions(memory="block", banks=(1, 2, 1))


def test_plls_per_family():
    from boards.clocking import ClockReset

    def clocking(board, mhz):
        c = ClockReset(family=board.family, osc_hz=board.osc_hz, target_hz=mhz * 1e6)
        return c.pll, c.actual_hz, c.link_hz

    ice, ulx, arty = get_board("icebreaker"), get_board("ulx3s"), get_board("arty_a7")
    pll, actual, link = clocking(ice, 48.0)
    assert ((pll.divr, pll.divf, pll.divq, pll.filter_range), actual, link) == \
        ((0, 63, 4, 1), 48e6, 12e6)
    pll, actual, link = clocking(ulx, 60.0)
    assert ((pll.clki_div, pll.clkfb_div, pll.clkop_div, pll.clkop_cphase), actual, link) == \
        ((5, 12, 10, 4), 60e6, 25e6)
    assert ECP5.pll(25, 100) == clocking(ulx, 100.0)[0]
    # no PLL on 7-series: the design runs at the oscillator
    assert clocking(arty, 50.0) == (None, 100e6, 100e6)
    assert XC7.pll(100, 50) is None


def _memory(cls):
    mem = cls(shape=16, depth=64, init=[])
    return mem, mem.write_port(), mem.read_port()


@pytest.mark.parametrize("board, maps", [("icebreaker", True), ("ulx3s", False),
                                         ("arty_a7", False)])
def test_the_platform_maps_uploaded_weights(board, maps):
    """Amaranth's get_memory() hook, the family's map_memory: on iCE40 the uploaded weights
    (and only they) get ram_style "huge", i.e. SPRAM; the design itself never names a family."""
    from amaranth.back import rtlil
    from amaranth.hdl import Module
    from amaranth.lib import memory

    from hw.weights import UploadedWeightMemory

    platform = get_board(board).create_platform()
    for cls, want in ((UploadedWeightMemory, maps), (memory.Memory, False)):
        m = Module()
        m.submodules.w, wp, rp = _memory(cls)
        text = rtlil.convert(m, platform=platform, ports=[wp.addr, wp.data, wp.en, rp.addr,
                                                          rp.data])
        assert ('"huge"' in text) == want, (board, cls.__name__)


def test_memory_with_attrs_behaves_as_the_memory():
    """The wrapper the hook returns: the same memory, the same ports, random writes and reads."""
    import numpy as np
    from amaranth.hdl import Module
    from amaranth.lib import memory
    from amaranth.sim import Simulator

    from boards.families.base import MemoryWithAttrs

    top = Module()
    mem, wp, rp = _memory(memory.Memory)
    mem._MustUse__silence = True        # only its ports are used, as a get_memory() hook does
    top.submodules.impl = MemoryWithAttrs(mem, {"ram_style": "huge"})
    rng = np.random.default_rng(3)
    model = [0] * 64
    seen = []

    async def bench(ctx):
        for _ in range(300):
            addr, data, en = int(rng.integers(64)), int(rng.integers(1 << 16)), int(rng.integers(2))
            ctx.set(wp.addr, addr)
            ctx.set(wp.data, data)
            ctx.set(wp.en, en)
            ctx.set(rp.addr, int(rng.integers(64)))
            want = model[ctx.get(rp.addr)]
            await ctx.tick()
            seen.append((ctx.get(rp.data), want))
            if en:
                model[addr] = data

    sim = Simulator(top)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    got, want = np.array(seen).T
    assert np.array_equal(got, want)


# ---- Gowin (boards/families/gowin.py) -----------------------------------------------------

def test_gowin_family_claims_the_tang_platforms():
    from amaranth_boards.tang_nano_9k import TangNano9kPlatform
    from amaranth_boards.tang_primer_20k import (TangPrimer20kDockPlatform,
                                                 TangPrimer20kLitePlatform)
    for cls in (TangNano9kPlatform, TangPrimer20kDockPlatform, TangPrimer20kLitePlatform):
        assert family_of_platform(cls) is GOWIN
    assert get_family("gowin") is GOWIN
    nano, primer = get_board("tang_nano_9k"), get_board("tang_primer_20k")
    assert (nano.family, nano.flow, nano.device, nano.programmer) == (
        GOWIN, "nextpnr-himbaechel-gowin", "GW1NR-9C", "-b tangnano9k")
    assert (primer.device, primer.programmer) == ("GW2A-18C", "-b tangprimer20k")
    assert nano.osc_hz == 27e6 and primer.osc_hz == 27e6
    assert (nano.luts, nano.ffs, nano.dsps, nano.bram_bits) == (8640, 6480, 20, 26 * 18432)
    # a Gowin platform outside the table: its chip family ("GW2A-18C") finds the resources
    lite = get_board("amaranth_boards.tang_primer_20k:TangPrimer20kLitePlatform")
    assert (lite.family, lite.device, lite.luts, lite.clock_mhz) == (GOWIN, "GW2A-18C", 20736,
                                                                     27.0)


def test_gowin_flow_facts_and_default_styles(digits):
    nano, primer = get_board("tang_nano_9k"), get_board("tang_primer_20k")
    assert GOWIN.synth_options(nano) == "-family gw1n"
    assert GOWIN.synth_options(primer, HardwareOptions(weights="uploaded")) == "-family gw2a"
    assert GOWIN.flow_tools == ("yosys", "nextpnr-himbaechel", "gowin_pack")
    assert (GOWIN.nextpnr, GOWIN.bitstream_suffix, GOWIN.flash_persist_args) == (
        "nextpnr-himbaechel", ".fs", ("-f",))
    assert GOWIN.resource_names["BSRAM"] == "block RAM (18 kbit BSRAM)"
    # block RAM weights and pointers, LUT-RAM accumulators, the short pipeline
    assert GOWIN.options_for(digits(1)) == HardwareOptions()
    assert GOWIN.options_for(digits(4), Choices(pipeline="deep")) == \
        HardwareOptions(pipeline="deep")
    assert (GOWIN.predicted_fmax(1, nano), GOWIN.predicted_fmax(4, primer)) == (89.0, 176.0)
    # a remainder under 10 bits stays in logic beside the MULT18X18
    assert (GOWIN.dsp_tiles(8, 8), GOWIN.dsp_tiles(19, 17), GOWIN.dsp_tiles(28, 17)) == (1, 1, 2)


def test_gowin_fit_estimate_digits_p1_on_the_nano_9k(digits):
    from boards.fit import estimate

    p1 = digits(1)
    est = estimate(p1, get_board("tang_nano_9k"), GOWIN.options_for(p1))
    d = est.as_dict()
    assert d["fits"] and d["problems"] == []
    assert d["bram_blocks"]["available"] == 26 and 1 <= d["bram_blocks"]["used"] <= 8
    assert d["dsps"] == {"used": 2, "available": 20}
    # the build's nextpnr report: 3626 LUT4, 1515 DFF (docs/benchmarks.md, "Gowin")
    assert 3000 <= d["luts"]["used"] <= 4300 and 1200 <= d["ffs"]["used"] <= 2200


def test_gowin_pll_matches_apicula_gowin_pll():
    from boards.clocking import ClockReset
    from boards.families.gowin import gowin_pll

    # the settings Apicula's gowin_pll prints for these (27 MHz in)
    assert gowin_pll(27, 81) == GOWIN.pll(27, 81)
    p = gowin_pll(27, 81)
    assert (p.idiv_sel, p.fbdiv_sel, p.odiv_sel, p.f_out_mhz) == (0, 2, 8, 81.0)
    p = gowin_pll(27, 54)
    assert (p.idiv_sel, p.fbdiv_sel, p.odiv_sel, p.f_out_mhz) == (0, 1, 16, 54.0)
    with pytest.raises(ValueError, match="rPLL makes"):
        gowin_pll(27, 2000)
    c = ClockReset(family=GOWIN, osc_hz=27e6, target_hz=81e6)
    assert (c.actual_hz, c.link_hz) == (81e6, 27e6)
    assert ClockReset(family=GOWIN, osc_hz=27e6, target_hz=27e6).pll is None


@pytest.mark.parametrize("board", ["tang_nano_9k", "tang_primer_20k"])
def test_gowin_platform_has_the_uart_and_our_build_script(board):
    """The link's UART exists on the board (amaranth-boards' UARTResource), and the platform's
    script runs nextpnr-himbaechel with the clock constraints, not Amaranth's nextpnr-gowin."""
    platform = get_board(board).create_platform()
    uart = platform.request("uart", 0, dir={"rx": "-", "tx": "-"})
    assert hasattr(uart, "rx") and hasattr(uart, "tx")
    assert platform.toolchain == "Apicula"
    assert platform.required_tools == ["yosys", "nextpnr-himbaechel", "gowin_pack"]
    script = "".join(platform.command_templates)
    assert "nextpnr-himbaechel" in script and "nextpnr-gowin" not in script
    assert "--vopt family=" in script and "--sdc" in script
    assert "{{name}}.sdc" in platform.file_templates


def test_gowin_board_top_elaborates_with_pll_and_uart(digits):
    """The board top's build plan for the Nano 9K (about 10 s): the rPLL, the UART pins
    (BoardTop's platform.request("uart", 0)), the SDC."""
    from boards.top import BoardTop

    board = get_board("tang_nano_9k")
    p1 = digits(1)
    top = BoardTop(p1, board, options=GOWIN.options_for(p1))
    plan = board.create_platform().prepare(top, "top")
    files = plan.files
    assert "rPLL" in files["top.il"] and "\\FBDIV_SEL" in files["top.il"]
    assert 'IO_LOC "uart_0__rx__io" 18;' in files["top.cst"]
    assert "create_clock -period 12.34" in files["top.sdc"]


@pytest.mark.slow
def test_tang_nano_9k_bitstream(tmp_path):
    """The whole open flow from PyPI (YoWASP yosys, nextpnr-himbaechel-gowin, Apicula's
    gowin_pack) makes a .fs for the Nano 9K at its clock target."""
    import json
    from pathlib import Path

    from compiler.cli import main

    out = tmp_path / "gw9k"
    args = ["build", EXAMPLE, "--board", "tang_nano_9k", "--pes", "1", "--out", str(out)]
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    bitstream = Path(report["bitstream"])
    assert bitstream.suffix == ".fs" and bitstream.stat().st_size > 100_000
    assert report["timing"]["met"] and report["fmax_mhz"] >= 81.0
    res = report["resources"]
    for kind in ("LUT4", "DFF", "BSRAM", "rPLL"):
        assert res[kind]["used"] >= 1 and res[kind]["available"] >= res[kind]["used"]
    assert res["MULT9X9"]["used"] + res["MULT18X18"]["used"] >= 1
    assert report["board_flow"]["pll"]["f_out_mhz"] == 81.0


def test_fmax_from_measured_points_interpolates_and_never_rises():
    from boards.families.base import interpolate_fmax

    points = {1: 100.0, 4: 110.0, 16: 90.0, 64: 50.0}
    assert interpolate_fmax(points, 1) == 100.0
    assert interpolate_fmax(points, 2) == 105.0          # halfway in log2(P)
    assert interpolate_fmax(points, 8) == 100.0
    assert interpolate_fmax(points, 32) == 70.0
    assert interpolate_fmax(points, 128) == 30.0         # the last segment's fall continues
    assert interpolate_fmax({1: 90.0, 8: 95.0}, 64) == 95.0   # ... but never a rise
    # the ECP5 model is the placed builds': P = 64 is not predicted faster than P = 32
    assert ECP5.predicted_fmax(64) <= ECP5.predicted_fmax(32) == round(ECP5.fmax_points[32], 1)


def test_large_ecp5_designs_route_with_router2(digits):
    assert ECP5.nextpnr_options(digits(8)) == ""
    assert ECP5.nextpnr_options(digits(32)) == "--router router2"
