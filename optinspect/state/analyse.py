"""From a LoadedState to a StateReport: per-parameter figures, anomalies, totals. Computes, never prints."""

from __future__ import annotations

import functools
import itertools
import math
import statistics
from collections.abc import Callable
from typing import Any

import torch

from optinspect import specs
from optinspect.specs import COUNTERS, FIRST, KAHAN, RESETS, SECOND
from optinspect.state import stats as S
from optinspect.state.loaded import LoadedState, ParamState, materialize
from optinspect.state.lowbit import FP8_HALF_ULP_REL, LowBitTensor
from optinspect.state.mapped import MappedTensor, gather, torch_dtype
from optinspect.state.report import DEFINITIONS, Flag, ParamReport, StateReport

MOMENT_SPREAD = 1e8  # second-moment RMS spread within a group that counts as an anomaly
BF16_HALF_ULP_REL = 2.0**-8


# Bounds on a value shown from a file: a pickle can make a 1 KB structure whose naive walk never ends
# (shared references, "billion laughs") or holds a 5000-digit integer; past these it is summarised.
PLAIN_NODES, PLAIN_DEPTH, PLAIN_ITEMS, PLAIN_STR = 2000, 24, 64, 1000
GROUP_TENSOR_STATS = 1 << 20  # group values that are tensors up to this size also show their mean and absmax


def plain_value(value: Any) -> Any:
    """A param-group value as plain JSON-able data (numbers, strings, lists, dicts), bounded in size and time
    whatever the file built: 0-d and small tensors become numbers, larger ones their shape and dtype."""
    kind = type(value)
    if kind is float:  # a parameter's counters and scalars: once per parameter, without the walker below
        return value if math.isfinite(value) else str(value)
    if kind is bool or (kind is int and abs(value) < 1 << 64):
        return value
    budget = [PLAIN_NODES]

    def conv(x: Any, depth: int) -> Any:
        budget[0] -= 1
        if budget[0] < 0 or depth > PLAIN_DEPTH:
            return "…"
        if x is None or isinstance(x, bool):
            return x
        if isinstance(x, int):
            return x if abs(x) < 1 << 64 else f"<{x.bit_length()}-bit integer>"
        if isinstance(x, float):
            return x if math.isfinite(x) else str(x)
        if isinstance(x, str):
            return x if len(x) <= PLAIN_STR else x[:PLAIN_STR] + "…"
        if isinstance(x, (bytes, bytearray)):
            return f"<{len(x)} bytes>"
        if isinstance(x, (torch.Tensor, MappedTensor)):
            numel = x.numel() if isinstance(x, torch.Tensor) else x.numel
            if numel <= 16:
                t = materialize(x)
                return conv(t.item() if numel == 1 else t.tolist(), depth + 1)
            text = f"tensor{list(x.shape)} {str(x.dtype).replace('torch.', '')}"
            if x.dtype.is_floating_point and numel <= GROUP_TENSOR_STATS:  # a few figures, read in one go
                t = materialize(x).double()
                return f"{text} (mean {t.mean().item():.4g}, absmax {t.abs().max().item():.4g})"
            return text
        if isinstance(x, dict):  # keys as written (a group's keys are the hyper-parameters' names)
            return {k if isinstance(k, str) else str(conv(k, depth + 1)): conv(v, depth + 1)
                    for k, v in itertools.islice(x.items(), PLAIN_ITEMS)}
        if isinstance(x, (list, tuple, set, frozenset)):
            items = [conv(v, depth + 1) for v in itertools.islice(x, PLAIN_ITEMS)] + (["…"] if len(x) > PLAIN_ITEMS
                                                                                      else [])
            return tuple(items) if isinstance(x, tuple) else items
        return f"<{type(x).__name__}>"

    return conv(value, 0)


@functools.lru_cache(maxsize=256)
def _key_set(keys: tuple) -> frozenset[str]:
    """A group's (or a state's) keys as the registry matches them, made once per distinct set, not per parameter."""
    return frozenset(k for k in keys if isinstance(k, str))


def _family(entries: dict, group: dict) -> specs.StateFamily | None:
    lowbit = next((v.kind for v in entries.values() if isinstance(v, LowBitTensor)), None)
    return specs.family_of(_key_set(tuple(entries)), _key_set(tuple(group)), lowbit)


def family_of(entries: dict, group: dict) -> str:
    """The name of the family a parameter's state belongs to (the registry's first matching signature)."""
    return _family_name(_family(entries, group), entries)


def _family_name(fam: specs.StateFamily | None, entries: dict) -> str:
    if fam is not None:
        return fam.name
    return "unknown" if entries else "no state"


def _as_int(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)) and math.isfinite(v):
        return int(v)
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        return int(v.item())
    return None


def param_step(entries: dict, group: dict, fam: specs.StateFamily | None = None) -> int | None:
    """The steps a parameter has taken: its own counter, else the group's (optimi, Prodigy, SCORN/REMASTER), and
    the group's when SCORN/REMASTER hold the per-parameter `step` at 0 because resets are on. (`fam`: its family
    where the caller knows it.)"""
    step = _as_int(_small(entries.get("step")))
    group_step = _as_int(_small(group.get("step")))  # optimi keeps it in the group, as a tensor
    if step is None and group_step is None:
        fam = _family(entries, group)
        keys = fam.step_keys if fam else ()
        group_step = next((_as_int(_small(group[k])) for k in keys if k in group), None)
    if step is None or (step == 0 and "steps_since_reset" in entries and group_step):
        fam = fam or _family(entries, group)
        if group_step is not None and fam is not None and fam.step_counts_next:
            return group_step - 1  # it saves the number of the step to come: 1 before the first
        return group_step
    return step


def reset_count(entries: dict) -> int | None:
    """Resets so far (SCORN/REMASTER `times_zero`, Persona `times_reset`); None where the state keeps none."""
    return next((_as_int(_small(entries[k])) for k in RESETS if k in entries), None)


SMALL = 1 << 16  # tensors up to this size are simply read; larger ones are streamed
BATCH_PARAMS = 2048  # parameters whose small tensors are counted in one batch
FIRST_BATCH = 256


def _small(v: Any) -> Any:
    if isinstance(v, MappedTensor) and not isinstance(v, LowBitTensor) and (v.numel <= SMALL or v.is_scalar):
        return v.scalar() if v.is_scalar else materialize(v)
    return v


def _plain_mapped(v: Any) -> bool:
    return type(v) is MappedTensor


def _window_entries(params: list[ParamState]) -> list[dict]:
    """The parameters' entries ready for `_param`: 0-d counters and scalars read as numbers (all of a dtype in one
    read), small float tensors left mapped for `S.batch_stats` to gather, other small tensors read."""
    scalars = [v for p in params for v in p.entries.values() if _plain_mapped(v) and v.is_scalar]
    values: dict[int, Any] = {}
    by_dtype: dict[torch.dtype, list] = {}
    for v in scalars:
        by_dtype.setdefault(v.dtype, []).append(v)
    for dtype, group in by_dtype.items():
        if dtype.is_floating_point or dtype in (torch.int64, torch.int32):
            values.update(zip(map(id, group), gather(group, None).tolist(), strict=True))
    out = []
    for p in params:
        e = {}
        for k, v in p.entries.items():
            if type(v) is MappedTensor and v.shape != () and _floating(v.dtype_name) and 0 < v.numel <= S.BATCH_MAX:
                e[k] = v  # batchable(v), inline: 300k tensors
            else:
                e[k] = values[id(v)] if id(v) in values else _small(v)
        out.append(e)
    return out


def tensorish(x: Any) -> bool:
    return isinstance(x, (torch.Tensor, MappedTensor))


@functools.lru_cache(maxsize=256)
def _moment_candidates(keys: tuple) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The first- and second-moment keys among a state's keys, in the registry's order: once per key set (a state
    of 100k parameters has a handful), where scanning the registry per parameter took seconds."""
    return tuple(k for k in FIRST if k in keys), tuple(k for k in SECOND if k in keys)


def _moment_keys(e: dict) -> tuple[str, str] | None:
    """The first and second moment of a parameter's state, when it has both in one shape."""
    firsts, seconds = _moment_candidates(tuple(e))
    m_key = next((k for k in firsts if tensorish(e[k])), None)
    v_key = next((k for k in seconds if tensorish(e[k])), None)
    if m_key and v_key and tuple(e[m_key].shape) == tuple(e[v_key].shape):
        return m_key, v_key
    return None


_FLOATING: dict[str, bool] = {}  # dtype name -> is_floating_point


def _floating(name: str) -> bool:
    known = _FLOATING.get(name)
    if known is None:
        known = _FLOATING[name] = torch_dtype(name).is_floating_point
    return known


def batchable(t: Any) -> bool:
    """A state tensor counted in a batch with other small ones (a plain float tensor of at most S.BATCH_MAX)."""
    if type(t) is MappedTensor:  # the usual case, judged by its dtype's name
        return _floating(t.dtype_name) and 0 < t.numel <= S.BATCH_MAX
    if not tensorish(t) or isinstance(t, LowBitTensor) or not t.dtype.is_floating_point:
        return False
    return 0 < (t.numel if isinstance(t, MappedTensor) else t.numel()) <= S.BATCH_MAX


def _small_jobs(e: dict, pair: tuple[str, str] | None) -> list[tuple]:
    """The statistics of this parameter that can be counted in a batch with other small tensors (plain float
    tensors; 8-bit ones and large ones go their own way in `_param`); `pair`: its `_moment_keys`."""
    jobs = []
    done: set[str] | tuple = ()
    if pair and e[pair[0]].dtype != torch.uint8:
        m, v = e[pair[0]], e[pair[1]]
        if batchable(m) and batchable(v):
            jobs.append(("pair", pair[0], m, pair[1], v))
        done = set(pair)
    for k, v in e.items():
        if k not in done and not k.startswith(("qmap", "absmax")) and batchable(v):
            jobs.append(("one", k, v))
    return jobs


def _param(p: ParamState, e: dict, group: dict, progress: Callable[[int], None] | None, mapped: bool,
           batched: dict, pair: tuple[str, str] | None) -> ParamReport:
    """One parameter's row; `batched` holds what `S.batch_stats` already computed for its small tensors, `pair`
    is its `_moment_keys`."""
    family = _family(e, group)
    step = param_step(e, group, family)
    counters = {}
    for k in COUNTERS:
        if k in e and (c := _as_int(e[k])) is not None:
            counters[k] = c
    r = ParamReport(p.index, p.name, p.group, list(p.shape) if p.shape else None,
                    _family_name(family, e), step, counters,
                    name_certain=p.name_certain)
    done: set[str] = set()
    if pair:
        m_key, v_key = pair
        m, v = e[m_key], e[v_key]
        quant = None
        if m.dtype == torch.uint8:
            if v.dtype == torch.uint8 and all(k in e for k in ("qmap1", "qmap2", "absmax1", "absmax2")):
                quant = {"q1": materialize(e["qmap1"]).float(), "a1": materialize(e["absmax1"]).float(),
                         "q2": materialize(e["qmap2"]).float(), "a2": materialize(e["absmax2"]).float()}
        if m.dtype != torch.uint8 or quant is not None:
            sm, sv, r.update_scale_mean, r.update_scale_max = batched.get(("pair", m_key)) or S.moment_pair_stats(
                m_key, m, v_key, v, progress, mapped=mapped, quant=quant)
            if quant is not None:  # the error bounds: a per-code table over the uint8 codes
                S.attach_quant_bound(sm, m, quant["a1"], quant["q1"], mapped=mapped)
                S.attach_quant_bound(sv, v, quant["a2"], quant["q2"], mapped=mapped)
            _lowbit_bound(sm, m, mapped)
            _lowbit_bound(sv, v, mapped)
            r.tensors += [sm, sv]
            done = {m_key, v_key}
    for k, v in e.items():
        if k in done:
            continue
        lazy = isinstance(v, MappedTensor)
        if not (isinstance(v, torch.Tensor) or lazy):
            if isinstance(v, (int, float, bool, str)):
                r.scalars[k] = plain_value(v)
            continue
        numel = v.numel if lazy else v.numel()
        if k.startswith(("qmap", "absmax")) or numel == 0:
            continue
        if v.dtype == torch.uint8 and k in ("state1", "state2"):
            n = k[-1]
            if f"qmap{n}" in e and f"absmax{n}" in e:
                st = S.quantized_stats(k, v, materialize(e[f"absmax{n}"]), materialize(e[f"qmap{n}"]), progress,
                                       mapped=mapped)
            else:
                st = S.tensor_stats(k, v, progress, mapped=mapped)
        elif v.dtype.is_floating_point:
            st = batched.get(("one", k)) or S.tensor_stats(k, v, progress, mapped=mapped)
            _lowbit_bound(st, v, mapped)
        else:
            continue
        r.tensors.append(st)
    by_key = {t.key: t for t in r.tensors}
    first = next((by_key[k] for k in FIRST if k in by_key), None)
    second = next((by_key[k] for k in SECOND if k in by_key), None)
    if "exp_avg_sq_row" in e and "exp_avg_sq_col" in e:
        second = S.factored_second_moment(materialize(e["exp_avg_sq_row"]), materialize(e["exp_avg_sq_col"]))
        r.tensors.append(second)
    r.first_rms = first.rms if first else None
    r.second_rms = second.rms if second else None
    rel = [t.quant.rel_rms_bound for t in r.tensors if t.quant]
    rel += [FP8_HALF_ULP_REL for t in r.tensors if t.dtype == "float8_e4m3fn"]
    rel += [BF16_HALF_ULP_REL for t in r.tensors if t.dtype == "bfloat16" and t.key in FIRST + SECOND]
    r.quant_rel_error = max(rel) if rel else None
    kahan = next((by_key[k] for k in KAHAN if k in by_key), None)
    r.kahan_rms = kahan.rms if kahan else None
    if any(not t.finite for t in r.tensors):
        bad = [t.key for t in r.tensors if not t.finite]
        r.flags.append(Flag("nonfinite", "nan/inf in " + ", ".join(bad)))
    if second is not None and (step or 0) > 0 and second.finite and second.absmax == 0:
        r.flags.append(Flag("second-zero", "second moment all zero"))
    if first is not None and (step or 0) > 1 and first.finite and first.absmax == 0:
        r.flags.append(Flag("dead", "dead (first moment all zero)"))
    return r


def _lowbit_bound(st: S.TensorStats, t: Any, mapped: bool) -> None:
    """torchao 8/4-bit moments get the same per-code error bound as bitsandbytes' (their code books differ)."""
    parts = t.quant_parts() if isinstance(t, LowBitTensor) else None
    if parts is not None:
        S.attach_quant_bound(st, *parts, mapped=mapped)
        st.bytes = t.nbytes


def build_report(ls: LoadedState, progress: Callable[[int], None] | None = None,
                 on_param: Callable[[ParamReport], None] | None = None) -> StateReport:
    """Analyse every parameter (streaming large tensors chunk by chunk, counting small ones in batches of many
    parameters), then the cross-tensor anomalies. `on_param` sees each row as soon as it is done."""
    ls.settle()
    rows = []
    params = ls.params
    i = 0
    while i < len(params):
        window: list[tuple[ParamState, dict, tuple[str, str] | None, list[tuple]]] = []
        elements = 0
        end = i
        limit = FIRST_BATCH if i == 0 else BATCH_PARAMS  # a small first batch: the first rows show sooner
        while end < len(params) and end - i < limit and elements < S.BATCH_ELEMENTS:
            elements += sum(v.numel if type(v) is MappedTensor else S.numel_of(v)
                            for v in params[end].entries.values() if tensorish(v))
            end += 1
        for p, e in zip(params[i:end], _window_entries(params[i:end]), strict=True):
            pair = _moment_keys(e)
            window.append((p, e, pair, _small_jobs(e, pair)))
        i = end
        flat_jobs = [j for *_, jobs in window for j in jobs]
        results = iter(S.batch_stats(flat_jobs) if flat_jobs else [])
        if progress and flat_jobs:
            progress(sum(S.state_nbytes(t) for j in flat_jobs for t in S.job_tensors(j)))
        for p, e, pair, jobs in window:
            batched = {(j[0], j[1]): next(results) for j in jobs}
            group = ls.groups[p.group] if p.group < len(ls.groups) else {}
            row = _param(p, e, group, progress, ls.mapped, batched, pair)
            rows.append(row)
            if on_param:
                on_param(row)
    families = sorted({r.family for r in rows if r.family != "no state"})
    steps = sorted({r.step for r in rows if r.step is not None})
    anomalies = finalize(rows, steps)
    notes = list(ls.warnings)
    restarted = [r for r in rows if r.counters.get("times_reset")]
    if restarted:  # Persona sets `step` back to 1 on each reset; SCORN/REMASTER keep counting
        most = max(r.counters["times_reset"] for r in restarted)
        notes.append(f"PersonaOptimizer starts its step counter again at every reset: `step` counts from the last "
                     f"reset ({most} so far), not from the start of the run")
    groups = []
    for g in ls.groups:  # each value bounded on its own, so one crafted value cannot hide the others
        groups.append({k if isinstance(k, str) else str(plain_value(k)): plain_value(v) for k, v in g.items()})
    return StateReport(path=ls.path, source_file=ls.source_file, layout=ls.layout, key_used=ls.key_used,
                       names_from=ls.names_from, family=", ".join(families) or "no state", steps=steps, groups=groups,
                       params=rows, anomalies=anomalies, warnings=notes, skipped=list(ls.skipped),
                       total_numel=sum(math.prod(r.shape) for r in rows if r.shape),
                       total_state_bytes=sum(t.bytes for r in rows for t in r.tensors),
                       definitions=DEFINITIONS)


def finalize(rows: list[ParamReport], steps: list[int]) -> list[str]:
    """Anomalies across tensors: step counters that disagree, second moments orders of magnitude apart."""
    anomalies = []
    if len(steps) > 1:
        counts = {s: sum(1 for r in rows if r.step == s) for s in steps}
        common = max(counts, key=counts.get)
        for r in rows:
            if r.step is not None and r.step != common:
                r.flags.append(Flag("step-mismatch", f"step {r.step} (most: {common})"))
        anomalies.append("step counters differ between tensors: " +
                         ", ".join(f"{counts[s]} at step {s}" for s in steps) +
                         " (tensors unfrozen late, or skipped steps)")
    for g in sorted({r.group for r in rows}):
        vals = [(r, r.second_rms) for r in rows if r.group == g and r.second_rms and r.second_rms > 0
                and math.isfinite(r.second_rms)]
        if len(vals) >= 3:
            med = statistics.median(v for _, v in vals)
            lo, hi = min(v for _, v in vals), max(v for _, v in vals)
            if hi / lo > MOMENT_SPREAD:
                anomalies.append(f"group {g}: second-moment RMS spans {lo:.3g} .. {hi:.3g} (x{hi / lo:.2g})")
                for r, v in vals:
                    if v > 1e4 * med:
                        r.flags.append(Flag("exploding", "exploding second moment"))
                    elif v < 1e-4 * med:
                        r.flags.append(Flag("vanishing", "vanishing second moment"))
    for r in rows:
        for f in r.flags:
            if f.code != "step-mismatch":  # summarised once above, not per tensor
                anomalies.append(f"{r.name}: {f}")
    return anomalies
