"""`optinspect inspect` and `diff`: saved state → report → table or JSON."""

from __future__ import annotations

import argparse
import json
import sys

from optinspect.cli.common import EXIT_OK, err, missing_extra
from optinspect.render import make_console


def run(args: argparse.Namespace) -> int:
    missing = missing_extra(args.command, ("torch",), "torch")
    if missing is not None:
        return missing
    return _inspect(args) if args.command == "inspect" else _diff(args)


def _load(path: str, model: str | None, optimizer: int, max_tensors: int):
    from optinspect.state.collector import long_lived
    from optinspect.state.header import HeaderError
    from optinspect.state.load import StateLoadError, load_state
    from optinspect.state.mapped import CorruptData

    try:
        with long_lived():
            return load_state(path, model=model, optimizer=optimizer, max_tensors=max_tensors), None
    except (StateLoadError, HeaderError, CorruptData, OSError) as e:
        return None, str(e)


def _inspect(args: argparse.Namespace) -> int:
    ls, error = _load(args.state, args.model, args.optimizer, args.max_tensors)
    if error:
        return err(error)
    from optinspect.render.state import StreamedTable
    from optinspect.state.mapped import CorruptData

    if not args.json and args.sort == "index" and not args.top and len(ls.params) > StreamedTable.STREAM_ABOVE:
        console = make_console(tables=True)  # a large state, in checkpoint order: printed as it is computed
        table = StreamedTable(console, ls, args.filter)
        from optinspect.state.analyse import build_report

        try:
            table.finish(build_report(ls, on_param=table.add))
        except CorruptData as e:
            return err(str(e))
        return EXIT_OK
    try:
        report = _report(ls, make_console(stderr=True), quiet=args.json)
    except CorruptData as e:
        return err(str(e))
    if args.json:
        from optinspect.render.state import write_json

        write_json(report, sys.stdout)
        return EXIT_OK
    from optinspect.render.state import render, select

    render(report, make_console(tables=True), select(report, args.sort, args.filter, args.top))
    return EXIT_OK


def _report(ls, console, quiet: bool):
    from optinspect.state.analyse import build_report

    total = ls.tensor_bytes
    if console.is_terminal and not quiet and total > 256 * 2**20:
        from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

        with Progress("{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(), console=console,
                      transient=True) as bar:
            task = bar.add_task("reading", total=total)
            return build_report(ls, progress=lambda n: bar.advance(task, n))
    return build_report(ls)


def _diff(args: argparse.Namespace) -> int:
    each = max(args.max_tensors // 2, 1)  # the bound holds for the two files together
    a, error = _load(args.a, args.model, args.optimizer, each)
    if error:
        return err(error)
    b, error = _load(args.b, args.model, args.optimizer, each)
    if error:
        return err(error)
    from optinspect.state.diff import diff_states
    from optinspect.state.mapped import CorruptData

    try:
        d = diff_states(a, b)
    except CorruptData as e:
        return err(str(e))
    if args.json:
        print(json.dumps(d.to_dict(), indent=1, default=str))
        return EXIT_OK
    from optinspect.render.state import render_diff

    render_diff(d, make_console(tables=True))
    return EXIT_OK
