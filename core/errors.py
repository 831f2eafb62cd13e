"""User-facing errors. Each one becomes a single line on stderr and a non-zero exit: it says
what is wrong and what to do about it."""

import re
import signal
from pathlib import Path

__all__ = ["SparsemacError", "FrontendError", "InputError", "FitError", "ToolError",
           "ToolFailed", "alarming", "describe_exit", "meaningful_lines"]


class SparsemacError(Exception):
    """Base of every error the CLI reports as one line."""


class FrontendError(SparsemacError):
    """The model file cannot be loaded or holds something we cannot compile."""


class InputError(SparsemacError):
    """An array, option or folder given on the command line is unusable."""


class FitError(SparsemacError):
    """The design does not fit the chosen board."""


class ToolError(SparsemacError):
    """An external tool is missing or failed."""


#: Log lines that say what went wrong (the rest of a failing tool's log is mostly progress).
_ALARMING = re.compile(r"error|fatal|exception|traceback|segmentation|killed|abort|panic|"
                       r"exhausted|out of memory|cannot|unable|failed|assert", re.IGNORECASE)
#: Log lines that never explain a failure: progress and harmless warnings.
_HARMLESS = re.compile(r"^(warning|info|note)\b|replacing memory|^-- running|^\d+\.\d+\. ",
                       re.IGNORECASE)


def describe_exit(returncode: int | None) -> str:
    """``exit status 3``, ``killed by signal 9 (SIGKILL)``; a shell reports a child killed by
    signal N as status 128 + N, which reads as both. None: it did not run."""
    def name(number):
        try:
            return signal.Signals(number).name
        except ValueError:
            return f"signal {number}"
    if returncode is None:
        return "it did not run"
    if returncode < 0:
        return f"killed by signal {-returncode} ({name(-returncode)})"
    if 128 < returncode <= 128 + 64:
        return (f"exit status {returncode} (a shell's way of saying: killed by signal "
                f"{returncode - 128}, {name(returncode - 128)})")
    return f"exit status {returncode}"


def alarming(line: str) -> bool:
    """Whether a log line reads as the cause of a failure (an error, a crash)."""
    return bool(_ALARMING.search(line)) and not _HARMLESS.search(line)


def meaningful_lines(text: str, count: int = 3) -> list[str]:
    """The last ``count`` lines of a log that say what went wrong: errors first, else the last
    lines that are not progress or harmless warnings, else the last lines."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for keep in (alarming,
                 lambda line: not _HARMLESS.search(line), lambda line: True):
        chosen = [line for line in lines if keep(line)]
        if chosen:
            return [line[:200] for line in chosen[-count:]]
    return []


class ToolFailed(ToolError):
    """An external tool ran and failed: names the tool, how it ended, the last meaningful lines
    of its log and the log's path (one line, for the CLI)."""

    def __init__(self, tool: str, returncode: int | None, log, *, lines: list[str] | None = None,
                 hint: str = "", doing: str = ""):
        self.tool, self.returncode, self.log = tool, returncode, log
        if lines is None:
            try:
                lines = meaningful_lines(Path(log).read_text(errors="replace"))
            except OSError:
                lines = []
        self.lines = lines
        said = " | ".join(lines) if lines else "its log is empty"
        doing = f" {doing}" if doing else ""
        super().__init__(f"{tool} failed{doing} ({describe_exit(returncode)}): {said}; log: {log}"
                         + (f" ({hint})" if hint else ""))
