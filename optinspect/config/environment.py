"""What is installed where validate runs, read from package metadata only (nothing is imported): some rules
depend on the version of a library the trainer uses (bitsandbytes removed constructor arguments in 0.50)."""

from __future__ import annotations

import functools
import re


@functools.cache
def installed_version(distribution: str) -> tuple[int, ...] | None:
    """The installed version as numbers (0.50.2 -> (0, 50, 2)), or None when it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        text = version(distribution)
    except (PackageNotFoundError, ValueError):
        return None
    return parse(text)


def parse(text: str) -> tuple[int, ...] | None:
    numbers = re.findall(r"\d+", text.split("+")[0])[:3]
    return tuple(int(n) for n in numbers) if numbers else None


def show(version: tuple[int, ...]) -> str:
    return ".".join(map(str, version))
