"""Board commands of ``python -m compiler``: ``run`` (inputs over the UART) and ``flash``
(openFPGALoader). Argument parsing and printing only; the work is in
:mod:`compiler.runtime` and :func:`flash_command`.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

from core.errors import InputError, ToolError

from . import get_board
from .toolchain import TOOLS, openfpgaloader

__all__ = ["add_commands", "flash_command", "flash"]


def flash_command(out_dir, *, persist: bool = False, dry_run: bool = False) -> list:
    """The openFPGALoader command that programs build folder ``out_dir``'s bitstream."""
    out_dir = Path(out_dir)
    try:
        report = json.loads((out_dir / "report.json").read_text())
    except FileNotFoundError:
        raise InputError(f"{out_dir} is not a build folder (no report.json); run `python -m "
                         f"compiler build MODEL --board BOARD --out {out_dir}` first") from None
    bitstream = report.get("bitstream")
    if not bitstream:
        raise InputError(f"{out_dir} holds no bitstream (board {report.get('board')}: "
                         f"{(report.get('board_flow') or {}).get('flow', 'no flow ran')}); "
                         f"build it for icebreaker or ulx3s, or install Vivado / openXC7 for the "
                         f"Arty")
    if not Path(bitstream).is_file():
        raise InputError(f"the bitstream {bitstream} is gone; rebuild {out_dir}")
    board = get_board(report["board"])
    tool = openfpgaloader(required=not dry_run) or "openFPGALoader"
    args = shlex.split(board.programmer)
    if persist:             # as the family writes its flash (iCE40 boards: always)
        args.extend(board.family.flash_persist_args)
    return [tool, *args, str(bitstream)]


def flash(out_dir, *, persist: bool = False, dry_run: bool = False) -> list:
    cmd = flash_command(out_dir, persist=persist, dry_run=dry_run)
    if dry_run:
        return cmd
    proc = subprocess.run(cmd)
    if proc.returncode != 0:
        raise ToolError(f"openFPGALoader exited with {proc.returncode}: is the board plugged in "
                        f"and may you use it (udev rules for the FTDI chip)? Command: "
                        f"{shlex.join(cmd)}")
    return cmd


def cmd_flash(args) -> int:
    cmd = flash(args.dir, persist=args.persist, dry_run=args.dry_run)
    print(shlex.join(cmd))
    if args.dry_run and openfpgaloader(required=False) is None:
        print(f"(openFPGALoader is not installed: {TOOLS['openFPGALoader'].package})")
    return 0


def cmd_run(args) -> int:
    from compiler.runtime import run

    result = run(args.dir, port=args.port, inputs=args.inputs, baud=args.baud,
                 outputs=args.outputs, retries=args.retries, reload=args.reload_weights)
    n = len(result.hw)
    info = result.info
    if result.uploaded_bytes:
        print(f"weights uploaded: {result.uploaded_bytes} bytes in {result.upload_seconds:.1f} s")
    cycles = float(result.cycles.mean()) if n else 0.0
    print(f"{n} inferences on the board ({info.pes} PEs at {info.clock_hz / 1e6:g} MHz, design "
          f"{info.design_id:08x}): {n - result.mismatches} equal the reference model"
          + (f", {result.mismatches} DIFFER" if result.mismatches else " (bit-exact)"))
    if n:
        compute_s = cycles / info.clock_hz
        print(f"  compute: {cycles:.1f} cycles per inference = {1e6 * compute_s:.2f} us "
              f"({1 / compute_s:,.0f} inferences/s); over the UART: {n / result.seconds:.1f}/s"
              f"{f', {result.retries} retries' if result.retries else ''}")
    print(f"  outputs {result.outputs_path}")
    return 1 if result.mismatches else 0


def add_commands(sub) -> None:
    """Register ``run`` and ``flash`` on the CLI's subparsers."""
    p = sub.add_parser("run", help="run inputs on a board over its UART, check them against "
                                   "the reference model")
    p.add_argument("dir", help="build folder (its bitstream must be on the board)")
    p.add_argument("--port", required=True, help="serial port, e.g. /dev/ttyUSB1")
    p.add_argument("--inputs", required=True, help=".npy float32 [N, in_features]")
    p.add_argument("--baud", type=int, help="UART rate (default: the build's)")
    p.add_argument("--outputs", help="where to write OUT.npz (hw, reference, dequantized, "
                                     "cycles)")
    p.add_argument("--retries", type=int, default=3, help="tries after a bad reply (default 3)")
    p.add_argument("--reload-weights", action="store_true",
                   help="upload the weights even if the board holds them (designs built with "
                        "uploaded weights, e.g. iCE40 SPRAM)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("flash", help="program the board with openFPGALoader")
    p.add_argument("dir", help="build folder")
    p.add_argument("--dry-run", action="store_true", help="print the command, run nothing")
    p.add_argument("--persist", action="store_true",
                   help="write the configuration flash (ECP5, 7-series; iCE40 always does)")
    p.set_defaults(func=cmd_flash)

