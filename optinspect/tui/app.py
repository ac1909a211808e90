"""The Textual app: loads in a worker thread, paints at once, fills statistics in as they arrive."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any, ClassVar

from textual import work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer, Input, ProgressBar

from optinspect.render.view import DIFF_COLUMNS, STATE_COLUMNS, PendingRow, applicable, pending, state_summary
from optinspect.state.limits import MAX_TENSORS
from optinspect.tui.widgets.detail import DetailPane
from optinspect.tui.widgets.summary import SummaryBar
from optinspect.tui.widgets.table import ParamTable

FLUSH_SECONDS = 0.1


class StateApp(App[int]):
    """`optinspect tui STATE` (one state) or `optinspect tui A B` (deltas between two states)."""

    TITLE = "optinspect"
    CSS = """
    #filter { display: none; }
    #filter.open { display: block; }
    #progress { height: 1; }
    #progress.done { display: none; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "Quit"),
        Binding("slash", "filter", "Filter"),
        Binding("escape", "escape", "Clear", show=False),
        Binding("s", "sort", "Sort"),
        Binding("r", "reverse", "Reverse", show=False),
        Binding("n", "next_anomaly", "Next flag"),
        Binding("t", "toggle_theme", "Theme", show=False),
        Binding("question_mark", "help", "Help"),
    ]

    def __init__(self, path: str, other: str | None = None, model: str | None = None, optimizer: int = 0,
                 max_tensors: int = MAX_TENSORS) -> None:
        super().__init__()
        self.optimizer = optimizer
        self.max_tensors = max_tensors
        self.path = path
        self.other = other
        self.model = model
        self.report: Any = None
        self.loading_done = False
        self.keys_seen = 0
        self._pending: dict[int, Any] = {}
        self._last_flush = 0.0

    # -- layout -----------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield SummaryBar(id="summary")
        yield ProgressBar(id="progress", show_eta=False)
        with Horizontal():
            with Vertical():
                yield ParamTable(DIFF_COLUMNS if self.other else STATE_COLUMNS, id="table")
                yield Input(placeholder="filter: glob or substring, Enter to apply, Esc to clear", id="filter")
            yield DetailPane(id="detail")
        yield Footer()

    def on_mount(self) -> None:
        label = f"{self.path} → {self.other}" if self.other else self.path
        self.query_one(SummaryBar).show_loading(label)
        self.query_one(ParamTable).focus()
        if self.other:
            self.compare()
        else:
            self.analyse()

    def on_key(self) -> None:
        self.keys_seen += 1

    # -- background work --------------------------------------------------------------------------
    @work(thread=True, exclusive=True, exit_on_error=False)
    def analyse(self) -> None:
        from optinspect.state.collector import long_lived
        from optinspect.state.header import HeaderError
        from optinspect.state.load import StateLoadError, load_state
        from optinspect.state.mapped import CorruptData

        try:
            with long_lived():
                ls = load_state(self.path, model=self.model, optimizer=self.optimizer, max_tensors=self.max_tensors,
                                names_first=True)
                # placeholders built here, off the UI thread
                rows = [PendingRow(p.index, p.name, p.group, list(p.shape) if p.shape else None) for p in ls.params]
        except (StateLoadError, HeaderError, CorruptData, OSError) as e:
            self.call_from_thread(self._failed, str(e))
            return
        self.call_from_thread(self._loaded, ls, rows)
        from optinspect.state.analyse import build_report  # torch (most of a second), after the rows are shown

        total = max(1, ls.tensor_bytes)
        done = [0]

        def progress(n: int) -> None:
            done[0] += n

        position = {(p.index, p.name): i for i, p in enumerate(ls.params)}

        def on_param(row: Any) -> None:
            self._pending[position[(row.index, row.name)]] = row
            now = time.monotonic()
            if now - self._last_flush > FLUSH_SECONDS:
                self._last_flush = now
                batch, self._pending = self._pending, {}
                self.call_from_thread(self._rows_ready, batch, done[0] / total)


        try:
            report = build_report(ls, progress=progress, on_param=on_param)
        except CorruptData as e:
            self.call_from_thread(self._failed, str(e))
            return
        except Exception as e:  # noqa: BLE001 - said and the app ends, never an endless "computing…"
            self.call_from_thread(self._failed, f"statistics failed: {type(e).__name__}: {e}")
            return
        batch, self._pending = self._pending, {}
        # which columns apply is settled here, off the UI thread (a scan of every row for the absent ones)
        self.call_from_thread(self._finished, report, batch, applicable(STATE_COLUMNS, report.params))

    @work(thread=True, exclusive=True, exit_on_error=False)
    def compare(self) -> None:
        from optinspect.state.collector import long_lived
        from optinspect.state.diff import diff_states
        from optinspect.state.header import HeaderError
        from optinspect.state.load import StateLoadError, load_state
        from optinspect.state.mapped import CorruptData

        try:
            each = max(self.max_tensors // 2, 1)  # the bound holds for the two files together, as in `diff`
            with long_lived():
                a = load_state(self.path, model=self.model, optimizer=self.optimizer, max_tensors=each)
                b = load_state(self.other, model=self.model, optimizer=self.optimizer, max_tensors=each)
            d = diff_states(a, b)
        except (StateLoadError, HeaderError, CorruptData, OSError) as e:
            self.call_from_thread(self._failed, str(e))
            return
        self.call_from_thread(self._compared, d)

    # -- results (on the UI thread) ---------------------------------------------------------------
    def _failed(self, message: str) -> None:
        self.query_one(SummaryBar).show_error(self.path, message)
        self.query_one("#progress").add_class("done")
        self.loading_done = True
        self.exit(return_code=2, message=message)

    def _loaded(self, ls: Any, rows: list) -> None:
        self.query_one(ParamTable).set_rows(rows)
        self.query_one(SummaryBar).show({"file": self.path, "layout": ls.layout, "parameters": f"{len(rows):,}",
                                         "optimizer": "…", "step": "…", "anomalies": "…"})
        self.query_one(ProgressBar).update(total=100, progress=0)
        self._layout = ls.layout
        self._groups = ls.groups

    def _rows_ready(self, batch: dict[int, Any], fraction: float) -> None:
        self.query_one(ParamTable).update_rows(batch)
        self.query_one(ProgressBar).update(progress=100 * fraction)

    def _finished(self, report: Any, batch: dict[int, Any], columns: list) -> None:
        self.report = report
        table = self.query_one(ParamTable)
        table.update_rows(batch)
        table.set_columns(columns)
        self.query_one(ProgressBar).update(progress=100)
        self.query_one("#progress").add_class("done")
        info = state_summary(report)
        if report.warnings:  # what inspect prints as "note:" (skipped objects, Persona's restarting step)
            info["notes"] = "\n".join(report.warnings)
        self.query_one(SummaryBar).show(info)
        self.loading_done = True
        if table.current_row is not None:
            self._show(table.current_row)

    def _compared(self, d: Any) -> None:
        self.report = d
        self.query_one(ParamTable).set_rows(d.params)
        self.query_one("#progress").add_class("done")
        info = {"A": d.a, "B": d.b, "parameters": f"{len(d.params)} in both, {len(d.only_a)} only in A, "
                                                  f"{len(d.only_b)} only in B",
                "hyper-parameters": "; ".join(d.group_changes) or "unchanged"}
        self.query_one(SummaryBar).show(info)
        self.loading_done = True

    # -- interaction ------------------------------------------------------------------------------
    def _show(self, row: Any) -> None:
        pane = self.query_one(DetailPane)
        if not pane.has_class("open"):
            return
        if self.other:
            pane.show_diff(row)
        elif pending(row):
            pane.show_text(f"{row.name}: statistics are still being computed…")
        else:
            pane.show_param(row)

    def on_param_table_highlighted(self, event: ParamTable.Highlighted) -> None:
        self._show(event.row)

    def on_param_table_selected(self, event: ParamTable.Selected) -> None:
        pane = self.query_one(DetailPane)
        pane.toggle_class("open")
        self._show(event.row)

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.add_class("open")
        box.focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.query_one(ParamTable).set_filter(event.value.strip())
        self.query_one(ParamTable).focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        self.query_one(ParamTable).set_filter(event.value.strip())

    def action_escape(self) -> None:
        box = self.query_one("#filter", Input)
        if box.has_class("open"):
            box.value = ""
            box.remove_class("open")
            self.query_one(ParamTable).set_filter("")
            self.query_one(ParamTable).focus()
        else:
            self.query_one(DetailPane).remove_class("open")

    def action_sort(self) -> None:
        table = self.query_one(ParamTable)
        table.sort_by((table.sort_column + 1) % len(table.columns), table.sort_reverse)

    def action_reverse(self) -> None:
        table = self.query_one(ParamTable)
        table.sort_by(max(table.sort_column, 0), not table.sort_reverse)

    def action_next_anomaly(self) -> None:
        table = self.query_one(ParamTable)
        if not table.jump_to(lambda r: bool(getattr(r, "flags", None)) or bool(getattr(r, "note", ""))):
            self.notify("no flagged tensor", timeout=2)

    def action_toggle_theme(self) -> None:
        self.theme = "textual-light" if self.current_theme.dark else "textual-dark"

    def action_help(self) -> None:
        from optinspect.tui.screens.help import HelpScreen  # Markdown costs ~45 ms at start-up: load on demand

        self.push_screen(HelpScreen())

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        yield SystemCommand("Sort by next column", "Cycle the sort column", self.action_sort)
        yield SystemCommand("Next flagged tensor", "Jump to the next tensor with a flag", self.action_next_anomaly)
        yield SystemCommand("Filter", "Filter rows by name", self.action_filter)
        yield SystemCommand("Toggle theme", "Dark or light", self.action_toggle_theme)


def make_app(path: str, other: str | None = None, model: str | None = None, optimizer: int = 0,
             max_tensors: int = MAX_TENSORS) -> StateApp:
    """The app factory shared by the CLI and the tests."""
    return StateApp(path, other, model, optimizer, max_tensors)
