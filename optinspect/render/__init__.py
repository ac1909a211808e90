"""Renderers: turn report objects into text, JSON, GitHub annotations or SARIF. They never compute."""

from __future__ import annotations

import os
import re
import sys

# Width for tables written to a pipe or a file: wide enough that no row of a real state folds, so that
# `| grep name` finds whole rows and names (rich would otherwise assume 80 columns)
PIPE_WIDTH = 1000


def make_console(stderr: bool = False, *, tables: bool = False):
    """The one rich Console setup: no highlighting of our own text, NO_COLOR honoured (rich is imported here).
    `tables`: output that is mostly tables is not folded to 80 columns when it goes to a pipe or file
    (COLUMNS still wins)."""
    from rich.console import Console

    no_color = bool(os.environ.get("NO_COLOR")) or None
    console = Console(stderr=stderr, highlight=False, no_color=no_color)
    if tables and not console.is_terminal and not os.environ.get("COLUMNS"):
        stream = sys.stderr if stderr else sys.stdout
        console = Console(file=_TrimmedLines(stream), width=PIPE_WIDTH, highlight=False, no_color=no_color)
    return console


class _TrimmedLines:
    """A text stream that drops the blanks rich pads table cells with at the end of each line (a 1000-column
    table would otherwise end every row in hundreds of spaces)."""

    def __init__(self, stream) -> None:
        self._stream = stream
        self._pending = ""

    def write(self, text: str) -> int:
        lines = (self._pending + text).split("\n")
        self._pending = lines.pop()
        if lines:
            self._stream.write("".join(line.rstrip(" ") + "\n" for line in lines))
        return len(text)

    def flush(self) -> None:
        if self._pending:
            self._stream.write(self._pending)
            self._pending = ""
        self._stream.flush()

    def isatty(self) -> bool:
        return False


# C0 and C1 control characters, DEL, and the Unicode bidi controls that reorder what a terminal shows
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_UNSAFE_LINES = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def term(text: str, *, one_line: bool = True) -> str:
    """A string from a file, made safe for a terminal: control characters (ESC sequences, bells, carriage
    returns, and newlines in one-line fields) and bidi overrides become visible escapes such as `\\x1b`."""
    pattern = _UNSAFE_LINES if one_line else _UNSAFE
    if not pattern.search(text):
        return text
    return pattern.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100
                       else f"\\u{ord(m.group()):04x}", text)


def human_bytes(n: float) -> str:
    """Sizes as people read them: 512 B, 129.5 KiB, 13.3 MiB (one format for every screen)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"

