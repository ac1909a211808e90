"""What every command shares: exit codes, argument types, the one-line error, the dependency check."""

from __future__ import annotations

import argparse
import importlib.util
import sys

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


def err(msg: str) -> int:
    """One line on stderr; the message may quote the file (names, bytes in a library's error), so it is escaped."""
    from optinspect.render import term

    sys.stderr.write(f"optinspect: error: {term(msg)}\n")
    return EXIT_USAGE


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a module set to None in sys.modules, or a broken install
        return False


def missing_extra(command: str, modules: tuple[str, ...], extra: str) -> int | None:
    """Said before any work starts: what the command needs beyond the light core, and how to install it."""
    missing = [m for m in modules if not installed(m)]
    if missing:
        return err(f"{command} needs {' and '.join(modules)} ({', '.join(missing)} not installed): "
                   f"pip install 'optinspect[{extra}]'")
    if "torch" in modules:
        import warnings

        warnings.filterwarnings("ignore", message="Failed to initialize NumPy")  # torch's, numpy plays no part
    return None


def few_collections() -> None:
    """For a process of our own (the program, not a caller that imported us): a state of 100k tensors builds
    millions of long-lived objects and no cycles to speak of, and at Python's default thresholds the cyclic
    collector's walks tripled the load time. It runs far less often, and never over the objects from before."""
    import gc

    if gc.get_threshold()[0] < 100_000:  # once per process
        gc.freeze()
        gc.set_threshold(100_000, 50, 100)

