"""Human-readable diagnostics in the ruff/rustc style: location, code, message, the source line, a marker."""

from __future__ import annotations

from collections.abc import Iterable

from optinspect.config.secrets import mask_line, redact
from optinspect.diagnostics import FileReport
from optinspect.render import term

CLEAN_NAMED = 5  # clean files named in the summary; more are counted
_STYLE = {"error": "bold red", "warning": "bold yellow", "info": "bold cyan"}
def render(reports: Iterable[FileReport], console, *, show_source: bool = True) -> None:
    from rich.markup import escape
    from rich.text import Text

    n_err = n_warn = n_info = n_files = 0
    clean: list[str] = []
    for r in reports:
        n_files += 1
        if not r.diagnostics:
            clean.append(r.path)
        lines = r.source.splitlines() if (show_source and r.source) else []
        for d in r.diagnostics:
            sev = d.severity.value
            n_err += sev == "error"
            n_warn += sev == "warning"
            n_info += sev == "info"
            head = Text()
            head.append(f"{term(d.path)}:{d.line}:{d.column}: ", style="bold")
            head.append(f"{d.code} ", style=_STYLE[sev])
            head.append(f"[{sev}] ", style=_STYLE[sev])
            head.append(term(d.message))
            console.print(head, highlight=False, soft_wrap=True)
            if 0 < d.line <= len(lines):
                src = term(redact(mask_line(lines[d.line - 1].rstrip("\r")), r.secrets), one_line=False)
                gutter = f"{d.line:>4} | "
                console.print(Text(gutter, style="blue") + Text(src), highlight=False, soft_wrap=True)
                width = max(1, (d.end_column - d.column) if d.end_line == d.line else len(src) - d.column + 1)
                width = min(width, max(1, len(src) - d.column + 1))
                marker = " " * (d.column - 1) + "^" * width
                console.print(Text(" " * (len(gutter) - 2) + "| ", style="blue") + Text(marker, style=_STYLE[sev]),
                              highlight=False, soft_wrap=True)
            if d.hint:
                console.print(f"     = hint: {escape(term(d.hint))}", highlight=False, soft_wrap=True)
            console.print()
    if n_err or n_warn or n_info:
        summary = f"{n_err} error{'s' * (n_err != 1)}, {n_warn} warning{'s' * (n_warn != 1)}, {n_info} info in " \
                  f"{n_files} file{'s' * (n_files != 1)}"
        console.print(Text(summary, style="bold red" if n_err else "bold yellow"), highlight=False)
        if clean:  # said, so that a clean file among others is not taken for one that was skipped
            more = len(clean) - CLEAN_NAMED
            shown = ", ".join(term(c) for c in clean[:CLEAN_NAMED]) + (f" and {more} more" if more > 0 else "")
            console.print(Text(f"no problems found in {len(clean)} file{'s' * (len(clean) != 1)}: {shown}",
                               style="green"), highlight=False, soft_wrap=True)


def trainer_line(reports: list[FileReport]) -> str | None:
    """Which trainer each file's table was judged as (the profile decides types, keys popped, beta2_half_life)."""
    from optinspect import specs

    groups: dict[str | None, list[str]] = {}
    for r in reports:
        if r.optimizer_type is not None:
            groups.setdefault(r.trainer, []).append(r.trainer_reason)
    if not groups:
        return None

    def said(trainer: str | None, reasons: list[str]) -> str:
        if trainer is None:
            return "either trainer (upstream diffusion-pipe or diffusion-chroma; --trainer picks one)"
        title = specs.PROFILES[trainer].title
        if len(set(reasons)) > 1:
            return f"{title} (inferred from the types)"
        return f"{title} ({term(reasons[0])})"

    if len(groups) == 1:
        trainer, reasons = next(iter(groups.items()))
        return "judged as " + said(trainer, reasons)
    return "judged as: " + "; ".join(f"{said(t, rs)} for {len(rs)} file{'s' * (len(rs) != 1)}"
                                     for t, rs in groups.items())
