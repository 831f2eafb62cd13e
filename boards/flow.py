"""Bitstreams and their reports.

- iCE40, ECP5: Amaranth's build plan for the board top (Yosys ``synth_ice40 -dsp`` /
  ``synth_ecp5``, nextpnr with ``--report``, icepack / ecppack), run with the tools that
  :mod:`boards.toolchain` picks; Fmax and utilisation come from nextpnr's JSON report.
- Xilinx 7-series: the Verilog plus two ready-to-run plans, ``vivado/`` (a Tcl script and
  ``build_top.sh``) and ``openxc7/`` (nextpnr-xilinx + prjxray, ``build_top.sh``), and a
  utilisation estimate from ``yosys synth_xilinx``; the bitstream is built when ``vivado`` or
  ``nextpnr-xilinx`` is on PATH.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

from core.errors import FitError, ToolError

from .toolchain import find_tool, flow_environment, which
from .top import DEFAULT_BAUD, BoardTop

__all__ = ["TimingError", "build_bitstream", "parse_nextpnr_report", "check_timing",
           "xilinx_products", "parse_yosys_xilinx_stat", "board_products", "NAME"]

#: File name stem of everything in the gateware folder.
NAME = "top"

_RESOURCE_NAMES = {
    "ice40": {"ICESTORM_LC": "logic cells (LUT4+FF)", "ICESTORM_RAM": "block RAM (4 kbit EBR)",
              "ICESTORM_DSP": "DSP (SB_MAC16)", "ICESTORM_SPRAM": "SPRAM (256 kbit)",
              "ICESTORM_PLL": "PLL", "SB_IO": "I/O", "SB_GB": "global buffers"},
    "ecp5": {"TRELLIS_COMB": "LUT4", "TRELLIS_FF": "flip-flops",
             "TRELLIS_RAMW": "LUT RAM write ports", "DP16KD": "block RAM (18 kbit DP16KD)",
             "MULT18X18D": "DSP (MULT18X18D)", "EHXPLLL": "PLL", "TRELLIS_IO": "I/O",
             "DCCA": "clock buffers"},
}


class TimingError(FitError):
    """The design routed but misses the clock target."""


@contextmanager
def _environ(env: dict):
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _run(cmd, cwd: Path, env: dict, log: Path) -> None:
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        _raise_tool_failure(log)


def _raise_tool_failure(log: Path):
    text = log.read_text(errors="replace")
    # nextpnr running out of a resource is a fit problem, not a tool problem
    m = re.search(r"(?:ERROR|Error): (.*(?:Unable to place|Unable to find legal placement|"
                  r"too many|not enough|exceeds|Failed to expand region).*)", text)
    if m:
        # nextpnr's utilisation table (in its log, NAME.tim) says what overflowed:
        # "Info:          TRELLIS_COMB:  104092/  83640   124%"
        tim = log.parent / f"{NAME}.tim"
        table = tim.read_text(errors="replace") if tim.is_file() else text
        over = [f"{kind} {used}/{avail}" for kind, used, avail in
                re.findall(r"(?m)^Info:\s+(\w+):\s+(\d+)/\s*(\d+)\s+\d+%", table)
                if int(used) > int(avail)]
        what = f"{', '.join(over)} after synthesis; " if over else ""
        raise FitError(f"place and route failed: {what}{m.group(1).strip()[:200]} (the "
                       f"estimate before synthesis was too optimistic; try fewer --pes); "
                       f"log: {log}")
    errors = [line for line in text.splitlines() if "ERROR" in line or "Error" in line]
    last = (errors or text.strip().splitlines() or ["no output"])[-1].strip()
    raise ToolError(f"the FPGA flow failed: {last[:300]}; full log: {log}")


def parse_nextpnr_report(path: Path, family: str, target_mhz: float) -> dict:
    """Fmax of the design clock and utilisation from ``nextpnr --report`` JSON."""
    report = json.loads(Path(path).read_text())
    clocks = {name: v for name, v in report.get("fmax", {}).items()
              if "PACKER_GND" not in name and "PACKER_VCC" not in name}
    if not clocks:
        raise ToolError(f"nextpnr's report {path} names no clock; was the design optimised "
                        f"away?")
    # the accelerator's clock is the one constrained nearest to the target
    name, fmax = min(clocks.items(), key=lambda kv: abs(kv[1]["constraint"] - target_mhz))
    names = _RESOURCE_NAMES.get(family, {})
    resources = {
        kind: {"used": v["used"], "available": v["available"],
               "percent": round(100 * v["used"] / v["available"], 1) if v["available"] else None,
               "what": names.get(kind, kind)}
        for kind, v in sorted(report.get("utilization", {}).items()) if v["used"] or kind in names
    }
    return {
        "clock_net": name,
        "fmax_mhz": round(fmax["achieved"], 2),
        "constraint_mhz": round(fmax["constraint"], 2),
        "resources": resources,
        "critical_path": _critical_path(report, name),
    }


def _critical_path(report: dict, clock: str) -> dict | None:
    """The worst path within the design clock: its ends and the delay by kind."""
    for path in report.get("critical_paths", []):
        # "posedge clk": the clock's own name, not a name containing it ("link_clk")
        if (path.get("from", "").split()[-1:] != [clock]
                or path.get("to", "").split()[-1:] != [clock]):
            continue
        steps = path.get("path", [])
        if not steps:
            return None
        total = {"logic": 0.0, "routing": 0.0, "other": 0.0}
        for step in steps:
            kind = step.get("type")
            total[kind if kind in total else "other"] += step.get("delay", 0.0)
        return {
            "from": steps[0].get("from", {}).get("cell"),
            "to": steps[-1].get("to", {}).get("cell"),
            "delay_ns": round(sum(total.values()), 2),
            "logic_ns": round(total["logic"], 2),
            "routing_ns": round(total["routing"], 2),
            "levels": sum(1 for s in steps if s.get("type") == "logic"),
        }
    return None


def check_timing(results: dict, target_mhz: float, *, allow_failure: bool) -> dict:
    """Record whether the target is met; raise :class:`TimingError` unless allowed."""
    fmax = results.get("fmax_mhz")
    met = fmax is not None and fmax >= target_mhz
    results["timing"] = {"target_mhz": target_mhz, "fmax_mhz": fmax, "met": met,
                         "allowed_failure": bool(allow_failure and not met)}
    if not met and not allow_failure:
        path = results.get("critical_path") or {}
        where = (f"; critical path {path.get('from')} -> {path.get('to')}, "
                 f"{path.get('delay_ns')} ns" if path else "")
        raise TimingError(
            f"timing not met: Fmax {fmax} MHz is below the {target_mhz:g} MHz clock target"
            f"{where}. The bitstream is in {results.get('bitstream')} but would run out of "
            f"spec: build with --clock-mhz {int(fmax) if fmax else 'LOWER'} to run at what "
            f"it makes, fewer --pes, or --allow-timing-failure to keep it anyway")
    return results


def _prepare(board, program, *, baud: int, options, overrides: dict, toolchain_env: dict):
    top = BoardTop(program, board, baud=baud, options=options)
    platform = board.create_platform()
    with _environ(toolchain_env):
        plan = platform.prepare(top, NAME, **overrides)
    return top, plan


def synth_options(board, options=None) -> str:
    """Options for ``synth_<family>``. iCE40: SB_MAC16 multipliers (about 2x the Fmax of
    LUTs); ABC's delay model of the actual device family (Yosys assumes HX; the UltraPlus is
    slower, and LUT mapping trades differently); and flip-flops passed through ABC (``-dff``),
    which maps across them. On the iCEBreaker's example build the last two took Fmax from
    49-55 to 55-59 MHz over nextpnr seeds 1-3 (docs/benchmarks.md). Uploaded weights: SPRAM
    (``-spram``)."""
    if board.family != "ice40":
        return ""
    device = board.device.upper()
    speed = "u" if device.startswith("ICE40UP") else "lp" if device.startswith("ICE40LP") else "hx"
    spram = " -spram" if options is not None and options.weights == "uploaded" else ""
    return f"-dsp -device {speed} -dff{spram}"


#: Yosys commands after reading the design, for uploaded weights: Amaranth gives every memory
#: an initial image (all zeros for these), and SPRAM, which has none, is only inferred for
#: memories without one.
DROP_UPLOADED_INIT = "delete r:MEMID=*uploaded_entries* t:$meminit_v2 %i"


def board_products(program, board, out_dir, *, options, baud: int = DEFAULT_BAUD,
                   seed: int = 1) -> dict:
    """What a board build makes: a bitstream (iCE40, ECP5) or the 7-series plans."""
    if board.family == "xc7":
        return xilinx_products(program, board, out_dir, baud=baud, options=options)
    return build_bitstream(program, board, out_dir, baud=baud, options=options, seed=seed)


def build_bitstream(program, board, out_dir, *, options, baud: int = DEFAULT_BAUD,
                    seed: int = 1) -> dict:
    """Synthesise, place and route the board top for ``program`` on a Lattice ``board``; the
    bitstream lands in ``out_dir``. Returns the report's board section (without the timing
    verdict: see :func:`check_timing`)."""
    family = board.family
    if family not in ("ice40", "ecp5"):
        raise ValueError(f"{board.name}: no open flow for family {family}")
    out_dir = Path(out_dir)
    gateware = out_dir / "gateware"
    if gateware.exists():
        shutil.rmtree(gateware)
    env = flow_environment(family)
    overrides = {
        "nextpnr_opts": f"--report {NAME}.report.json --timing-allow-fail --seed {seed}",
    }
    synth_opts = synth_options(board, options)
    if synth_opts:
        overrides["synth_opts"] = synth_opts
    if options.weights == "uploaded":
        overrides["script_after_read"] = DROP_UPLOADED_INIT
    started = time.perf_counter()
    top, plan = _prepare(board, program, baud=baud, options=options,
                         overrides=overrides, toolchain_env=env)
    plan.extract(gateware)
    log = gateware / "flow.log"
    note = None
    try:
        _run(["sh", f"build_{NAME}.sh"], gateware, env, log)
    except ToolError:
        # ABC's recursion through flip-flops (`-dff`) can overflow the WebAssembly Yosys's
        # fixed call stack on some netlists (LeNet-300-100 on the iCEBreaker): the same
        # synthesis without it, rather than no bitstream
        if " -dff" not in synth_opts or "call stack exhausted" not in log.read_text(
                errors="replace"):
            raise
        synth_opts = synth_opts.replace(" -dff", "")
        overrides["synth_opts"] = synth_opts
        shutil.rmtree(gateware)
        top, plan = _prepare(board, program, baud=baud, options=options,
                             overrides=overrides, toolchain_env=env)
        plan.extract(gateware)
        note = ("yosys synth_ice40 -dff overflowed the WebAssembly call stack in ABC; "
                "synthesised again without -dff")
        _run(["sh", f"build_{NAME}.sh"], gateware, env, log)
    elapsed = time.perf_counter() - started
    results = parse_nextpnr_report(gateware / f"{NAME}.report.json", family, board.clock_mhz)
    suffix = ".bin" if family == "ice40" else ".bit"
    bitstream = out_dir / f"sparsemac_{board.name.replace(':', '_').replace('.', '_')}{suffix}"
    shutil.copyfile(gateware / f"{NAME}{suffix}", bitstream)
    results.update({
        "bitstream": str(bitstream),
        "flow": f"yosys synth_{family} {synth_opts}".rstrip() + f" + nextpnr-{family}",
        "tools": {name: env[var] for name, var in (("yosys", "YOSYS"),
                                                    (f"nextpnr-{family}", f"NEXTPNR_{family.upper()}"))},
        "clock_mhz": round(top.clock_hz / 1e6, 4),
        "pll": _pll_dict(top.clocking.pll),
        "baud": baud,
        "seed": seed,
        "log": str(log),
        "nextpnr_report": str(gateware / f"{NAME}.report.json"),
        "seconds": round(elapsed, 1),
        "design_id": f"{top.linked.info.design_id:08x}",
        "weights": options.weights,
        "note": note,
        "weight_image_bytes": top.linked.weight_bytes,
    })
    return results


def _pll_dict(pll):
    if pll is None:
        return None
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in pll.__dict__.items()}


# ---- Xilinx 7-series ---------------------------------------------------------------------

_XILINX_KINDS = [
    ("LUT", re.compile(r"^LUT[1-6]$")),
    ("LUTRAM", re.compile(r"^(RAM\d+[XM]\d*\w*|RAM(32|64|128|256)\w*|SRL\w+)$")),
    ("FF", re.compile(r"^FD[CPRSE]+$")),
    ("RAMB36", re.compile(r"^RAMB36E1$")),
    ("RAMB18", re.compile(r"^RAMB18E1$")),
    ("DSP48E1", re.compile(r"^DSP48E1$")),
    ("CARRY4", re.compile(r"^CARRY4$")),
]


def parse_yosys_xilinx_stat(text: str, board) -> dict:
    """Utilisation by kind from the last ``stat`` of a ``synth_xilinx`` log."""
    stat = text[text.rindex("Printing statistics"):] if "Printing statistics" in text else text
    counts = {}
    for number, cell in re.findall(r"^\s+(\d+)\s+(\S+)\s*$", stat, re.M):
        for kind, pattern in _XILINX_KINDS:
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


def xilinx_products(program, board, out_dir, *, options, baud: int = DEFAULT_BAUD,
                    build: bool = True) -> dict:
    """Verilog, the Vivado and openXC7 plans, a yosys utilisation estimate; the bitstream when a
    vendor or openXC7 tool is installed."""
    from amaranth_boards import arty_a7  # noqa: F401  (fails early if amaranth-boards is absent)

    out_dir = Path(out_dir)
    env = flow_environment("xc7")
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
    # the estimate: Yosys reads the openXC7 flavour's Verilog (the Vivado one's BUFGCTRL
    # SIM_DEVICE parameter breaks it)
    est_dir = out_dir / "openxc7"
    log = est_dir / "synth_xilinx.log"
    started = time.perf_counter()
    _run([env["YOSYS"], "-q", "-l", log.name, "-p",
          f"read_verilog {NAME}.v; synth_xilinx -family xc7 -top {NAME}; stat"],
         est_dir, env, est_dir / "synth_xilinx.stdout")
    resources = parse_yosys_xilinx_stat(log.read_text(), board)
    results = {
        "bitstream": None, "fmax_mhz": None,
        "resources": resources,
        "resources_source": "yosys synth_xilinx estimate (no place and route)",
        "plans": {"vivado": str(plans["Vivado"] / f"{NAME}.tcl"),
                  "vivado_script": str(plans["Vivado"] / f"build_{NAME}.sh"),
                  "openxc7_script": str(plans["Xray"] / f"build_{NAME}.sh")},
        "verilog": str(plans["Xray"] / f"{NAME}.v"),
        "clock_mhz": round(top.clock_hz / 1e6, 4),
        "baud": baud,
        "seconds": round(time.perf_counter() - started, 1),
        "design_id": f"{top.linked.info.design_id:08x}",
        "flow": "estimate only: neither vivado nor nextpnr-xilinx is on PATH",
    }
    if not build:
        return results
    if which("vivado"):
        _run(["sh", f"build_{NAME}.sh"], plans["Vivado"], dict(os.environ),
             plans["Vivado"] / "flow.log")
        results["flow"] = "Vivado"
        results.update(_vivado_results(plans["Vivado"], board))
    elif which("nextpnr-xilinx"):
        _run(["sh", f"build_{NAME}.sh"], plans["Xray"], env, plans["Xray"] / "flow.log")
        results["flow"] = "openXC7 (nextpnr-xilinx + prjxray)"
        results["fmax_mhz"] = _nextpnr_log_fmax(plans["Xray"] / "flow.log")
        results["bitstream"] = str(plans["Xray"] / f"{NAME}.bit")
    if results["bitstream"]:
        bitstream = out_dir / f"sparsemac_{board.name}.bit"
        shutil.copyfile(results["bitstream"], bitstream)
        results["bitstream"] = str(bitstream)
    return results


def _vivado_results(folder: Path, board) -> dict:
    out = {"bitstream": str(folder / f"{NAME}.bit")}
    timing = folder / f"{NAME}_timing.rpt"
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


def flow_tools_available(family: str) -> bool:
    """Whether every tool of ``family``'s open flow can be found."""
    from .toolchain import FLOW_TOOLS
    try:
        for name in FLOW_TOOLS[family]:
            find_tool(name)
    except ToolError:
        return False
    return True
