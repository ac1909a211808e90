"""Command line: argument parsing and exit codes only. Each command's module is imported lazily, so
`optinspect validate` never imports torch, textual or safetensors."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from optinspect.cli_common import EXIT_FOUND, EXIT_OK, EXIT_USAGE, positive_int
from optinspect.render import make_console

DESCRIPTION = ("Check a diffusion trainer's [optimizer] table before the run, dry-run the optimizer it builds, "
               "and look inside saved optimizer state.")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # usage errors exit 2 with one clear line, as argparse does
        self.print_usage(sys.stderr)
        sys.stderr.write(f"optinspect: error: {message}\n")
        raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="optinspect", description=DESCRIPTION,
                epilog="`optinspect COMMAND --help` for each command's options. Exit status: 0 fine; 1 when "
                       "validate finds errors or a dry-run is not healthy; 2 usage error or unreadable input.")
    from optinspect import __version__

    p.add_argument("--version", action="version", version=f"optinspect {__version__}")
    p.add_argument("--debug", action="store_true", help="show the traceback of an unexpected error")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    v = sub.add_parser("validate", help="check the [optimizer] table of trainer configs")
    v.add_argument("files", nargs="+", metavar="PATH", help="trainer configs (.toml), or folders to search for them")
    v.add_argument("--format", choices=["text", "json", "github", "sarif"], default="text",
                   help="text for people; json, GitHub annotations or SARIF for tools (default: text)")
    v.add_argument("--strict", action="store_true", help="warnings also fail (exit 1)")
    v.add_argument("--ignore", action="append", default=[], metavar="CODE", help="skip a rule (repeatable, "
                   "or comma-separated)")
    v.add_argument("--require-optimizer", action="store_true", help="a file without [optimizer] is an error")
    v.add_argument("--world-size", type=positive_int, default=None, help="number of GPUs the run will use (OPT601)")
    v.add_argument("--quiet", "-q", action="store_true", help="no summary line when nothing was found")

    sub.add_parser("rules", help="list every rule code")
    e = sub.add_parser("explain", help="the long form of one rule")
    e.add_argument("code", help="a rule code such as OPT301 (`optinspect rules` lists them)")

    s = sub.add_parser("schema", help="print a JSON Schema (the whole-config one without TYPE)")
    s.add_argument("type", nargs="?", help="an optimizer type as written in the config, e.g. adafactor")
    s.add_argument("--path", action="store_true", help="print the schema file's path instead")
    s.add_argument("--list", action="store_true", help="list the optimizer types that have a schema")

    from optinspect import commands

    commands.add_heavy_parsers(sub)
    p.set_defaults(_commands=sub.choices)
    return p


def main(argv: Sequence[str] | None = None) -> int:
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
    if args.command == "validate":
        return cmd_validate(args)
    if args.command == "rules":
        return cmd_rules()
    if args.command == "explain":
        return cmd_explain(args.code)
    if args.command == "schema":
        return cmd_schema(args)
    from optinspect import commands

    return commands.run(args)


def cmd_validate(args: argparse.Namespace) -> int:
    from optinspect.config.discover import expand
    from optinspect.config.validate import Options, validate_file

    ignore = frozenset(c.strip().upper() for item in args.ignore for c in item.split(",") if c.strip())
    unknown = sorted(ignore - set(_all_rules()))
    if unknown:
        return _unknown_codes(unknown, "--ignore")
    opts = Options(require_optimizer=args.require_optimizer, ignore=ignore, world_size=args.world_size)
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
        from optinspect.config.registry import RULES
        from optinspect.render.machine import to_sarif

        print(to_sarif(reports, RULES, __version__))
    else:
        if any(r.diagnostics for r in reports):
            from optinspect.render.text import render

            render(reports, make_console())
        elif not args.quiet:
            print(f"{len(reports)} file{'s' * (len(reports) != 1)} checked: no problems found")
    if any(r.unreadable for r in reports):
        return EXIT_USAGE
    failing = {"error", "warning"} if args.strict else {"error"}
    return EXIT_FOUND if any(d.severity.value in failing for r in reports for d in r.diagnostics) else EXIT_OK


def _all_rules() -> dict:
    from optinspect.config import rules  # noqa: F401 - registers the rule functions
    from optinspect.config.registry import RULES

    return RULES


def _unknown_codes(codes: list[str], where: str) -> int:
    import difflib

    hints = []
    for code in codes:
        close = difflib.get_close_matches(code, list(_all_rules()), n=3)
        hints.append(code + (f" (did you mean {', '.join(close)}?)" if close else ""))
    sys.stderr.write(f"optinspect: error: {where}: unknown rule code{'s' * (len(codes) > 1)} {'; '.join(hints)}; "
                     "`optinspect rules` lists them\n")
    return EXIT_USAGE


def cmd_rules() -> int:
    from rich.table import Table
    from rich.text import Text

    table = Table("code", "name", "severity", "summary", box=None, pad_edge=False)
    for code, r in sorted(_all_rules().items()):  # Text: summaries hold TOML like [optimizer], not markup
        table.add_row(code, r.name, r.severity.value, Text(r.summary))
    make_console(tables=True).print(table)
    return EXIT_OK


def cmd_explain(code: str) -> int:
    rules = _all_rules()
    r = rules.get(code.upper())
    if r is None:
        return _unknown_codes([code.upper()], "explain")
    from rich.markdown import Markdown

    applies = ", ".join(r.types) if r.types else "every optimizer type"
    md = [f"# {r.code} {r.name} ({r.severity.value})", "", r.summary, "", "## What it checks",
          f"{r.summary} Applies to: {applies}. Produced by: {r.kind}.", ""]
    if r.why:
        md += ["## Why it matters", r.why, ""]
    if r.example:
        md += ["## Example", "```toml", r.example, "```", ""]
    if r.fix:
        md += ["## Fix", r.fix, ""]
    md += ["## Suppress", f"`# optinspect: ignore[{r.code}]` at the end of the key's line, or "
           f"`--ignore {r.code}`."]
    make_console().print(Markdown("\n".join(md)))
    return EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    import json

    from optinspect.config import catalog, schemas

    if args.list:
        for name in schemas.available():
            print(schemas.meta(name).get("type", name))
        return EXIT_OK
    if args.type is None:
        name = schemas.BUNDLE
    else:
        res = catalog.resolve_type(args.type)
        name = res.schema or args.type.lower()
        if not schemas.schema_path(name).is_file():
            sys.stderr.write(f"optinspect: no schema for type {args.type!r}; known: "
                             f"{', '.join(schemas.meta(n).get('type', n) for n in schemas.available())}\n")
            return EXIT_USAGE
    if args.path:
        print(schemas.schema_path(name))
    else:
        print(json.dumps(schemas.load(name), indent=2))
    return EXIT_OK
