"""Commands that need torch (dry-run, inspect, diff, tui). Their modules are imported only when run."""

from __future__ import annotations

import argparse


def add_heavy_parsers(sub: argparse._SubParsersAction) -> None:
    """Register the torch-backed subcommands (argument parsing only; nothing heavy is imported here)."""


def run(args: argparse.Namespace) -> int:
    raise SystemExit(f"optinspect: unknown command {args.command!r}")
