"""Machine formats for diagnostics: json (stable fields), github workflow annotations, SARIF 2.1.0."""

from __future__ import annotations

import json
from collections.abc import Iterable

from optinspect.diagnostics import Diagnostic, FileReport
from optinspect.render import term


def to_json(reports: Iterable[FileReport]) -> str:
    return json.dumps([d.to_dict() for r in reports for d in r.diagnostics], indent=2)


def _gh_escape(s: str, prop: bool = False) -> str:
    """Workflow-command escaping (so a value cannot end the annotation or start another), then terminal escaping
    of what is left: the runner's log shows these lines."""
    s = term(s.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A"))
    if prop:
        s = s.replace(":", "%3A").replace(",", "%2C")
    return s


def to_github(reports: Iterable[FileReport]) -> str:
    level = {"error": "error", "warning": "warning", "info": "notice"}
    lines = []
    for r in reports:
        for d in r.diagnostics:
            props = (f"file={_gh_escape(d.path, True)},line={d.line},col={d.column},endLine={d.end_line},"
                     f"endColumn={d.end_column},title={_gh_escape(d.code, True)}")
            msg = d.message + (f" (hint: {d.hint})" if d.hint else "")
            lines.append(f"::{level[d.severity.value]} {props}::{_gh_escape(msg)}")
    return "\n".join(lines)


def to_sarif(reports: list[FileReport], rules: dict, version: str) -> str:
    used = sorted({d.code for r in reports for d in r.diagnostics})
    level = {"error": "error", "warning": "warning", "info": "note"}
    rule_objs = [{"id": c, "name": rules[c].name, "shortDescription": {"text": rules[c].summary},
                  "fullDescription": {"text": rules[c].why or rules[c].summary},
                  "help": {"text": rules[c].fix or rules[c].summary},
                  "defaultConfiguration": {"level": level[rules[c].severity.value]}} for c in used]
    index = {c: i for i, c in enumerate(used)}

    def result(d: Diagnostic) -> dict:
        text = d.message + (f" (hint: {d.hint})" if d.hint else "")
        return {"ruleId": d.code, "ruleIndex": index[d.code], "level": level[d.severity.value],
                "message": {"text": text},
                "locations": [{"physicalLocation": {
                    "artifactLocation": {"uri": d.path.replace("\\", "/")},
                    "region": {"startLine": d.line, "startColumn": d.column, "endLine": d.end_line,
                               "endColumn": d.end_column}}}]}

    doc = {"$schema": "https://json.schemastore.org/sarif-2.1.0.json", "version": "2.1.0",
           "runs": [{"tool": {"driver": {"name": "optinspect", "version": version,
                                         "informationUri": "https://github.com/optinspect/optinspect",
                                         "rules": rule_objs}},
                     "results": [result(d) for r in reports for d in r.diagnostics]}]}
    return json.dumps(doc, indent=2)
