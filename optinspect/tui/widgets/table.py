"""A table that draws only the rows on screen (Line API): constant cost per frame at 100k rows."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any, ClassVar

from rich.segment import Segment
from rich.style import Style
from textual.binding import Binding, BindingType
from textual.geometry import Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

from optinspect.render import term
from optinspect.render.view import Column


def _cell(text: str, width: int, align: str) -> str:
    if len(text) > width:
        return text[: max(0, width - 1)] + "…" if width > 0 else ""
    return text.rjust(width) if align == "right" else text.ljust(width)


class ParamTable(ScrollView, can_focus=True):
    """Rows are report objects; columns say how to show and sort them. Sorting and filtering keep a view
    (a list of row indices); rendering touches only the visible slice of it."""

    COMPONENT_CLASSES: ClassVar[set[str]] = {"paramtable--header", "paramtable--cursor", "paramtable--flag"}
    DEFAULT_CSS = """
    ParamTable { height: 1fr; }
    ParamTable > .paramtable--header { text-style: bold; background: $panel; }
    ParamTable > .paramtable--cursor { background: $accent 40%; }
    ParamTable > .paramtable--flag { color: $error; text-style: bold; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up,k", "cursor(-1)", "Up", show=False),
        Binding("down,j", "cursor(1)", "Down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("home", "jump(0)", "First", show=False),
        Binding("end", "jump(-1)", "Last", show=False),
        Binding("enter", "select", "Details"),
    ]

    cursor: reactive[int] = reactive(0)

    @dataclass
    class Highlighted(Message):
        row: Any

    @dataclass
    class Selected(Message):
        row: Any

    def __init__(self, columns: list[Column], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.columns = columns
        self.rows: list[Any] = []
        self.view: list[int] = []
        self.sort_column = -1
        self.sort_reverse = False
        self.pattern = ""
        self._longest_name = 0

    # -- data -------------------------------------------------------------------------------------
    def set_rows(self, rows: list[Any]) -> None:
        self.rows = list(rows)
        self._longest_name = max((len(r.name) for r in self.rows), default=0)
        self._rebuild()

    def set_columns(self, columns: list[Column]) -> None:
        """Show other columns (those that apply, once statistics are in); the sort stays on its column."""
        sorted_by = self.columns[self.sort_column].title if self.sort_column >= 0 else None
        self.columns = columns
        self.sort_column = next((i for i, c in enumerate(columns) if c.title == sorted_by), -1)
        self._rebuild(keep_cursor=True)

    def update_rows(self, updates: dict[int, Any]) -> None:
        """Replace rows by position (statistics arriving); re-sort only if sorted by a data column."""
        for i, row in updates.items():
            self.rows[i] = row
        if self.sort_column > 0:
            self._rebuild(keep_cursor=True)
        else:
            self.refresh()

    def set_filter(self, pattern: str) -> None:
        self.pattern = pattern
        self._rebuild()

    def sort_by(self, column: int, reverse: bool = False) -> None:
        self.sort_column, self.sort_reverse = column, reverse
        self._rebuild(keep_cursor=True)

    def _matches(self, row: Any) -> bool:
        if not self.pattern:
            return True
        p = self.pattern if any(c in self.pattern for c in "*?[") else f"*{self.pattern}*"
        return fnmatch.fnmatch(row.name, p)

    def _rebuild(self, keep_cursor: bool = False) -> None:
        current = self.current_row if keep_cursor else None
        view = [i for i, r in enumerate(self.rows) if self._matches(r)] if self.pattern else list(range(len(self.rows)))
        if self.sort_column >= 0:
            col = self.columns[self.sort_column]
            view.sort(key=lambda i: col.key(self.rows[i]), reverse=self.sort_reverse)
        self.view = view
        self.virtual_size = Size(self._total_width(), len(view) + 1)
        if current is not None:
            self.cursor = next((k for k, i in enumerate(view) if self.rows[i] is current), 0)
        self.cursor = min(self.cursor, max(len(view) - 1, 0))
        self.refresh()

    @property
    def current_row(self) -> Any:
        if not self.view or self.cursor >= len(self.view):
            return None
        return self.rows[self.view[self.cursor]]

    # -- layout -----------------------------------------------------------------------------------
    def _widths(self) -> list[int]:
        """Fixed widths, the name column as wide as the longest name (at least 16, at most what is left), and
        whatever is left after that to the last column (flags, notes), so a wide screen shows them whole."""
        fixed = sum(c.width for c in self.columns if c.width) + len(self.columns)
        room = self.size.width - fixed
        flex = max(16, min(self._longest_name, room))
        widths = [c.width or flex for c in self.columns]
        if len(widths) > 1 and self.columns[-1].width:
            widths[-1] += max(0, room - flex)
        return widths

    def _total_width(self) -> int:
        return sum(self._widths()) + len(self.columns)

    def on_resize(self) -> None:
        self.virtual_size = Size(self._total_width(), len(self.view) + 1)

    def render_line(self, y: int) -> Strip:
        widths = self._widths()
        scroll_x, scroll_y = self.scroll_offset
        width = self.size.width
        if y == 0:  # header, fixed at the top
            titles = []
            for i, (c, w) in enumerate(zip(self.columns, widths, strict=True)):
                mark = ("▼" if self.sort_reverse else "▲") if i == self.sort_column else ""
                titles.append(_cell(c.title + mark, w, c.align))
            style = self.get_component_rich_style("paramtable--header")
            return Strip([Segment(" ".join(titles).ljust(width + scroll_x), style)]).crop(scroll_x, scroll_x + width)
        k = scroll_y + y - 1
        if k >= len(self.view):
            return Strip.blank(width, self.rich_style)
        row = self.rows[self.view[k]]
        # every row on the widget's own colours (the theme's), the cursor row with its highlight on top
        base = self.rich_style + (self.get_component_rich_style("paramtable--cursor") if k == self.cursor else Style())
        flag_style = self.get_component_rich_style("paramtable--flag")
        segs = []
        for c, w in zip(self.columns, widths, strict=True):
            text = _cell(term(c.text(row)), w, c.align)
            style = base + flag_style if c.title == "flags" and text.strip() else base
            segs.append(Segment(text + " ", style))
        line = Strip(segs + [Segment(" " * max(0, width + scroll_x - sum(widths) - len(widths)), base)])
        return line.crop(scroll_x, scroll_x + width)

    # -- cursor -----------------------------------------------------------------------------------
    def watch_cursor(self, old: int, new: int) -> None:
        height = max(1, self.size.height - 1)
        if new < self.scroll_offset.y:
            self.scroll_to(y=new, animate=False)
        elif new >= self.scroll_offset.y + height:
            self.scroll_to(y=new - height + 1, animate=False)
        self.refresh()
        if self.current_row is not None:
            self.post_message(self.Highlighted(self.current_row))

    def action_cursor(self, delta: int) -> None:
        if self.view:
            self.cursor = max(0, min(len(self.view) - 1, self.cursor + delta))

    def action_page(self, direction: int) -> None:
        self.action_cursor(direction * max(1, self.size.height - 2))

    def action_jump(self, where: int) -> None:
        if self.view:
            self.cursor = where if where >= 0 else len(self.view) - 1

    def action_select(self) -> None:
        if self.current_row is not None:
            self.post_message(self.Selected(self.current_row))

    def jump_to(self, predicate) -> bool:
        """Move the cursor to the next row (after the cursor, wrapping) for which predicate(row) holds."""
        n = len(self.view)
        for step in range(1, n + 1):
            k = (self.cursor + step) % n
            if predicate(self.rows[self.view[k]]):
                self.cursor = k
                return True
        return False

    def on_click(self, event) -> None:
        k = self.scroll_offset.y + event.y - 1
        if event.y >= 1 and 0 <= k < len(self.view):
            self.cursor = k
