"""Compare two states of the same run (e.g. before and after a resume): steps, moment drift, hyper-parameters."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch

from optinspect.state.load import LoadedState, materialize
from optinspect.state.report import param_step, reset_count


@dataclass
class KeyDrift:
    key: str
    rel: float  # ||b - a|| / ||a||
    max_abs: float


@dataclass
class ParamDiff:
    name: str
    step_a: int | None
    step_b: int | None
    drifts: list[KeyDrift] = field(default_factory=list)
    note: str = ""
    resets: int | None = None  # resets between A and B, where the state counts them
    step_delta: int | None = None  # steps from A to B; None where the counter restarted at a reset (Persona)


@dataclass
class DiffReport:
    a: str
    b: str
    params: list[ParamDiff]
    only_a: list[str]
    only_b: list[str]
    group_changes: list[str]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["schema"] = "optinspect-state-diff/1"
        return d


def _dequant(e: dict, key: str) -> torch.Tensor:
    v = materialize(e[key])
    if v.dtype == torch.uint8 and key in ("state1", "state2"):
        from optinspect.optimizers._quant import dequantize_blockwise

        n = key[-1]
        return dequantize_blockwise(v, materialize(e[f"absmax{n}"]), materialize(e[f"qmap{n}"]))
    return v


def diff_states(a: LoadedState, b: LoadedState) -> DiffReport:
    pa = {p.name: p for p in a.params}
    pb = {p.name: p for p in b.params}
    rows = []
    for name, p in pa.items():
        q = pb.get(name)
        if q is None:
            continue
        ga = a.groups[p.group] if p.group < len(a.groups) else {}
        gb = b.groups[q.group] if q.group < len(b.groups) else {}
        row = ParamDiff(name, param_step(p.entries, ga), param_step(q.entries, gb))
        ra, rb = reset_count(p.entries), reset_count(q.entries)
        if ra is not None and rb is not None:
            row.resets = rb - ra
        # Persona's own `step` starts again at 1 on every reset: across a reset its difference means nothing
        restarted = bool(row.resets) and "times_reset" in q.entries
        if row.step_a is not None and row.step_b is not None and not restarted:
            row.step_delta = row.step_b - row.step_a
        for key in sorted(set(p.entries) & set(q.entries)):
            if key.startswith(("qmap", "absmax")):
                continue
            x, y = materialize(p.entries[key]), materialize(q.entries[key])
            if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)) or not x.is_floating_point() and \
                    x.dtype != torch.uint8:
                continue
            if x.shape != y.shape:
                row.note = f"{key}: shape {list(x.shape)} vs {list(y.shape)}"
                continue
            x, y = _dequant(p.entries, key).float(), _dequant(q.entries, key).float()
            d = y - x
            na = float(x.norm())
            row.drifts.append(KeyDrift(key, float(d.norm()) / na if na > 0 else (0.0 if float(d.norm()) == 0
                                                                                  else math.inf),
                                       float(d.abs().max()) if d.numel() else 0.0))
        rows.append(row)
    changes = []
    for i, (ga, gb) in enumerate(zip(a.groups, b.groups, strict=False)):
        for k in sorted(set(ga) | set(gb)):
            va, vb = ga.get(k), gb.get(k)
            if isinstance(va, torch.Tensor) or isinstance(vb, torch.Tensor) or k in ("step", "d", "d_max", "d_hat"):
                continue
            if va != vb:
                changes.append(f"group {i}: {k} {va!r} -> {vb!r}")
    if len(a.groups) != len(b.groups):
        changes.append(f"param groups: {len(a.groups)} -> {len(b.groups)}")
    return DiffReport(a.path, b.path, rows, sorted(set(pa) - set(pb)), sorted(set(pb) - set(pa)), changes)


