"""The view model shared by the `inspect` table and the TUI: columns (how a report row is shown and sorted),
the named sort orders of `inspect --sort`, and the placeholder row the TUI shows while statistics are computed.
Formatting only, and torch-free: the TUI paints with it before torch is imported."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from optinspect.specs import FIRST, RESETS, SECOND


@dataclass(frozen=True)
class Column:
    title: str
    width: int  # 0 = takes the remaining width
    text: Callable[[Any], str]
    key: Callable[[Any], Any]
    align: str = "left"
    sort: str | None = None  # its name for `inspect --sort`, where it has one
    largest_first: bool = False  # `inspect --sort` puts the largest first (moments, errors, sizes)


# the state tensors whose dtype the dtype column shows: the moments (as the engine names them) and Prodigy's s
MOMENTS = FIRST + SECOND + ("s", "exp_avg_sq_row", "exp_avg_sq_col")


class PendingRow:
    """A parameter whose statistics are still being computed: what the TUI shows before its row arrives. It
    answers every attribute a report row has; all but the four it knows are empty and shared (100k of them are
    made before the rows show, so each holds no more than it must)."""

    __slots__ = ("index", "name", "group", "shape")
    family = ""
    step = first_rms = second_rms = update_scale_mean = update_scale_max = quant_rel_error = kahan_rms = None
    counters: Mapping = MappingProxyType({})
    scalars: Mapping = MappingProxyType({})
    flags: tuple = ()
    tensors: tuple = ()
    name_certain = True

    def __init__(self, index: int, name: str, group: int, shape: list[int] | None) -> None:
        self.index, self.name, self.group, self.shape = index, name, group, shape

    def __repr__(self) -> str:
        return f"PendingRow({self.index}, {self.name!r}, {self.group}, {self.shape})"


def pending(r) -> bool:
    return isinstance(r, PendingRow)


def _g(r, v: float | None, spec: str = ".3g") -> str:
    """A number; for a missing one "…" while the row is pending, "-" (does not apply) once it is computed."""
    if v is None:
        return "…" if pending(r) else "-"
    return format(v, spec)


def _plain(v: float | None) -> str:
    return "-" if v is None else format(v, ".3g")


def _num(v: float | None) -> float:
    return float("-inf") if v is None else v


def _shape(r) -> str:
    return "x".join(map(str, r.shape)) if r.shape else "-"


def _dtype(r) -> str:
    names = sorted({t.dtype for t in r.tensors if t.key in MOMENTS})
    return "/".join(names) or ("…" if pending(r) else "-")


def _resets(r) -> str:
    """Resets so far, then the optimizer's own `steps_since_reset` counter as saved: "3 +2" (SCORN/REMASTER
    `times_zero`, Persona `times_reset`)."""
    c = r.counters
    times = next((c[k] for k in RESETS if k in c), None)
    since = c.get("steps_since_reset")
    if times is None and since is None:
        return "…" if pending(r) else "-"
    return ("-" if times is None else str(times)) + ("" if since is None else f" +{since}")


def size(r) -> int:
    """Elements of the parameter (for sorting by size)."""
    n = 1
    for s in r.shape or []:
        n *= s
    return n


STATE_COLUMNS = [
    Column("name", 0, lambda r: r.name + ("" if r.name_certain else " ?"), lambda r: r.name,
           sort="name"),
    Column("shape", 11, _shape, size, sort="size", largest_first=True),
    Column("dtype", 9, _dtype, _dtype),
    Column("step", 6, lambda r: _g(r, r.step, "d"), lambda r: (r.step is None, r.step or 0), "right", sort="step"),
    Column("resets", 7, _resets, lambda r: tuple(r.counters.values())),
    Column("m RMS", 9, lambda r: _g(r, r.first_rms), lambda r: _num(r.first_rms), "right", "first", True),
    Column("v RMS", 9, lambda r: _g(r, r.second_rms), lambda r: _num(r.second_rms), "right", "second", True),
    Column("update", 8, lambda r: _g(r, r.update_scale_mean), lambda r: _num(r.update_scale_mean), "right", "scale",
           True),
    Column("quant", 7, lambda r: _g(r, r.quant_rel_error, ".2%"), lambda r: _num(r.quant_rel_error), "right",
           "quant", True),
    Column("kahan", 9, lambda r: _g(r, r.kahan_rms), lambda r: _num(r.kahan_rms), "right", "kahan", True),
    Column("flags", 14, lambda r: "; ".join(r.flags), lambda r: len(r.flags), sort="flags", largest_first=True),
]
# `inspect --sort`: checkpoint order, or a column's order (largest first where that is what one looks for)
SORTS: dict[str, tuple[Callable[[Any], Any], bool]] = {
    "index": (lambda r: r.index, False), **{c.sort: (c.key, c.largest_first) for c in STATE_COLUMNS if c.sort}}
SORT_CHOICES = list(SORTS)


def sort_rows(rows: list, sort: str) -> list:
    key, largest_first = SORTS[sort]
    return sorted(rows, key=key, reverse=largest_first)


def _drift(r, key_prefixes: tuple) -> float | None:
    vals = [d.rel for d in r.drifts if d.key in key_prefixes]
    return max(vals) if vals else None


def step_change(r) -> str:
    """" (+3)", " (+3, 1 reset)", or " (2 resets)" where the step counter restarted at a reset."""
    parts = [] if r.step_delta is None else [f"+{r.step_delta}"]
    if r.resets:
        parts.append(f"{r.resets} reset" + ("s" if r.resets != 1 else ""))
    return f" ({', '.join(parts)})" if parts else ""


DIFF_COLUMNS = [
    Column("name", 0, lambda r: r.name, lambda r: r.name),
    Column("step A→B", 12, lambda r: f"{r.step_a}→{r.step_b}" + (f" ↻{r.resets}" if r.resets else ""),
           lambda r: (_num(r.step_a), _num(r.step_b))),
    Column("Δm rel", 10, lambda r: _plain(_drift(r, FIRST)),
           lambda r: _num(_drift(r, FIRST)), "right"),
    Column("Δv rel", 10, lambda r: _plain(_drift(r, SECOND)),
           lambda r: _num(_drift(r, SECOND)), "right"),
    Column("max Δ", 10, lambda r: _plain(max((d.max_abs for d in r.drifts), default=None)),
           lambda r: _num(max((d.max_abs for d in r.drifts), default=None)), "right"),
    Column("note", 16, lambda r: r.note, lambda r: r.note),
]


def applicable(columns: list[Column], rows: list, texts: dict[str, list[str]] | None = None) -> list[Column]:
    """The columns worth a place: the name, and every column that says something other than "-" on some row
    (no resets column for AdamW, no quant column without 8-bit or bf16 state). Shared by `inspect` and the TUI.
    `texts`: the columns' texts where the caller has them already."""
    def says(c: Column) -> bool:
        cells = texts[c.title] if texts is not None else (c.text(r) for r in rows)
        return any(t not in ("-", "") for t in cells)

    return [c for c in columns if c.title == "name" or says(c)]


def hyper(v) -> str:
    """A hyper-parameter as written: 0.9999 stays 0.9999 (three significant digits made it 1, an invalid
    beta); only long computed values (Prodigy's d) are cut to six digits."""
    if isinstance(v, float):
        text = repr(v).removesuffix(".0")
        return text if len(text) <= 10 else f"{v:.6g}"
    if isinstance(v, (list, tuple)):
        return "(" + ", ".join(hyper(x) for x in v) + ")"
    return str(v)


def group_text(group: dict, limit: int = 300) -> str:
    """One param group's hyper-parameters: every scalar, and betas (other lists and tables are left out)."""
    text = ", ".join(f"{k}={hyper(v)}" for k, v in group.items() if not isinstance(v, (list, dict)) or k == "betas")
    return text if len(text) <= limit else text[:limit] + "…"


def source_summary(state) -> dict[str, str]:
    """Which file and what layout: known as soon as the state is loaded (a LoadedState or a StateReport)."""
    return {"file": state.path + ("" if state.source_file in (state.path, "") else f"  ({state.source_file})"),
            "layout": state.layout + (f"  [key: {state.key_used}]" if state.key_used else "")}


def state_summary(report) -> dict[str, str]:
    """The header of a state report, the same in `inspect` and the TUI: label -> text (before escaping)."""
    out = {**source_summary(report),
           "optimizer": report.family,
           "step": ", ".join(map(str, report.steps)) or "-"}
    for i, g in enumerate(report.groups):
        out[f"group {i}"] = group_text(g)
    out["totals"] = (f"{len(report.params):,} parameters, {report.total_numel:,} elements, "
                     f"{report.total_state_bytes / 2**20:.1f} MiB of state; names from {report.names_from}")
    out["anomalies"] = str(len(report.anomalies))
    return out

