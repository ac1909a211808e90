"""Compare two states of the same run (e.g. before and after a resume): steps, moment drift, hyper-parameters."""

from __future__ import annotations

import math

import torch

from optinspect.state.analyse import param_step, plain_value, reset_count, tensorish
from optinspect.state.loaded import LoadedState, materialize
from optinspect.state.report import DiffReport, KeyDrift, ParamDiff
from optinspect.state.stats import value_chunks


def _chunks(entries: dict, key: str, mapped: bool):
    v = entries[key]
    n = key[-1]
    quant = None
    if v.dtype == torch.uint8 and key in ("state1", "state2") and f"absmax{n}" in entries and f"qmap{n}" in entries:
        quant = (materialize(entries[f"absmax{n}"]), materialize(entries[f"qmap{n}"]))
    return value_chunks(v, mapped=mapped, quant=quant)


def drift(a: dict, b: dict, key: str, mapped: tuple[bool, bool] = (False, False)) -> KeyDrift:
    """||b - a|| / ||a|| and max |b - a| of one state entry, streamed chunk by chunk (both stay in their files)."""
    sum_a = sum_d = 0.0
    max_d = 0.0
    for (x, free_x), (y, free_y) in zip(_chunks(a, key, mapped[0]), _chunks(b, key, mapped[1]), strict=True):
        d = y - x
        sum_a += float(x.double().square().sum())
        sum_d += float(d.double().square().sum())
        if d.numel():
            max_d = max(max_d, float(d.abs().max()))
        free_x()
        free_y()
    na, nd = math.sqrt(sum_a), math.sqrt(sum_d)
    return KeyDrift(key, nd / na if na > 0 else (0.0 if nd == 0 else math.inf), max_d)


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
            x, y = p.entries[key], q.entries[key]
            if not (tensorish(x) and tensorish(y)) or (not x.dtype.is_floating_point and x.dtype != torch.uint8):
                continue
            if tuple(x.shape) != tuple(y.shape) or (x.dtype == torch.uint8) != (y.dtype == torch.uint8):
                row.note = f"{key}: {str(x.dtype).replace('torch.', '')}{list(x.shape)} vs " \
                           f"{str(y.dtype).replace('torch.', '')}{list(y.shape)}"
                continue
            row.drifts.append(drift(p.entries, q.entries, key, (a.mapped, b.mapped)))
        rows.append(row)
    changes = []
    for i, (ga, gb) in enumerate(zip(a.groups, b.groups, strict=False)):
        for k in sorted(set(map(str, ga)) | set(map(str, gb))):
            if k in ("step", "d", "d_max", "d_hat") or tensorish(ga.get(k)) or tensorish(gb.get(k)):
                continue
            # compared as bounded plain values: a crafted value would make == and repr walk without end
            va, vb = plain_value(ga.get(k)), plain_value(gb.get(k))
            if va != vb:
                changes.append(f"group {i}: {k} {va!r} -> {vb!r}")
    if len(a.groups) != len(b.groups):
        changes.append(f"param groups: {len(a.groups)} -> {len(b.groups)}")
    return DiffReport(a.path, b.path, rows, sorted(set(pa) - set(pb)), sorted(set(pb) - set(pa)), changes)


