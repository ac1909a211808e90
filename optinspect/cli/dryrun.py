"""`optinspect dry-run`: config → validated table → real optimizer steps → report (and the saved state)."""

from __future__ import annotations

import argparse
import json
import os

from optinspect.cli.common import EXIT_FOUND, EXIT_OK, EXIT_USAGE, err, missing_extra
from optinspect.render import make_console


def run(args: argparse.Namespace) -> int:
    missing = missing_extra("dry-run", ("torch",), "torch")
    if missing is not None:
        return missing
    from optinspect.config.validate import Options, validate_file
    from optinspect.render.text import render as render_diagnostics

    report = validate_file(args.config, Options(require_optimizer=True))
    # what fails only with the trainer's own classes is said, but does not stop a run of optinspect's
    from optinspect.config.registry import all_rules

    rules = all_rules()
    ours = [d for d in report.diagnostics if not rules[d.code].trainer_class]
    errors = [d for d in ours if d.severity.value == "error"]
    if errors or report.unreadable:
        render_diagnostics([report], make_console(stderr=True))
        return EXIT_USAGE
    if args.save and os.path.exists(args.save) and not args.force:
        return err(f"{args.save} exists; pass --force to overwrite it")
    warnings = [d for d in report.diagnostics if d.severity.value == "warning" or d not in ours]
    if warnings and not args.json:  # the run goes ahead, but what validate would warn about is said first
        from optinspect.diagnostics import FileReport

        render_diagnostics([FileReport(report.path, warnings, report.source)], make_console(stderr=True),
                           show_source=False)
    from optinspect.build import NotBundled
    from optinspect.dryrun.engine import DryRunError, Settings
    from optinspect.dryrun.engine import run as dry_run

    settings = Settings(steps=args.steps, dtype=args.dtype, device=args.device, seed=args.seed,
                        shapes=args.shapes_from, max_params=args.max_params, compare_fp32=args.compare_fp32,
                        options=tuple((k, True) for k in ("upcast", "compiled") if getattr(args, k)))
    console = make_console(stderr=True)
    try:
        if args.json or not console.is_terminal:
            rep, opt, names = dry_run(args.config, report.data or {}, settings)
        else:
            from rich.progress import Progress

            with Progress(console=console, transient=True) as bar:
                task = bar.add_task("stepping", total=args.steps)
                rep, opt, names = dry_run(args.config, report.data or {}, settings,
                                          progress=lambda i, n: bar.update(task, completed=i))
    except (DryRunError, NotBundled) as e:
        return err(str(e))
    except (TypeError, ValueError) as e:  # a constructor's own argument check
        return err(f"the optimizer rejected the table: {e}")
    saved = None
    if args.save:
        from optinspect.state.save import SaveError, save

        try:
            saved = save(args.save, opt.state_dict(), names, rep.to_dict(), optimizer_type=rep.optimizer_type,
                         force=args.force)
        except (SaveError, OSError) as e:
            return err(f"cannot save: {e}")
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
