"""Commands that need torch (dry-run, inspect, diff, tui). Their modules are imported only when run."""

from __future__ import annotations

import argparse
import json
import os
import sys

from optinspect.cli_common import EXIT_FOUND, EXIT_OK, EXIT_USAGE, positive_int
from optinspect.render import make_console


def add_heavy_parsers(sub: argparse._SubParsersAction) -> None:
    """Register the torch-backed subcommands (argument parsing only; nothing heavy is imported here)."""
    d = sub.add_parser("dry-run", help="build the optimizer from a config and take real steps")
    d.add_argument("config", help="trainer config (.toml) with an [optimizer] table")
    d.add_argument("--steps", type=positive_int, default=10, help="optimizer steps to take (default: 10)")
    d.add_argument("--shapes-from", metavar="MODEL.safetensors", help="real parameter shapes (header only)")
    d.add_argument("--max-params", type=positive_int, default=4_000_000, metavar="N",
                   help="elements to step on with --shapes-from (default: 4,000,000)")
    d.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                   help="parameter dtype (default: [adapter] or [model] dtype of the config)")
    d.add_argument("--device", default="cpu", help="torch device to step on: cpu, cuda, cuda:1, ... (default: cpu)")
    d.add_argument("--seed", type=int, default=0, help="seed of the model, its data and stochastic rounding")
    d.add_argument("--compare-fp32", action="store_true", help="also run a float32 shadow and report the drift")
    d.add_argument("--save", metavar="PATH", help="write the optimizer state (.pt or .safetensors)")
    d.add_argument("--force", action="store_true", help="overwrite --save's file")
    d.add_argument("--json", action="store_true", help="print the report as JSON")

    i = sub.add_parser("inspect", help="statistics of a saved optimizer state, per tensor")
    i.add_argument("state", metavar="STATE", help=".pt/.bin/.safetensors file or checkpoint folder")
    i.add_argument("--json", action="store_true", help="the full report as JSON")
    i.add_argument("--sort", default="index", choices=["index", "name", "step", "first", "second", "scale", "quant",
                                                        "flags", "size"],
                   help="row order: checkpoint order, name, or largest first (moments, update scale, "
                        "quantization error, flags, size)")
    i.add_argument("--filter", metavar="GLOB", help="only parameters whose name matches, e.g. '*attn*'")
    i.add_argument("--top", type=positive_int, metavar="N", help="only the first N rows after sorting")
    i.add_argument("--model", metavar="FILE", help="model .safetensors to name parameters by order and shape")

    t = sub.add_parser("tui", help="interactive view of a saved optimizer state (two: their deltas)")
    t.add_argument("state", metavar="STATE", help=".pt/.bin/.safetensors file or checkpoint folder")
    t.add_argument("other", metavar="B", nargs="?", help="a second state: show what changed from STATE to B")
    t.add_argument("--model", metavar="FILE", help="model .safetensors to name parameters by order and shape")

    f = sub.add_parser("diff", help="compare two states of the same run (after a resume, say)")
    f.add_argument("a", metavar="A", help="the earlier state (file or checkpoint folder)")
    f.add_argument("b", metavar="B", help="the later state")
    f.add_argument("--json", action="store_true", help="the comparison as JSON")
    f.add_argument("--model", metavar="FILE", help="model .safetensors to name parameters by order and shape")


def _quiet_torch_import() -> None:
    """torch warns at import when numpy is absent; numpy plays no part here."""
    import warnings

    warnings.filterwarnings("ignore", message="Failed to initialize NumPy")



def _err(msg: str) -> int:
    """One line on stderr; the message may quote the file (names, bytes in a library's error), so it is escaped."""
    from optinspect.render import term

    sys.stderr.write(f"optinspect: error: {term(msg)}\n")
    return EXIT_USAGE


# What each command needs beyond the light core, and the extra that installs it (said before any work starts)
NEEDS = {"dry-run": (("torch",), "torch"), "inspect": (("torch",), "torch"), "diff": (("torch",), "torch"),
         "tui": (("textual", "torch"), "tui")}


def _installed(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a module set to None in sys.modules, or a broken install
        return False


def run(args: argparse.Namespace) -> int:
    modules, extra = NEEDS.get(args.command, ((), ""))
    missing = [m for m in modules if not _installed(m)]
    if missing:
        return _err(f"{args.command} needs {' and '.join(modules)} ({', '.join(missing)} not installed): "
                    f"pip install 'optinspect[{extra}]'")
    _quiet_torch_import()
    if args.command == "dry-run":
        return cmd_dry_run(args)
    if args.command == "inspect":
        return cmd_inspect(args)
    if args.command == "diff":
        return cmd_diff(args)
    if args.command == "tui":
        return cmd_tui(args)
    return _err(f"unknown command {args.command!r}")


def cmd_dry_run(args: argparse.Namespace) -> int:
    from optinspect.config.validate import Options, validate_file

    report = validate_file(args.config, Options(require_optimizer=True))
    errors = [d for d in report.diagnostics if d.severity.value == "error"]
    if errors or report.unreadable:
        from optinspect.render.text import render

        render([report], make_console(stderr=True))
        return EXIT_USAGE
    if args.save and os.path.exists(args.save) and not args.force:
        return _err(f"{args.save} exists; pass --force to overwrite it")
    warnings = [d for d in report.diagnostics if d.severity.value == "warning"]
    if warnings and not args.json:  # the run goes ahead, but what validate would warn about is said first
        from optinspect.diagnostics import FileReport
        from optinspect.render.text import render

        render([FileReport(report.path, warnings, report.source)], make_console(stderr=True), show_source=False)
    config = report.data or {}
    from optinspect import dryrun
    from optinspect.build import NotBundled

    console = make_console(stderr=True)
    try:
        if args.json or not console.is_terminal:
            rep, opt, names = dryrun.run(args.config, config, steps=args.steps, dtype=args.dtype, device=args.device,
                                         seed=args.seed, shapes=args.shapes_from, max_params=args.max_params,
                                         compare_fp32=args.compare_fp32)
        else:
            from rich.progress import Progress

            with Progress(console=console, transient=True) as bar:
                task = bar.add_task("stepping", total=args.steps)
                rep, opt, names = dryrun.run(args.config, config, steps=args.steps, dtype=args.dtype,
                                             device=args.device, seed=args.seed, shapes=args.shapes_from,
                                             max_params=args.max_params, compare_fp32=args.compare_fp32,
                                             progress=lambda i, n: bar.update(task, completed=i))
    except (dryrun.DryRunError, NotBundled) as e:
        return _err(str(e))
    except (TypeError, ValueError) as e:  # a constructor's own argument check
        return _err(f"the optimizer rejected the table: {e}")
    saved = None
    if args.save:
        from optinspect.state.save import SaveError, save

        try:
            saved = save(args.save, opt.state_dict(), names, rep.to_dict(), optimizer_type=rep.optimizer_type,
                         force=args.force)
        except (SaveError, OSError) as e:
            return _err(f"cannot save: {e}")
    if args.json:
        out = rep.to_dict()
        out["saved_to"] = saved
        out["validate"] = [d.to_dict() for d in warnings]  # validate's warnings on the same table
        print(json.dumps(out, indent=2, default=str))
    else:
        from optinspect.render.dryrun import render

        render(rep, make_console(tables=True))
        if saved:
            make_console().print(f"saved optimizer state to {saved}", markup=False)
    return EXIT_OK if rep.status == "healthy" else EXIT_FOUND


def _load(path: str, model: str | None):
    from optinspect.state.header import HeaderError
    from optinspect.state.load import StateLoadError, load_state

    try:
        return load_state(path, model=model), None
    except (StateLoadError, HeaderError, OSError) as e:
        return None, str(e)


def cmd_inspect(args: argparse.Namespace) -> int:
    ls, error = _load(args.state, args.model)
    if error:
        return _err(error)

    total = ls.tensor_bytes
    console = make_console(stderr=True)
    from optinspect.state.ptindex import CorruptData

    try:
        report = _inspect_report(ls, console, total, args.json)
    except CorruptData as e:
        return _err(str(e))
    if args.json:
        from optinspect.render.state import write_json

        write_json(report, sys.stdout)
        return EXIT_OK
    from optinspect.render.state import render, select

    render(report, make_console(tables=True), select(report, args.sort, args.filter, args.top))
    return EXIT_OK


def _inspect_report(ls, console, total: int, quiet: bool):
    from optinspect.state.report import build_report

    if console.is_terminal and not quiet and total > 256 * 2**20:
        from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

        with Progress("{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(), console=console,
                      transient=True) as bar:
            task = bar.add_task("reading", total=total)
            return build_report(ls, progress=lambda n: bar.advance(task, n))
    return build_report(ls)


def cmd_diff(args: argparse.Namespace) -> int:
    a, error = _load(args.a, args.model)
    if error:
        return _err(error)
    b, error = _load(args.b, args.model)
    if error:
        return _err(error)
    from optinspect.state.diff import diff_states
    from optinspect.state.ptindex import CorruptData

    try:
        d = diff_states(a, b)
    except CorruptData as e:
        return _err(str(e))
    if args.json:
        print(json.dumps(d.to_dict(), indent=1, default=str))
        return EXIT_OK
    from optinspect.render.state import render_diff

    render_diff(d, make_console(tables=True))
    return EXIT_OK


def cmd_tui(args: argparse.Namespace) -> int:
    for p in [args.state] + ([args.other] if args.other else []):
        if not os.path.exists(p):
            return _err(f"{p}: no such file or folder")
    if not (sys.stdout.isatty() and sys.stdin.isatty()):  # else it draws escape codes into a pipe and never ends
        return _err("the TUI needs a terminal (standard input and output are not one); "
                    "`optinspect inspect` prints the same report as text, or as JSON with --json")
    # torch is imported by the loading worker, after the first paint
    from optinspect.tui.app import make_app

    app = make_app(args.state, args.other, args.model)
    code = app.run()
    if app.return_code == 2:
        return EXIT_USAGE
    return int(code or 0)
