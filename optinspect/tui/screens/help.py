"""The help screen: what the keys do and what the columns mean."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Markdown

HELP = """\
# optinspect tui

| key | action |
|---|---|
| ↑ ↓ PgUp PgDn Home End | move |
| Enter | open / close the detail pane |
| / | filter by name (glob or substring); Esc clears |
| s / r | sort by the next column / reverse |
| n | jump to the next tensor with a flag |
| t | toggle dark / light theme |
| Ctrl+P | command palette |
| ? | this help |
| q | quit |

**Columns**: `m RMS`/`v RMS` are the first and second moments (8-bit ones dequantized, Adafactor's rebuilt
from rows and columns); `update` is the mean of |m|/sqrt(v); `quant` is the relative error bound of 8-bit or
bf16 storage; `resets` are the reset counters; `flags` are NaN/Inf, dead or exploding moments and step
counters that disagree. Statistics fill in from a background worker; the table is usable at once.
"""


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark", "dismiss", "Close")]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll {
        width: 80%; max-width: 100; height: 80%; border: thick $accent; background: $surface;
    }
    """

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Markdown(HELP)
