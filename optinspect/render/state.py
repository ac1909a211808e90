"""Rich rendering of a StateReport and a DiffReport (tables only; the numbers come from state/)."""

from __future__ import annotations

import fnmatch

from optinspect.state.diff import DiffReport
from optinspect.state.report import ParamReport, StateReport

SORT_KEYS = {
    "name": lambda r: r.name, "index": lambda r: r.index, "step": lambda r: (r.step is None, r.step or 0),
    "first": lambda r: -(r.first_rms or 0.0), "second": lambda r: -(r.second_rms or 0.0),
    "scale": lambda r: -(r.update_scale_mean or 0.0), "quant": lambda r: -(r.quant_rel_error or 0.0),
    "flags": lambda r: (-len(r.flags), r.index), "size": lambda r: -(_numel(r)),
}


def _numel(r: ParamReport) -> int:
    n = 1
    for s in r.shape or []:
        n *= s
    return n


def select(report: StateReport, sort: str = "index", pattern: str | None = None, top: int | None = None
           ) -> list[ParamReport]:
    rows = [r for r in report.params if not pattern or fnmatch.fnmatch(r.name, pattern)]
    rows.sort(key=SORT_KEYS[sort])
    return rows[:top] if top else rows


def fmt(v: float | None, spec: str = ".3g") -> str:
    return "-" if v is None else format(v, spec)


def render(report: StateReport, console, rows: list[ParamReport]) -> None:
    from rich.table import Table
    from rich.text import Text

    head = Table.grid(padding=(0, 2))  # every value is Text: paths and names may hold [brackets]
    head.add_row("file", Text(report.path + ("" if report.source_file == report.path
                                             else f"  ({report.source_file})")))
    head.add_row("layout", Text(report.layout + (f"  [key: {report.key_used}]" if report.key_used else "")))
    head.add_row("optimizer", Text(report.family))
    head.add_row("step", Text(", ".join(map(str, report.steps)) or "-"))
    for i, g in enumerate(report.groups):
        hp = ", ".join(f"{k}={v}" for k, v in g.items() if not isinstance(v, (list, dict)) or k == "betas")
        head.add_row(f"group {i}", Text(hp[:300]))
    head.add_row("totals", Text(f"{len(report.params)} parameters, {report.total_numel:,} elements, "
                                f"{report.total_state_bytes / 2**20:.1f} MiB of state; names from {report.names_from}"))
    head.add_row("anomalies", Text(str(len(report.anomalies)), style="bold red" if report.anomalies else "green"))
    console.print(head)
    t = Table("name", "shape", "dtype", "step", "resets", "m RMS", "v RMS", "update", "quant err", "flags",
              box=None, pad_edge=False, header_style="bold")
    for r in rows:
        dtypes = sorted({x.dtype for x in r.tensors if x.key in ("exp_avg", "ema", "state1", "exp_avg_sq",
                                                                 "ema_squared", "state2", "s")})
        resets = " ".join(f"{k}={v}" for k, v in r.counters.items())
        t.add_row(Text(r.name), "x".join(map(str, r.shape)) if r.shape else "-", "/".join(dtypes) or "-",
                  fmt(r.step, "d") if r.step is not None else "-", resets or "-", fmt(r.first_rms), fmt(r.second_rms),
                  fmt(r.update_scale_mean), fmt(r.quant_rel_error, ".2%") if r.quant_rel_error is not None else "-",
                  Text("; ".join(r.flags), style="bold red") if r.flags else "")
    console.print(t)
    for a in report.anomalies[:20]:
        console.print(Text(f"! {a}", style="red"))
    for w in report.warnings:
        console.print(Text(f"note: {w}", style="yellow"))


def render_diff(d: DiffReport, console) -> None:
    from rich.table import Table
    from rich.text import Text

    console.print(Text.assemble((d.a, "bold"), " -> ", (d.b, "bold")))
    t = Table("name", "step", "key", "rel. drift", "max |diff|", box=None, pad_edge=False, header_style="bold")
    for p in d.params:
        step = f"{p.step_a} -> {p.step_b}" + (f" (+{p.step_b - p.step_a})" if p.step_a is not None and
                                              p.step_b is not None else "")
        for i, k in enumerate(p.drifts or [None]):
            if k is None:
                t.add_row(Text(p.name), step, "-", "-", "-")
            else:
                t.add_row(Text(p.name if i == 0 else ""), step if i == 0 else "", Text(k.key), f"{k.rel:.3e}",
                          f"{k.max_abs:.3e}")
        if p.note:
            t.add_row("", "", Text(p.note), "", "")
    console.print(t)
    for c in d.group_changes:
        console.print(Text.assemble(("changed ", "yellow"), c))
    if d.only_a:
        console.print(Text(f"only in A: {', '.join(d.only_a[:20])}"))
    if d.only_b:
        console.print(Text(f"only in B: {', '.join(d.only_b[:20])}"))
