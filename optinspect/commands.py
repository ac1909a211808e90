"""Commands that need torch (dry-run, inspect, diff, tui). Their modules are imported only when run."""

from __future__ import annotations

import argparse
import json
import os
import sys

EXIT_OK, EXIT_FOUND, EXIT_USAGE = 0, 1, 2


def add_heavy_parsers(sub: argparse._SubParsersAction) -> None:
    """Register the torch-backed subcommands (argument parsing only; nothing heavy is imported here)."""
    d = sub.add_parser("dry-run", help="build the optimizer from a config and take real steps")
    d.add_argument("config")
    d.add_argument("--steps", type=int, default=10)
    d.add_argument("--shapes-from", metavar="MODEL.safetensors", help="real parameter shapes (header only)")
    d.add_argument("--max-params", type=int, default=4_000_000, help="elements to step on with --shapes-from")
    d.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                   help="parameter dtype (default: [adapter] or [model] dtype of the config)")
    d.add_argument("--device", default="cpu")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--compare-fp32", action="store_true", help="also run a float32 shadow and report the drift")
    d.add_argument("--save", metavar="PATH", help="write the optimizer state (.pt or .safetensors)")
    d.add_argument("--force", action="store_true", help="overwrite --save's file")
    d.add_argument("--json", action="store_true", help="print the report as JSON")


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, no_color=bool(os.environ.get("NO_COLOR")) or None)


def _err(msg: str) -> int:
    sys.stderr.write(f"optinspect: error: {msg}\n")
    return EXIT_USAGE


def run(args: argparse.Namespace) -> int:
    if args.command == "dry-run":
        return cmd_dry_run(args)
    return _err(f"unknown command {args.command!r}")


def cmd_dry_run(args: argparse.Namespace) -> int:
    from optinspect.config.validate import Options, validate_file

    report = validate_file(args.config, Options(require_optimizer=True))
    errors = [d for d in report.diagnostics if d.severity.value == "error"]
    if errors or report.unreadable:
        from optinspect.render.text import render

        render([report], _console(stderr=True))
        return EXIT_USAGE
    if args.steps < 1:
        return _err("--steps must be at least 1")
    if args.save and os.path.exists(args.save) and not args.force:
        return _err(f"{args.save} exists; pass --force to overwrite it")
    import tomlkit

    with open(args.config, encoding="utf-8-sig") as fh:
        config = tomlkit.parse(fh.read()).unwrap()
    try:
        import torch  # noqa: F401
    except ImportError:
        return _err("dry-run needs torch: pip install 'optinspect[torch]'")
    from optinspect import dryrun
    from optinspect.build import NotBundled, ShadowedPackage

    console = _console(stderr=True)
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
    except (dryrun.DryRunError, NotBundled, ShadowedPackage) as e:
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
        print(json.dumps(out, indent=2, default=str))
    else:
        from optinspect.render.dryrun import render

        render(rep, _console())
        if saved:
            _console().print(f"saved optimizer state to {saved}")
    return EXIT_OK if rep.status == "healthy" else EXIT_FOUND
