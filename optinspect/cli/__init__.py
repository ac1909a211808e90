"""Command line: one parser, one dispatcher. Each command is a module of this package with `run(args) -> int`
(argv → engine → renderer → exit code), imported only when chosen, so `optinspect validate` never imports torch,
textual or safetensors."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from optinspect.cli.common import EXIT_OK, EXIT_USAGE, few_collections
from optinspect.cli.parser import DESCRIPTION, build_parser

__all__ = ["DESCRIPTION", "build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """The program (`argv` None: sys.argv, and the process is ours to tune), or a call with its own arguments."""
    if argv is None:
        few_collections()
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:  # said by the command's parser, so the usage shown is that command's
            (args._commands.get(args.command) or parser).error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as e:
        return int(e.code or 0)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK
    except (MemoryError, RecursionError, Exception) as e:  # noqa: BLE001 - the last resort: one line, exit 2
        if args.debug:
            raise
        from optinspect.render import term

        sys.stderr.write(f"optinspect: error: unexpected {type(e).__name__}: {term(str(e))[:300]} (the input is "
                         "probably malformed; --debug shows the traceback)\n")
        return EXIT_USAGE


def _dispatch(args: argparse.Namespace) -> int:
    return importlib.import_module(f"{__name__}.{args.run}").run(args)
