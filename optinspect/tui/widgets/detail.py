"""The detail pane: every state entry of the selected tensor, its histogram, the quantization panel."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.containers import VerticalScroll
from textual.widgets import Static

from optinspect.render import term

BLOCKS = " ▁▂▃▄▅▆▇█"


def histogram(hist: list[int], width: int = 48) -> Text:
    """Log-magnitude histogram (fp32 exponent bins), trimmed to the occupied range, one column per bin."""
    occupied = [i for i, c in enumerate(hist[1:255], start=1) if c]
    if not occupied:
        return Text("(all zero)" if hist and hist[0] else "(empty)", style="dim")
    lo, hi = occupied[0], occupied[-1]
    bins = hist[lo:hi + 1]
    if len(bins) > width:
        f = -(-len(bins) // width)
        bins = [sum(bins[i:i + f]) for i in range(0, len(bins), f)]
    top = max(bins)
    bars = "".join(BLOCKS[min(8, (8 * c + top - 1) // top)] if c else " " for c in bins)
    return Text.assemble((bars, "cyan"), f"\n2^{lo - 127} … 2^{hi - 126}", (f"   zeros: {hist[0]}" if hist[0] else "",
                                                                             "dim"))


def _t(value, style: str = "") -> Text:
    """Text, never markup, with a file's control characters escaped (names and keys come from the state file)."""
    return Text(term(str(value)), style=style)


def _g(v) -> str:
    return "-" if v is None else f"{v:.4g}"


class DetailPane(VerticalScroll):
    DEFAULT_CSS = """
    DetailPane { width: 50%; border-left: tall $accent; padding: 0 1; display: none; }
    DetailPane.open { display: block; }
    """

    def compose(self):
        yield Static(id="detail-body")

    def show_param(self, r) -> None:
        parts = [Text.assemble((term(r.name), "bold"), term(f"  {r.family}  shape {r.shape}  step {r.step}"))]
        if r.counters:
            parts.append(_t("reset counters: " + ", ".join(f"{k}={v}" for k, v in r.counters.items())))
            if "times_zero" in r.counters or "times_reset" in r.counters:
                parts.append(Text("reset history: the counters hold how many resets happened and the steps since "
                                  "the last; `optinspect explain OPT504` gives the schedule", style="dim"))
        if r.flags:
            parts.append(_t("flags: " + "; ".join(r.flags), style="bold red"))
        t = Table.grid(padding=(0, 1))
        for s in r.tensors:
            t.add_row(_t(s.key, style="bold"), Text(f"{s.dtype}{' (8-bit, dequantized)' if s.dequantized else ''} "
                                                      f"{s.shape}  {s.bytes:,} B", style="dim"))
            t.add_row("", f"mean {_g(s.mean)}  std {_g(s.std)}  RMS {_g(s.rms)}")
            t.add_row("", f"min {_g(s.min)}  max {_g(s.max)}  zeros {s.zero_frac:.1%}  nan {s.nan}  inf {s.inf}")
        parts.append(t)
        q = Table.grid(padding=(0, 1))
        q.add_row(Text("quantization", style="bold"))
        for s in r.tensors:
            if s.quant:
                q.add_row(_t(f"{s.key}: 8-bit blocks of {s.quant.block}, error bound RMS {s.quant.rms_bound:.3g} "
                          f"({s.quant.rel_rms_bound:.2%} of RMS), max {s.quant.max_bound:.3g}, "
                          f"{s.quant.floor_code_frac:.1%} at the floor code"))
            elif s.dtype == "bfloat16":
                q.add_row(_t(f"{s.key}: bf16 storage, relative rounding bound 2^-8 (0.39%)"))
        if r.kahan_rms is not None:
            q.add_row(f"Kahan buffer RMS {r.kahan_rms:.3g} (the part of the updates not yet in the weights)")
        if r.update_scale_mean is not None:
            q.add_row(f"update scale |m|/sqrt(v): mean {r.update_scale_mean:.3g}, max {r.update_scale_max:.3g}")
        parts.append(q)
        for s in r.tensors:
            if s.hist:
                parts.append(_t(f"{s.key}: log2 |x|", style="bold"))
                parts.append(histogram(s.hist))
        self.query_one("#detail-body", Static).update(Group(*parts))

    def show_diff(self, d) -> None:
        t = Table("entry", "rel. drift", "max |Δ|", box=None, pad_edge=False)
        for k in d.drifts:
            t.add_row(_t(k.key), f"{k.rel:.3e}", f"{k.max_abs:.3e}")
        body = [Text.assemble((term(d.name), "bold"), f"  step {d.step_a} → {d.step_b}"), t]
        if d.note:
            body.append(_t(d.note, style="yellow"))
        self.query_one("#detail-body", Static).update(Group(*body))

    def show_text(self, text: str) -> None:
        self.query_one("#detail-body", Static).update(Text(term(text, one_line=False)))
