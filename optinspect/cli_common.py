"""What the two halves of the command line share (the light commands in cli.py, the torch-backed ones in
commands.py): the exit codes and argument types. Kept apart so that neither half imports the other."""

from __future__ import annotations

import argparse

EXIT_OK, EXIT_FOUND, EXIT_USAGE = 0, 1, 2


def positive_int(text: str) -> int:
    """argparse type for counts: a clear usage error for 0, negatives and non-numbers."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
