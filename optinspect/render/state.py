"""Rich rendering of a StateReport and a DiffReport (tables only; the numbers come from state/)."""

from __future__ import annotations

import fnmatch

from optinspect.render import term
from optinspect.render.view import STATE_COLUMNS, applicable, sort_rows, state_summary, step_change
from optinspect.state.report import DiffReport, ParamReport, StateReport


def select(report: StateReport, sort: str = "index", pattern: str | None = None, top: int | None = None
           ) -> list[ParamReport]:
    rows = sort_rows([r for r in report.params if not pattern or fnmatch.fnmatch(r.name, pattern)], sort)
    return rows[:top] if top else rows


# Dropped first when the table is wider than the terminal (the name and the moments stay).
_DROP_ORDER = ("kahan", "dtype", "shape", "resets", "quant", "step", "update", "flags")


def fit_columns(rows: list[ParamReport], width: int, texts: dict[str, list[str]] | None = None
                ) -> tuple[list, list[str]]:
    """The columns to show: none that says "-" on every row, then as many as fit `width` without cutting a
    number (lower-priority ones go first). Returns (columns, titles hidden for width)."""
    texts = texts if texts is not None else cell_texts(rows)
    shown = applicable(STATE_COLUMNS, rows, texts)

    def natural(cols: list) -> int:
        widths = [max([len(c.title)] + [len(t) for t in texts[c.title]]) for c in cols]
        if cols and cols[0].title == "name":
            widths[0] = min(widths[0], 16)  # a long name folds onto more lines
        return sum(widths) + 2 * (len(cols) - 1)

    hidden = []
    for title in _DROP_ORDER:
        if natural(shown) <= width:
            break
        if any(c.title == title for c in shown):
            shown = [c for c in shown if c.title != title]
            hidden.append(title)
    return shown, hidden


def cell_texts(rows: list[ParamReport]) -> dict[str, list[str]]:
    """Every column's text for every row, escaped for the terminal (names and flags come from the file)."""
    return {c.title: [term(c.text(r)) for r in rows] for c in STATE_COLUMNS}


def _fold(text: str, width: int) -> list[str]:
    return [text[i:i + width] for i in range(0, len(text), width)] or [""]


def table_lines(columns: list, texts: dict[str, list[str]], width: int) -> tuple[str, list[list[tuple[str, bool]]]]:
    """The table as lines of plain text: the title line, then per row its lines as (text, flagged) pieces. Numbers
    keep their width; the name and flags columns share what is left of `width` and fold onto more lines.
    Written by hand: rich's table layout took a minute for 50k rows."""
    titles = [c.title for c in columns]
    natural = [max(len(c.title), max(map(cell_len, texts[c.title]), default=0)) for c in columns]
    folding = [i for i, t in enumerate(titles) if t in ("name", "flags")]
    fixed = sum(w for i, w in enumerate(natural) if i not in folding) + 2 * (len(columns) - 1)
    widths = list(natural)
    room = width - fixed
    for i in folding:  # the name first, then the flags, each at least its title's (and a readable) width
        others = sum(natural[j] for j in folding if j > i)
        widths[i] = min(natural[i], max(room - others, len(titles[i]), 16 if titles[i] == "name" else 14))
        room -= widths[i]
    head = "  ".join(t.rjust(w) if c.align == "right" else t.ljust(w)
                     for t, w, c in zip(titles, widths, columns, strict=True)).rstrip()
    flag_col = titles.index("flags") if "flags" in titles else -1
    out = []
    for r in range(len(texts["name"])):
        cells = [texts[t][r] for t in titles]
        parts = [_fold(cells[i], widths[i]) if i in folding else [cells[i]] for i in range(len(cells))]
        lines = []
        for k in range(max(len(p) for p in parts)):
            pieces, line = [], []
            for i, (p, c) in enumerate(zip(parts, columns, strict=True)):
                cell = p[k] if k < len(p) else ""
                pad = widths[i] - cell_len(cell)
                text = " " * pad + cell if c.align == "right" else cell + " " * pad
                if i == flag_col and cell:
                    pieces.append(("  ".join(line) + "  ", False))
                    pieces.append((cell, True))
                    line = None
                    break
                line.append(text)
            if line is not None:
                pieces.append(("  ".join(line).rstrip(), False))
            lines.append(pieces)
        out.append(lines)
    return head, out


def cell_len(text: str) -> int:
    """Terminal cells of a text (wide characters take two)."""
    if text.isascii():
        return len(text)
    from rich.cells import cell_len as rich_cell_len

    return rich_cell_len(text)


def _text(value, style: str = ""):
    """Rich Text (never markup) of a string from a file, with its control characters escaped."""
    from rich.text import Text

    return Text(term(str(value)), style=style)


def write_json(report: StateReport, stream) -> None:
    """The report as JSON, written as it goes: one line per parameter, each made plain only when it is written
    (a state of 100k tensors would otherwise be one string of hundreds of megabytes of histogram bins)."""
    import json

    from optinspect.state.report import plain

    doc = report.to_dict(params=False)
    stream.write("{")
    for i, (key, value) in enumerate(doc.items()):
        stream.write(("," if i else "") + f"\n {json.dumps(key)}: ")
        if key == "params" and report.params:
            stream.write("[")
            for j, param in enumerate(report.params):
                stream.write(("," if j else "") + "\n  " + json.dumps(plain(param)))
            stream.write("\n ]")
        else:
            stream.write(json.dumps(value, indent=1).replace("\n", "\n "))
    stream.write("\n}\n")


def render(report: StateReport, console, rows: list[ParamReport]) -> None:
    from rich.table import Table

    head = Table.grid(padding=(0, 2))  # every value is Text: paths and names may hold [brackets]
    for label, text in state_summary(report).items():
        style = ("bold red" if report.anomalies else "green") if label == "anomalies" else ""
        head.add_row(_text(label), _text(text, style=style))
    console.print(head)
    if not rows:
        console.print(_text(f"no parameter selected (of {len(report.params)}); names look like: "
                           + ", ".join(r.name for r in report.params[:3]), style="yellow"))
    texts = cell_texts(rows)
    columns, hidden = fit_columns(rows, console.width, texts)
    if rows:
        write_table(console, *table_lines(columns, texts, console.width))
    if hidden:
        console.print(_text(f"(hidden to fit {console.width} columns: {', '.join(hidden)}; a wider terminal or --json "
                           "shows them)", style="dim"))
    for a in report.anomalies[:20]:
        console.print(_text(f"! {a}", style="red"))
    for w in report.warnings:
        console.print(_text(f"note: {w}", style="yellow"))


def write_table(console, head: str, rows: list[list[list[tuple[str, bool]]]]) -> None:
    """Lines from `table_lines`, a thousand rows per print (flags in bold red)."""
    from rich.text import Text

    console.print(Text(head, style="bold"), soft_wrap=True)
    for start in range(0, len(rows), 1000):
        block = Text()
        for lines in rows[start:start + 1000]:
            for pieces in lines:
                for text, flagged in pieces:
                    block.append(text, style="bold red" if flagged else None)
                block.append("\n")
        console.print(block, soft_wrap=True, end="")


def render_diff(d: DiffReport, console) -> None:
    from rich.table import Table
    from rich.text import Text

    console.print(Text.assemble((term(d.a), "bold"), " -> ", (term(d.b), "bold")))
    t = Table("name", "step", "key", "rel. drift", "max |diff|", box=None, pad_edge=False, header_style="bold")
    for p in d.params:
        step = f"{p.step_a} -> {p.step_b}" + step_change(p)
        for i, k in enumerate(p.drifts or [None]):
            if k is None:
                t.add_row(_text(p.name), _text(step), "-", "-", "-")
            else:
                t.add_row(_text(p.name if i == 0 else ""), _text(step if i == 0 else ""), _text(k.key), f"{k.rel:.3e}",
                          f"{k.max_abs:.3e}")
        if p.note:
            t.add_row("", "", _text(p.note), "", "")
    console.print(t)
    for c in d.group_changes:
        console.print(Text.assemble(("changed ", "yellow"), term(c)))
    if d.only_a:
        console.print(_text(f"only in A: {', '.join(d.only_a[:20])}"))
    if d.only_b:
        console.print(_text(f"only in B: {', '.join(d.only_b[:20])}"))
