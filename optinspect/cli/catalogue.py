"""`optinspect rules`, `explain` and `schema`: what optinspect knows, printed."""

from __future__ import annotations

import argparse
import json
import sys

from optinspect.cli.common import EXIT_OK, EXIT_USAGE
from optinspect.cli.validate import all_rules, unknown_codes


def run(args: argparse.Namespace) -> int:
    if args.command == "rules":
        from optinspect.render.rules import rules_table

        rules_table(all_rules())
        return EXIT_OK
    if args.command == "explain":
        rule = all_rules().get(args.code.upper())
        if rule is None:
            return unknown_codes([args.code.upper()], "explain")
        from optinspect.config.registry import SEVERITY_CONTRACT
        from optinspect.render.rules import explain_page

        explain_page(rule, SEVERITY_CONTRACT[rule.severity])
        return EXIT_OK
    return _schema(args)


def _schema(args: argparse.Namespace) -> int:
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
