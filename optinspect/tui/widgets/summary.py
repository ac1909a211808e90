"""The summary bar: file, layout, optimizer, steps, groups, totals, anomaly count, and the report's notes."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from optinspect.render import term


class SummaryBar(Static):
    DEFAULT_CSS = """
    SummaryBar { height: auto; max-height: 10; padding: 0 1; background: $boost; }
    """

    def show_loading(self, path: str, note: str = "") -> None:
        self.update(Text.assemble(("optinspect ", "bold"), term(path), ("  loading…", "italic"), term(note)))

    def show_error(self, path: str, message: str) -> None:
        self.update(Text.assemble(("optinspect ", "bold"), term(path), "\n",
                                  (term(message, one_line=False), "bold red")))

    def show(self, info: dict) -> None:
        g = Table.grid(padding=(0, 1))
        g.add_column(style="bold")
        g.add_column()
        for k, v in info.items():
            style = "bold red" if k == "anomalies" and v not in ("0", "…") else "yellow" if k == "notes" else ""
            g.add_row(Text(term(k)), Text(term(str(v), one_line=False), style=style))
        self.update(g)
