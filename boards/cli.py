"""``python -m compiler flash``: program a board with openFPGALoader. Argument parsing and
printing here; the command lines are :func:`flash_commands`'s: the bitstream, and for a build
with ``--boot-from-flash`` the weight image (``weights_flash.bin``) at the board's flash
offset. (``run``, which needs the reference model, is :mod:`compiler.runtime`'s.)
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

from core.buildfolder import build_folder
from core.errors import InputError, ToolError

from . import get_board
from .toolchain import TOOLS, openfpgaloader

__all__ = ["add_commands", "flash_command", "flash_commands", "flash"]


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


def flash_commands(out_dir, *, persist: bool = False, dry_run: bool = False) -> list:
    """Every openFPGALoader command that programs build folder ``out_dir``, in order: the
    bitstream, then for a build that boots its weights from flash the weight image at the
    board's flash offset (the bitstream goes to the flash too: a stand-alone board)."""
    first = flash_command(out_dir, persist=persist, dry_run=dry_run)
    out_dir, report = build_folder(out_dir, needs=("report.json",))
    image = report.get("weights_flash")
    if not image:
        return [first]
    path = Path(image["file"])
    if not path.is_file():
        raise InputError(f"the flash weight image {path} is gone; rebuild {out_dir}")
    board = get_board(report["board"])
    if board.flash_offset is None:
        raise InputError(f"{out_dir} boots its weights from flash, but board {board.name} has "
                         f"no flash offset for them")
    if not persist:             # a board that boots stand-alone boots from its flash
        first[-1:-1] = [a for a in board.family.flash_persist_args if a not in first]
    tool, args = first[0], shlex.split(board.programmer)
    return [first, [tool, *args, "--write-flash", "-o", f"{board.flash_offset:#x}",
                    str(path)]]


def flash(out_dir, *, persist: bool = False, dry_run: bool = False) -> list:
    """Run (or with ``dry_run`` only return) :func:`flash_commands`."""
    cmds = flash_commands(out_dir, persist=persist, dry_run=dry_run)
    if dry_run:
        return cmds
    for cmd in cmds:
        proc = subprocess.run(cmd)
        if proc.returncode != 0:
            raise ToolError(f"openFPGALoader exited with {proc.returncode}: is the board "
                            f"plugged in and may you use it (udev rules for the FTDI chip)? "
                            f"Command: {shlex.join(cmd)}")
    return cmds


def cmd_flash(args) -> int:
    for cmd in flash(args.dir, persist=args.persist, dry_run=args.dry_run):
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

