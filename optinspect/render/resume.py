"""The resume plan for people: what the resumed run uses, then the findings on the config's lines."""

from __future__ import annotations

from optinspect.diagnostics import FileReport
from optinspect.render import term


def render(report, file_report: FileReport, console) -> None:
    from rich.table import Table
    from rich.text import Text

    head = Table.grid(padding=(0, 2))
    rows = [("config", report.config), ("state", report.state),
            ("optimizer", f"saved {report.saved_family}; the config builds {report.expected_family or '?'} "
                          f"(type '{report.config_type}')"),
            ("resume", f"{report.outcome}, at step {report.resumes_at_step or '?'}"),
            ("first lr", f"{report.lr_first_step} (from the {report.lr_from})" if report.lr_from else "-")]
    if report.next_reset is not None:
        rows.append(("next reset", f"step {report.next_reset}"))
    for c in report.changes:
        rows.append((f"{c.key}", f"saved {c.saved!r}, config {c.config!r}: uses the {c.used} value ({c.why})"))
    for label, value in rows:
        head.add_row(Text(term(label), style="bold"), Text(term(str(value))))
    console.print(head)
    console.print()
    if file_report.diagnostics:
        from optinspect.render.text import render as render_findings

        render_findings([file_report], console)
