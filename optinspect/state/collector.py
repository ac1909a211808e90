"""The cyclic garbage collector while a state loads, in a process of our own (the CLI and the TUI, never a caller
that imported us): loading is where millions of long-lived objects are made at once."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def long_lived() -> Iterator[None]:
    """Around loading a state, in a process of our own: the objects built there (millions at 100k parameters) live
    to the end and make no cycles, yet the collector's walks over them took most of a second. So it is paused
    meanwhile, and what was built is moved out of its reach afterwards (gc.freeze). Not around the statistics:
    their garbage includes cycles (+27 MiB peak without the collector, at 100k parameters)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was:
            gc.enable()
