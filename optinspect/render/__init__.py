"""Renderers: turn report objects into text, JSON, GitHub annotations or SARIF. They never compute."""

from __future__ import annotations

import os


def make_console(stderr: bool = False):
    """The one rich Console setup: no highlighting of our own text, NO_COLOR honoured (rich is imported here)."""
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, no_color=bool(os.environ.get("NO_COLOR")) or None)
