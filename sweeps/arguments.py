"""Command-line conventions shared by every entry point of `sweeps` (light: no torch).

Bad input exits with code 2 and one line naming the option, as argparse's own errors do;
`OneLineParser` makes argparse's errors follow that shape (no usage block).
"""

from __future__ import annotations

import argparse

EXIT_BAD_INPUT = 2


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports errors as one line and exit code 2 (its default code too)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_BAD_INPUT, f"error: {message}\n")
