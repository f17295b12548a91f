"""Command-line conventions shared by every entry point (`sweeps`, `sweeps.slurm`,
`analysis`; light: no torch).

Bad input exits with code 2 and one line naming the option, as argparse's own errors do;
`OneLineParser` makes argparse's errors follow that shape (no usage block), and `number`
is the `type=` of every numeric option: NaN and infinity never get through.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

EXIT_BAD_INPUT = 2


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports errors as one line and exit code 2 (its default code too)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_BAD_INPUT, f"error: {message}\n")


def number(kind: type[int] | type[float], minimum: float, *, above: bool = False,
           maximum: float = math.inf) -> Callable[[str], int | float]:
    """An argparse `type`: a whole number (`kind` int) or a finite number (float) that is
    >= `minimum` (> with `above`) and <= `maximum`. NaN and infinity are refused: Python
    parses both as floats, NaN fails every comparison (so `value < minimum` lets it
    through) and infinity overflows later (`time.sleep`). The error names what is allowed."""
    bounds = (f"> {minimum:g}" if above else f">= {minimum:g}") + (f" and <= {maximum:g}" if maximum < math.inf else "")
    allowed = f"{'a whole' if kind is int else 'a finite'} number {bounds}"

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {allowed}, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected {allowed}, got {text!r}")
        if value < minimum or (above and value == minimum) or value > maximum:
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {text.strip()}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in some messages
    return parse
