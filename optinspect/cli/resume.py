"""`optinspect resume`: a config and a saved state → what the resumed run will really do → findings, exit code."""

from __future__ import annotations

import argparse
import json

from optinspect.cli.common import EXIT_FOUND, EXIT_OK, err, missing_extra


def run(args: argparse.Namespace) -> int:
    missing = missing_extra("resume", ("torch",), "torch")
    if missing is not None:
        return missing
    from optinspect.resume import ResumeError, plan
    from optinspect.state.header import HeaderError
    from optinspect.state.load import StateLoadError
    from optinspect.state.mapped import CorruptData

    try:
        file_report, report = plan(args.config, args.state, model=args.model, trainer=args.trainer,
                                   reset_optimizer=args.reset_optimizer,
                                   reset_optimizer_params=args.reset_optimizer_params)
    except (ResumeError, StateLoadError, HeaderError, CorruptData, OSError) as e:
        return err(str(e))
    if args.format == "json":
        out = report.to_dict()
        out["findings"] = [d.to_dict() for d in file_report.diagnostics]
        print(json.dumps(out, indent=2, default=str))
    elif args.format == "github":
        from optinspect.render.machine import to_github

        text = to_github([file_report])
        if text:
            print(text)
    elif args.format == "sarif":
        from optinspect import __version__
        from optinspect.config.registry import all_rules
        from optinspect.render.machine import to_sarif

        print(to_sarif([file_report], all_rules(), __version__))
    else:
        from optinspect.render import make_console
        from optinspect.render.resume import render

        render(report, file_report, make_console())
    return EXIT_FOUND if any(d.severity.value == "error" for d in file_report.diagnostics) else EXIT_OK
