"""A build folder (``python -m compiler build ... --out DIR``), as every command that reads one
checks it: ``simulate`` and ``run`` need its program and report, ``flash`` its report."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import InputError

__all__ = ["build_folder"]


def build_folder(out_dir, needs=("program.npz", "report.json")) -> tuple[Path, dict]:
    """``out_dir`` checked to be a build folder holding the files ``needs``, and its report."""
    out_dir = Path(out_dir)
    missing = [name for name in needs if not (out_dir / name).is_file()]
    if missing:
        raise InputError(f"{out_dir} is not a build folder (no {' / '.join(missing)}); run "
                         f"`python -m compiler build MODEL --board BOARD --out {out_dir}` first")
    try:
        report = json.loads((out_dir / "report.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{out_dir / 'report.json'} cannot be read ({e}); rebuild {out_dir}") \
            from None
    if not isinstance(report, dict):
        raise InputError(f"{out_dir / 'report.json'} holds a JSON {type(report).__name__}, not "
                         f"a build report; rebuild {out_dir}")
    return out_dir, report
