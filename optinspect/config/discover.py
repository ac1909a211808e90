"""Which files `validate` reads: the paths given, with folders walked for `*.toml` as linters do."""

from __future__ import annotations

import os

# Folders a walk never enters: version control, virtual environments, caches and build output hold other
# people's TOML (pyproject files of installed packages), never the user's trainer configs.
SKIP_DIRS = frozenset({"node_modules", "__pycache__", "site-packages", "venv", "build", "dist"})
MAX_FILES = 10_000  # a walk that finds more stops there: pre-commit hands over files, not trees


def expand(paths: list[str]) -> list[str]:
    """Files in the order given; a folder becomes its `*.toml` files (sorted, hidden and skipped folders left out,
    symlinked folders not followed). A folder without any stays in the list, so its reading reports it."""
    out: list[str] = []
    for path in paths:
        if not os.path.isdir(path):
            out.append(path)
            continue
        found: list[str] = []
        for root, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in SKIP_DIRS)
            found.extend(os.path.join(root, f) for f in sorted(files) if f.endswith(".toml"))
            if len(found) >= MAX_FILES:
                break
        out.extend(found[:MAX_FILES] or [path])
    return out
