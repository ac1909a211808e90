"""`optinspect tui`: the Textual app over one state, or the changes between two."""

from __future__ import annotations

import argparse
import os
import sys

from optinspect.cli.common import EXIT_USAGE, err, missing_extra


def run(args: argparse.Namespace) -> int:
    missing = missing_extra("tui", ("textual", "torch"), "tui")
    if missing is not None:
        return missing
    for p in [args.state] + ([args.other] if args.other else []):
        if not os.path.exists(p):
            return err(f"{p}: no such file or folder")
    if not (sys.stdout.isatty() and sys.stdin.isatty()):  # else it draws escape codes into a pipe and never ends
        return err("the TUI needs a terminal (standard input and output are not one); "
                   "`optinspect inspect` prints the same report as text, or as JSON with --json")
    # torch is imported by the loading worker, after the first paint
    from optinspect.tui.app import make_app

    app = make_app(args.state, args.other, args.model, args.optimizer, args.max_tensors)
    code = app.run()
    if app.return_code == 2:
        return EXIT_USAGE
    return int(code or 0)
