"""`optinspect validate`: configs → diagnostics → text, JSON, GitHub annotations or SARIF."""

from __future__ import annotations

import argparse
import sys

from optinspect.cli.common import EXIT_FOUND, EXIT_OK, EXIT_USAGE


def run(args: argparse.Namespace) -> int:
    from optinspect.config.discover import expand
    from optinspect.config.validate import Options, validate_file

    ignore = frozenset(c.strip().upper() for item in args.ignore for c in item.split(",") if c.strip())
    unknown = sorted(ignore - set(all_rules()))
    if unknown:
        return unknown_codes(unknown, "--ignore")
    opts = Options(require_optimizer=args.require_optimizer, ignore=ignore, world_size=args.world_size,
                   trainer_profile=args.trainer)
    reports = [validate_file(f, opts) for f in expand(args.files)]
    if args.format == "json":
        from optinspect.render.machine import to_json

        print(to_json(reports))
    elif args.format == "github":
        from optinspect.render.machine import to_github

        out = to_github(reports)
        if out:
            print(out)
    elif args.format == "sarif":
        from optinspect import __version__
        from optinspect.render.machine import to_sarif

        print(to_sarif(reports, all_rules(), __version__))
    else:
        from optinspect.render.text import trainer_line

        if any(r.diagnostics for r in reports):
            from optinspect.render import make_console
            from optinspect.render.text import render

            render(reports, make_console())
        elif not args.quiet:
            print(f"{len(reports)} file{'s' * (len(reports) != 1)} checked: no problems found")
        line = trainer_line(reports)
        if line and (not args.quiet or any(r.diagnostics for r in reports)):
            print(line)
    if any(r.unreadable for r in reports):
        return EXIT_USAGE
    failing = {"error", "warning"} if args.strict else {"error"}
    return EXIT_FOUND if any(d.severity.value in failing for r in reports for d in r.diagnostics) else EXIT_OK


def all_rules() -> dict:
    from optinspect.config.registry import all_rules

    return all_rules()


def unknown_codes(codes: list[str], where: str) -> int:
    import difflib

    hints = []
    for code in codes:
        close = difflib.get_close_matches(code, list(all_rules()), n=3)
        hints.append(code + (f" (did you mean {', '.join(close)}?)" if close else ""))
    sys.stderr.write(f"optinspect: error: {where}: unknown rule code{'s' * (len(codes) > 1)} {'; '.join(hints)}; "
                     "`optinspect rules` lists them\n")
    return EXIT_USAGE
