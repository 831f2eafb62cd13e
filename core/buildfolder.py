"""A build folder (``python -m compiler build ... --out DIR``), as every command that reads one
checks it: ``simulate`` and ``run`` need its program and report, ``flash`` its report."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import InputError

__all__ = ["build_folder", "read_json_object"]


def build_folder(out_dir, needs=("program.npz", "report.json")) -> tuple[Path, dict]:
    """``out_dir`` checked to be a build folder holding the files ``needs``, and its report."""
    out_dir = Path(out_dir)
    missing = [name for name in needs if not (out_dir / name).is_file()]
    if missing:
        raise InputError(f"{out_dir} is not a build folder (no {' / '.join(missing)}); run "
                         f"`python -m compiler build MODEL --board BOARD --out {out_dir}` first")
    return out_dir, read_json_object(out_dir, "report.json", "a build report")


def read_json_object(out_dir, name: str, what: str) -> dict:
    """The JSON object in build folder ``out_dir``'s file ``name`` (``what`` it should be, for
    the message when it is not)."""
    path = Path(out_dir) / name
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path} cannot be read ({e}); rebuild {out_dir}") from None
    if not isinstance(value, dict):
        raise InputError(f"{path} holds a JSON {type(value).__name__}, not {what}; rebuild "
                         f"{out_dir}")
    return value
