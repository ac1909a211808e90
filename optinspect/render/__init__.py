"""Renderers: turn report objects into text, JSON, GitHub annotations or SARIF. They never compute."""

from __future__ import annotations

import os


def make_console(stderr: bool = False):
    """The one rich Console setup: no highlighting of our own text, NO_COLOR honoured (rich is imported here)."""
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, no_color=bool(os.environ.get("NO_COLOR")) or None)


def human_bytes(n: float) -> str:
    """Sizes as people read them: 512 B, 129.5 KiB, 13.3 MiB (one format for every screen)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"

