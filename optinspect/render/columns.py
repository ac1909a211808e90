"""Column definitions: how a report row is shown and sorted (formatting only), shared by the `inspect` table
and the TUI so both say the same thing the same way."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from optinspect.specs import FIRST, RESETS, SECOND


@dataclass(frozen=True)
class Column:
    title: str
    width: int  # 0 = takes the remaining width
    text: Callable[[Any], str]
    key: Callable[[Any], Any]
    align: str = "left"


# the state tensors whose dtype the dtype column shows: the moments (as the engine names them) and Prodigy's s
MOMENTS = FIRST + SECOND + ("s", "exp_avg_sq_row", "exp_avg_sq_col")


def pending(r) -> bool:
    """A TUI placeholder row whose statistics are still being computed."""
    return r.family == "…"


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
    Column("name", 0, lambda r: r.name, lambda r: r.name),
    Column("shape", 11, _shape, size),
    Column("dtype", 9, _dtype, _dtype),
    Column("step", 6, lambda r: _g(r, r.step, "d"), lambda r: _num(r.step), "right"),
    Column("resets", 7, _resets, lambda r: tuple(r.counters.values())),
    Column("m RMS", 9, lambda r: _g(r, r.first_rms), lambda r: _num(r.first_rms), "right"),
    Column("v RMS", 9, lambda r: _g(r, r.second_rms), lambda r: _num(r.second_rms), "right"),
    Column("update", 8, lambda r: _g(r, r.update_scale_mean), lambda r: _num(r.update_scale_mean), "right"),
    Column("quant", 7, lambda r: _g(r, r.quant_rel_error, ".2%"), lambda r: _num(r.quant_rel_error), "right"),
    Column("flags", 14, lambda r: "; ".join(r.flags), lambda r: len(r.flags)),
]


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


def applicable(columns: list[Column], rows: list) -> list[Column]:
    """The columns worth a place: the name, and every column that says something other than "-" on some row
    (no resets column for AdamW, no quant column without 8-bit or bf16 state). Shared by `inspect` and the TUI."""
    return [c for c in columns if c.title == "name" or any(c.text(r) not in ("-", "") for r in rows)]
