"""Compare two states of the same run (e.g. before and after a resume): steps, moment drift, hyper-parameters."""

from __future__ import annotations

import math

import torch

from optinspect.state.analyse import batchable, param_step, plain_value, reset_count, tensorish
from optinspect.state.loaded import LoadedState, materialize
from optinspect.state.mapped import gather
from optinspect.state.report import DiffReport, KeyDrift, ParamDiff
from optinspect.state.stats import numel_of, value_chunks


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
        if d.numel() and not math.isnan(max_d):
            m = float(d.abs().max())
            max_d = m if math.isnan(m) or m > max_d else max_d  # NaN stays NaN (max() would drop it)
        free_x()
        free_y()
    na, nd = math.sqrt(sum_a), math.sqrt(sum_d)
    return KeyDrift(key, nd / na if na > 0 else (0.0 if nd == 0 else math.inf), max_d)


BATCH = 4096  # pairs of small tensors compared in one batch


def _batch_drifts(jobs: list[tuple]):
    """`drift` for many pairs of small tensors at once: both sides gathered in one read each, the sums formed
    per segment (a state of 100k small tensors took a minute pair by pair)."""
    xs, ys = gather([j[3] for j in jobs]), gather([j[4] for j in jobs])
    lengths = torch.tensor([numel_of(j[3]) for j in jobs])
    seg = torch.repeat_interleave(torch.arange(len(jobs)), lengths)
    d = ys - xs
    sum_a = torch.zeros(len(jobs), dtype=torch.float64).index_add_(0, seg, xs.double().square())
    sum_d = torch.zeros(len(jobs), dtype=torch.float64).index_add_(0, seg, d.double().square())
    max_d = torch.zeros(len(jobs)).scatter_reduce_(0, seg, d.abs(), "amax")
    for (row, at, key, _, _), sa, sd, md in zip(jobs, sum_a.sqrt().tolist(), sum_d.sqrt().tolist(), max_d.tolist(),
                                                strict=True):
        yield row, at, KeyDrift(key, sd / sa if sa > 0 else (0.0 if sd == 0 else math.inf), md)


def diff_states(a: LoadedState, b: LoadedState) -> DiffReport:
    pa = {p.name: p for p in a.params}
    pb = {p.name: p for p in b.params}
    rows = []
    small: list[tuple] = []  # small float entries, compared many at a time once every row is known
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
            if batchable(x) and batchable(y):
                small.append((row, len(row.drifts), key, x, y))
                row.drifts.append(None)
            else:
                row.drifts.append(drift(p.entries, q.entries, key, (a.mapped, b.mapped)))
        rows.append(row)
    for i in range(0, len(small), BATCH):
        for row, at, drift_ in _batch_drifts(small[i:i + BATCH]):
            row.drifts[at] = drift_
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


