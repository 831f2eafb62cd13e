"""Xilinx 7-series (the Arty A7 boards): how a board of this family is built.

No open flow makes a bitstream here without tools from outside PyPI: a build writes the
Verilog plus two ready-to-run plans, ``vivado/`` (a Tcl script and ``build_top.sh``) and
``openxc7/`` (nextpnr-xilinx + prjxray, ``build_top.sh``), and a utilisation estimate from
``yosys synth_xilinx``; the bitstream is built when ``vivado`` or ``nextpnr-xilinx`` is on
PATH.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import time
from pathlib import Path

from hw.images import deepest_memory
from hw.options import DISTRIBUTED_MAX_DEPTH, HardwareOptions

from ..flow import NAME, _environ, _run
from ..toolchain import flow_environment, which
from ..top import DEFAULT_BAUD, BoardTop
from .base import Family

__all__ = ["XC7", "xilinx_products", "parse_yosys_xilinx_stat"]

_KINDS = [
    ("LUT", re.compile(r"^LUT[1-6]$")),
    ("LUTRAM", re.compile(r"^(RAM\d+[XM]\d*\w*|RAM(32|64|128|256)\w*|SRL\w+)$")),
    ("FF", re.compile(r"^FD[CPRSE]+$")),
    ("RAMB36", re.compile(r"^RAMB36E1$")),
    ("RAMB18", re.compile(r"^RAMB18E1$")),
    ("DSP48E1", re.compile(r"^DSP48E1$")),
    ("CARRY4", re.compile(r"^CARRY4$")),
]


class XC7Family(Family):
    name = "xc7"
    title = "Xilinx 7-series"
    flow = "xilinx"                      # Vivado / openXC7
    default_clock_mhz = 100.0
    flow_tools = ("yosys",)
    bitstream_suffix = ".bit"

    # RAMB36 as two RAMB18 halves: the arithmetic counts halves, the device RAMB36 units
    bram_configs = ((36, 512), (18, 1024), (9, 2048), (4, 4096), (2, 8192), (1, 16384))
    bram_block_bits = 18432
    bram_dual_port = True
    bram_unit = "36 kbit RAMB36"
    small_bits = 1024
    lutram_depth = 64
    lutram_bits_per_lut = 64             # RAM64M-ish: 64 bits a LUT
    dsp_tile = (25, 18, 2)               # DSP48E1: 25 x 18
    logic_model = {"pe_lut": (220, 0.5, 1.0, 1.0, 0.1), "pe_ff": (250, 0.0, 0.0, 0.0, 0.3),
                   "reducer_lut": (300, 1.0, 3.0, 12.0), "reducer_ff": (150, 1.0, 8.0, 0.0),
                   "fixed_lut": 1800, "fixed_ff": 1200}
    fmax_model = (150.0, 3.0)
    usable_luts = 0.95

    def claims(self, platform_cls) -> bool:
        from amaranth.vendor import XilinxPlatform
        return (issubclass(platform_cls, XilinxPlatform)
                and str(platform_cls.device).lower().startswith("xc7"))

    #: the openXC7 ("Xray") flavour, whose files Yosys can read (the Vivado flavour's
    #: ``BUFGCTRL SIM_DEVICE`` breaks it)
    platform_options = {"toolchain": "Xray"}

    def default_options(self, program) -> HardwareOptions:
        """LUT RAM holds small per-PE memories well: weights and pointers in it when every
        PE's memory is small."""
        small = deepest_memory(program) <= DISTRIBUTED_MAX_DEPTH
        return HardwareOptions(memory="distributed" if small else "block")

    def bram_units(self, blocks: int) -> tuple[int, int]:
        return math.ceil(blocks / 2), 2 * self.bram_block_bits

    def products(self, program, board, out_dir, *, options, baud: int, seed: int,
                 synth_estimate: bool = False) -> dict:
        return xilinx_products(program, board, out_dir, baud=baud, options=options,
                               synth_estimate=synth_estimate)


XC7 = XC7Family()


def parse_yosys_xilinx_stat(text: str, board) -> dict:
    """Utilisation by kind from the last ``stat`` of a ``synth_xilinx`` log."""
    stat = text[text.rindex("Printing statistics"):] if "Printing statistics" in text else text
    counts = {}
    for number, cell in re.findall(r"^\s+(\d+)\s+(\S+)\s*$", stat, re.M):
        for kind, pattern in _KINDS:
            if pattern.match(cell):
                counts[kind] = counts.get(kind, 0) + int(number)
                break
    available = {"LUT": board.luts, "FF": board.ffs, "DSP48E1": board.dsps,
                 "RAMB36": board.bram_bits // 36864}
    bram36 = counts.pop("RAMB36", 0) + counts.pop("RAMB18", 0) / 2
    counts["RAMB36"] = bram36
    return {kind: {"used": used, "available": available.get(kind),
                   "percent": (round(100 * used / available[kind], 1)
                               if available.get(kind) else None)}
            for kind, used in sorted(counts.items())}


def xilinx_products(program, board, out_dir, *, options, baud: int | None = None,
                    build: bool = True, synth_estimate: bool = False) -> dict:
    """Verilog, the Vivado and openXC7 plans; the bitstream when a vendor or openXC7 tool is
    installed, or else, with ``synth_estimate``, Yosys's utilisation estimate (the fit check's
    stands in without it: synth_xilinx takes minutes)."""
    from amaranth_boards import arty_a7  # noqa: F401  (fails early if amaranth-boards is absent)

    baud = DEFAULT_BAUD if baud is None else baud
    out_dir = Path(out_dir)
    env = flow_environment(XC7)
    top = BoardTop(program, board, baud=baud, options=options)
    cls = board.platform_class()
    plans = {}
    for flavour, folder in (("Xray", "openxc7"), ("Vivado", "vivado")):
        target = out_dir / folder
        if target.exists():
            shutil.rmtree(target)
        with _environ(env):
            plan = cls(toolchain=flavour).prepare(top, NAME)
        plan.extract(target)
        plans[flavour] = target
    started = time.perf_counter()
    tool = "vivado" if which("vivado") else "nextpnr-xilinx" if which("nextpnr-xilinx") else None
    results = {
        "bitstream": None, "fmax_mhz": None, "resources": None,
        "plans": {"vivado": str(plans["Vivado"] / f"{NAME}.tcl"),
                  "vivado_script": str(plans["Vivado"] / f"build_{NAME}.sh"),
                  "openxc7_script": str(plans["Xray"] / f"build_{NAME}.sh")},
        "verilog": str(plans["Xray"] / f"{NAME}.v"),
        "clock_mhz": round(top.clock_hz / 1e6, 4),
        "baud": baud,
        "design_id": f"{top.linked.info.design_id:08x}",
        "flow": ("plans only: neither vivado nor nextpnr-xilinx is on PATH; the fit check's "
                 "estimate stands in (--synth-estimate: Yosys synth_xilinx's, minutes)"),
    }
    if synth_estimate and tool is None:
        results.update(_synth_estimate(out_dir / "openxc7", board, env))
    results["seconds"] = round(time.perf_counter() - started, 1)
    if not build:
        return results
    if tool == "vivado":
        _run(["sh", f"build_{NAME}.sh"], plans["Vivado"], dict(os.environ),
             plans["Vivado"] / "flow.log")
        results["flow"] = "Vivado"
        results.update(_vivado_results(plans["Vivado"], board, NAME))
    elif tool == "nextpnr-xilinx":
        _run(["sh", f"build_{NAME}.sh"], plans["Xray"], env, plans["Xray"] / "flow.log")
        results["flow"] = "openXC7 (nextpnr-xilinx + prjxray)"
        results["fmax_mhz"] = _nextpnr_log_fmax(plans["Xray"] / "flow.log")
        results["bitstream"] = str(plans["Xray"] / f"{NAME}.bit")
    if results["bitstream"]:
        bitstream = out_dir / f"sparsemac_{board.name}{XC7.bitstream_suffix}"
        shutil.copyfile(results["bitstream"], bitstream)
        results["bitstream"] = str(bitstream)
    return results


def _synth_estimate(est_dir: Path, board, env: dict) -> dict:
    """Utilisation from Yosys's ``synth_xilinx`` of the openXC7 flavour's Verilog (the Vivado
    one's BUFGCTRL SIM_DEVICE parameter breaks it): no place and route."""
    log = est_dir / "synth_xilinx.log"
    _run([env["YOSYS"], "-q", "-l", log.name, "-p",
          f"read_verilog {NAME}.v; synth_xilinx -family xc7 -top {NAME}; stat"],
         est_dir, env, est_dir / "synth_xilinx.stdout")
    return {"resources": parse_yosys_xilinx_stat(log.read_text(), board),
            "resources_source": "yosys synth_xilinx estimate (no place and route)",
            "flow": "estimate only: neither vivado nor nextpnr-xilinx is on PATH"}


def _vivado_results(folder: Path, board, name: str) -> dict:
    out = {"bitstream": str(folder / f"{name}.bit")}
    timing = folder / f"{name}_timing.rpt"
    if timing.is_file():
        m = re.search(r"WNS\(ns\).*?\n.*?\n\s*(-?\d+\.\d+)", timing.read_text())
        if m:
            wns = float(m.group(1))
            period = 1000.0 / board.clock_mhz
            out["fmax_mhz"] = round(1000.0 / (period - wns), 2)
    return out


def _nextpnr_log_fmax(log: Path):
    found = re.findall(r"Max frequency for clock .*?: ([\d.]+) MHz", log.read_text())
    return float(found[-1]) if found else None
