"""``python -m compiler flash``: program a board with openFPGALoader. Argument parsing and
printing here; the command line is :func:`flash_command`'s. (``run``, which needs the
reference model, is :mod:`compiler.runtime`'s.)
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

from core.buildfolder import build_folder
from core.errors import InputError, ToolError

from . import get_board
from .toolchain import TOOLS, openfpgaloader

__all__ = ["add_commands", "flash_command", "flash"]


def flash_command(out_dir, *, persist: bool = False, dry_run: bool = False) -> list:
    """The openFPGALoader command that programs build folder ``out_dir``'s bitstream."""
    out_dir, report = build_folder(out_dir, needs=("report.json",))
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


def add_commands(sub) -> None:
    """Register ``flash`` on the CLI's subparsers."""
    p = sub.add_parser("flash", help="program the board with openFPGALoader")
    p.add_argument("dir", help="build folder")
    p.add_argument("--dry-run", action="store_true", help="print the command, run nothing")
    p.add_argument("--persist", action="store_true",
                   help="write the configuration flash (ECP5, 7-series; iCE40 always does)")
    p.set_defaults(func=cmd_flash)

