"""User-facing errors. Each one becomes a single line on stderr and a non-zero exit: it says
what is wrong and what to do about it."""

__all__ = ["SparsemacError", "FrontendError", "InputError", "FitError", "ToolError"]


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
