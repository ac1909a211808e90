"""The rule catalogue for people: the `rules` table and the `explain` page."""

from __future__ import annotations

from optinspect.render import make_console


def rules_table(rules: dict) -> None:
    from rich.table import Table
    from rich.text import Text

    table = Table("code", "name", "severity", "summary", box=None, pad_edge=False)
    for code, r in sorted(rules.items()):  # Text: summaries hold TOML like [optimizer], not markup
        table.add_row(code, r.name, r.severity.value, Text(r.summary))
    make_console(tables=True).print(table)


def explain_page(r, contract: str) -> None:
    """`contract`: what the rule's severity promises (the registry's SEVERITY_CONTRACT entry)."""
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
    md += ["## Severity", f"**{r.severity.value}**: {contract} A finding may be graded lower "
           "(or higher) than its code's severity when the value at hand says so.", ""]
    md += ["## Suppress", f"`# optinspect: ignore[{r.code}]` at the end of the key's line, or "
           f"`--ignore {r.code}`."]
    make_console().print(Markdown("\n".join(md)))
