"""argparse value types shared by every command: a bad value becomes argparse's one-line
error naming the option, the value and what is accepted."""

from __future__ import annotations

import argparse

__all__ = ["whole_number", "real_number"]


def whole_number(minimum: int):
    """An ``int`` of at least ``minimum``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {value}")
        return value
    return parse


def real_number(*, above: float | None = None, at_least: float | None = None):
    """A ``float`` greater than ``above`` or at least ``at_least``."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, not {text!r}") from None
        if above is not None and not value > above:
            raise argparse.ArgumentTypeError(f"must be > {above:g}, not {text}")
        if at_least is not None and not value >= at_least:
            raise argparse.ArgumentTypeError(f"must be >= {at_least:g}, not {text}")
        return value
    return parse
