"""Rich rendering of a StateReport and a DiffReport (tables only; the numbers come from state/)."""

from __future__ import annotations

import fnmatch

from optinspect.render import term
from optinspect.render.view import (
    STATE_COLUMNS,
    Column,
    applicable,
    sort_rows,
    source_summary,
    state_summary,
    step_change,
)
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


def column_widths(columns: list, texts: dict[str, list[str]], width: int, name_width: int = 0) -> list[int]:
    """Numbers keep their natural width; the name and flags columns share what is left of `width` (and fold
    onto more lines). `name_width`: the longest name, where rows still to come may have longer ones."""
    titles = [c.title for c in columns]
    natural = [max(len(c.title), max(map(cell_len, texts[c.title]), default=0)) for c in columns]
    if titles[0] == "name":
        natural[0] = max(natural[0], name_width)
    folding = [i for i, t in enumerate(titles) if t in ("name", "flags")]
    room = width - sum(w for i, w in enumerate(natural) if i not in folding) - 2 * (len(columns) - 1)
    widths = list(natural)
    for i in folding:  # the name first, then the flags, each at least its title's (and a readable) width
        others = sum(natural[j] for j in folding if j > i)
        readable = max(room - others, len(titles[i]), 16 if titles[i] == "name" else 14)
        # the flags come last and are never padded: all the room is theirs (rows still to come may have longer)
        widths[i] = readable if titles[i] == "flags" else min(natural[i], readable)
        room -= widths[i]
    return widths


def title_line(columns: list, widths: list[int]) -> str:
    return "  ".join(c.title.rjust(w) if c.align == "right" else c.title.ljust(w)
                     for w, c in zip(widths, columns, strict=True)).rstrip()


def row_lines(columns: list, widths: list[int], texts: dict[str, list[str]]):
    """Each row's lines as (text, flagged) pieces: cells padded to `widths`, names and flags folded.
    Written by hand: rich's table layout took a minute for 50k rows."""
    titles = [c.title for c in columns]
    folding = {i for i, t in enumerate(titles) if t in ("name", "flags")}
    flag_col = titles.index("flags") if "flags" in titles else -1
    for r in range(len(texts["name"])):
        parts = [_fold(texts[t][r], widths[i]) if i in folding else [texts[t][r]] for i, t in enumerate(titles)]
        lines = []
        for k in range(max(len(p) for p in parts)):
            pieces, line = [], []
            for i, (p, c) in enumerate(zip(parts, columns, strict=True)):
                cell = p[k] if k < len(p) else ""
                if i == flag_col and cell:
                    pieces += [("  ".join(line) + "  ", False), (cell, True)]
                    line = None
                    break
                pad = " " * (widths[i] - cell_len(cell))
                line.append(pad + cell if c.align == "right" else cell + pad)
            if line is not None:
                pieces.append(("  ".join(line).rstrip(), False))
            lines.append(pieces)
        yield lines


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


_ZEROS = ["0, " * n for n in range(257)]


def _hist_text(h) -> str:
    """A histogram's JSON text: the 256 counts, the zero runs of a sparse one written from ready-made strings
    (encoding 256 integers per tensor was half of `--json`'s time at 100k tensors)."""
    if not hasattr(h, "bins"):
        return "[" + ", ".join(map(str, h)) + "]"
    pieces, at = [], 0
    for b, c in zip(h.bins, h.counts, strict=True):
        pieces += [_ZEROS[b - at], str(c), ", "]
        at = b + 1
    pieces.append(_ZEROS[256 - at])
    return "[" + "".join(pieces)[:-2] + "]"  # as json.dumps writes a list


def write_json(report: StateReport, stream) -> None:
    """The report as JSON, written as it goes: one line per parameter, each made plain only when it is written
    (a state of 100k tensors would otherwise be one string of hundreds of megabytes of histogram bins)."""
    import json

    doc = report.to_dict(params=False)
    stream.write("{")
    for i, (key, value) in enumerate(doc.items()):
        stream.write(("," if i else "") + f"\n {json.dumps(key)}: ")
        if key == "params" and report.params:
            _write_params(report.params, stream)
        else:
            stream.write(json.dumps(value, indent=1).replace("\n", "\n "))
    stream.write("\n}\n")


def _write_params(params: list[ParamReport], stream) -> None:
    """The rows, one per line, each histogram's text put in where a stand-in held its place (a marker no string
    from a file can be: it holds a fresh random token)."""
    import json
    import secrets

    from optinspect.state.report import plain

    mark = f"\x01{secrets.token_hex(8)}:"
    hists: list = []

    def stand_in(h) -> str:
        hists.append(h)
        return f"{mark}{len(hists) - 1}"

    stream.write("[")
    for j, param in enumerate(params):
        hists.clear()
        text = json.dumps(plain(param, stand_in))
        for k, h in enumerate(hists):
            text = text.replace(json.dumps(f"{mark}{k}"), "null" if h is None else _hist_text(h), 1)
        stream.write(("," if j else "") + "\n  " + text)
    stream.write("\n ]")


def _summary(console, report, items: dict[str, str]) -> None:
    from rich.table import Table

    head = Table.grid(padding=(0, 2))  # every value is Text: paths and names may hold [brackets]
    for label, text in items.items():
        style = ("bold red" if report.anomalies else "green") if label == "anomalies" else ""
        head.add_row(_text(label), _text(text, style=style))
    console.print(head)


def _nothing_selected(console, report: StateReport) -> None:
    console.print(_text(f"no parameter selected (of {len(report.params)}); names look like: "
                        + ", ".join(r.name for r in report.params[:3]), style="yellow"))


def _hidden_note(console, hidden: list[str]) -> None:
    if hidden:
        console.print(_text(f"(hidden to fit {console.width} columns: {', '.join(hidden)}; a wider terminal or --json "
                            "shows them)", style="dim"))


def _findings(console, report: StateReport) -> None:
    for a in report.anomalies[:20]:
        console.print(_text(f"! {a}", style="red"))
    for w in report.warnings:
        console.print(_text(f"note: {w}", style="yellow"))


def render(report: StateReport, console, rows: list[ParamReport]) -> None:
    _summary(console, report, state_summary(report))
    if not rows:
        _nothing_selected(console, report)
    texts = cell_texts(rows)
    columns, hidden = fit_columns(rows, console.width, texts)
    if rows:
        widths = column_widths(columns, texts, console.width)
        write_rows(console, row_lines(columns, widths, texts), title_line(columns, widths))
    _hidden_note(console, hidden)
    _findings(console, report)


class StreamedTable:
    """`inspect` of a large state in checkpoint order, printed while the engine computes it: the file and layout
    first, each row as it is done (columns and widths chosen from the first `FIRST_ROWS` rows, the flags column
    always), then the summary.
    Flags that compare a row with all the others (a step counter unlike most, an exploding or vanishing moment)
    exist only once every row is known: they are listed after the table, not in its flags column."""

    STREAM_ABOVE = 2048  # parameters: smaller states print the whole table with the summary first
    FIRST_ROWS = 256  # the rows that decide the columns, printed as soon as they are known
    BLOCK = 1000

    def __init__(self, console, state, pattern: str | None = None) -> None:
        self.console, self.pattern = console, pattern
        self.rows: list[ParamReport] = []
        self.columns: list | None = None
        self.widths: list[int] = []
        self.hidden: list[str] = []
        self.late: set[str] = set()  # columns left out that later rows have something to say in
        self.printed = 0
        self.name_width = max((cell_len(term(p.name)) + (0 if p.name_certain else 2) for p in state.params),
                              default=0)
        _summary(console, state, source_summary(state))

    def add(self, row: ParamReport) -> None:
        if self.pattern and not fnmatch.fnmatch(row.name, self.pattern):
            return
        self.rows.append(row)
        if self.columns is None:
            if len(self.rows) >= self.FIRST_ROWS:
                self._flush()
        else:
            for c in self._unshown:
                if c.title not in self.late and c.text(row) not in ("-", ""):
                    self.late.add(c.title)
            if len(self.rows) >= self.BLOCK:
                self._flush()

    def _flush(self) -> None:
        texts = cell_texts(self.rows)
        if self.columns is None:
            self.columns, self.hidden = fit_columns(self.rows, self.console.width, texts)
            flags = next(c for c in STATE_COLUMNS if c.title == "flags")
            if flags not in self.columns and "flags" not in self.hidden:  # later rows may have some
                self.columns.append(flags)
            self._unshown = [c for c in STATE_COLUMNS if c not in self.columns and c.title not in self.hidden]
            self.widths = column_widths(self.columns, texts, self.console.width, self.name_width)
            title = title_line(self.columns, self.widths)
        else:
            title = None
        write_rows(self.console, row_lines(self.columns, self.widths, texts), title)
        self.printed += len(self.rows)
        self.rows = []

    def finish(self, report: StateReport) -> None:
        if self.rows:
            self._flush()
        if not self.printed:
            _nothing_selected(self.console, report)
        _hidden_note(self.console, self.hidden)
        if self.late:
            self.console.print(_text(f"(columns were chosen from the first {self.FIRST_ROWS:,} rows; later rows also "
                                     f"have {', '.join(sorted(self.late))}: --json or --sort name shows them)",
                                     style="dim"))
        _summary(self.console, report, {k: v for k, v in state_summary(report).items()
                                        if k not in source_summary(report)})
        _findings(self.console, report)


def write_rows(console, rows, title: str | None = None) -> None:
    """Lines from `row_lines`, a thousand rows per print (flags in bold red), after the title line if given."""
    from rich.text import Text

    if title is not None:
        console.print(Text(title, style="bold"), soft_wrap=True)
    block, count = Text(), 0
    for lines in rows:
        for pieces in lines:
            for text, flagged in pieces:
                block.append(text, style="bold red" if flagged else None)
            block.append("\n")
        count += 1
        if count % 1000 == 0:
            console.print(block, soft_wrap=True, end="")
            block = Text()
    if block:
        console.print(block, soft_wrap=True, end="")


_DIFF_TABLE = [Column(title, 0, str, str, align) for title, align in
               (("name", "left"), ("step", "left"), ("key", "left"), ("rel. drift", "right"),
                ("max |diff|", "right"))]


def render_diff(d: DiffReport, console) -> None:
    from rich.text import Text

    console.print(Text.assemble((term(d.a), "bold"), " -> ", (term(d.b), "bold")))
    texts: dict[str, list[str]] = {c.title: [] for c in _DIFF_TABLE}

    def line(*cells: str) -> None:
        for c, text in zip(_DIFF_TABLE, cells, strict=True):
            texts[c.title].append(text)

    for p in d.params:
        step = f"{p.step_a} -> {p.step_b}" + step_change(p)
        for i, k in enumerate(p.drifts or [None]):
            if k is None:
                line(term(p.name), term(step), "-", "-", "-")
            else:
                line(term(p.name) if i == 0 else "", term(step) if i == 0 else "", term(k.key), f"{k.rel:.3e}",
                     f"{k.max_abs:.3e}")
        if p.note:
            line("", "", term(p.note), "", "")
    widths = column_widths(_DIFF_TABLE, texts, console.width)
    write_rows(console, row_lines(_DIFF_TABLE, widths, texts), title_line(_DIFF_TABLE, widths))
    for c in d.group_changes:
        console.print(Text.assemble(("changed ", "yellow"), term(c)))
    if d.only_a:
        console.print(_text(f"only in A: {', '.join(d.only_a[:20])}"))
    if d.only_b:
        console.print(_text(f"only in B: {', '.join(d.only_b[:20])}"))
