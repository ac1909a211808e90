"""Which layout a loaded object is (a torch state_dict, a dry-run file, DeepSpeed, gradient-release dicts,
flattened safetensors), turned into a LoadedState."""

from __future__ import annotations

import json
import os
import re
from typing import Any

from optinspect.specs import SHAPE_KEYS
from optinspect.state.header import HeaderError, read_header
from optinspect.state.limits import MAX_TENSORS
from optinspect.state.loaded import LoadedState, ParamState, StateLoadError
from optinspect.state.mapped import MappedTensor, is_tensor

OPTIMIZER_KEYS = ("optimizer", "optimizer_state_dict", "optim", "optimizer_state", "opt", "optimizer_states")


# -- recognising layouts -----------------------------------------------------------------------------
def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and "state" in obj and "param_groups" in obj and isinstance(obj["param_groups"], list)


def _check_state_dict(sd: dict, path: str) -> None:
    """An optimizer state_dict's shape, checked before it is walked: named, never crashed on."""
    if not isinstance(sd["state"], dict):
        raise StateLoadError(f"{path}: `state` is a {type(sd['state']).__name__}, not a dict of per-parameter state")
    for i, g in enumerate(sd["param_groups"]):
        if not isinstance(g, dict):
            raise StateLoadError(f"{path}: param_groups[{i}] is a {type(g).__name__}, not a dict")
        if not isinstance(g.get("params", []), (list, tuple)):
            raise StateLoadError(f"{path}: param_groups[{i}]['params'] is a {type(g['params']).__name__}, not a list")


def _is_grad_release(obj: Any) -> bool:
    return isinstance(obj, dict) and obj and all(isinstance(k, int) for k in obj) and \
        all(_is_state_dict(v) for v in obj.values())


# What a parameter's entry keys say, per distinct key set (a state of 100k parameters has a handful): whether the
# entries can be used as they are (string keys, no nested bitsandbytes state), and which of SHAPE_KEYS they hold,
# in that order. Bounded, whatever a file holds.
_KEY_SETS: dict[tuple, tuple[bool, tuple[str, ...]]] = {}


def _key_set(st: dict) -> tuple[bool, tuple[str, ...]]:
    keys = tuple(st)
    known = _KEY_SETS.get(keys)
    if known is None:
        if len(_KEY_SETS) > 1024:
            _KEY_SETS.clear()
        plain = all(type(k) is str for k in keys) and "__bnb_optimizer_quant_state__" not in st
        known = _KEY_SETS[keys] = (plain, tuple(k for k in SHAPE_KEYS if k in st))
    return known


def _entries(st: dict) -> tuple[dict[str, Any], tuple[str, ...]]:
    """A parameter's entries as string keys (bitsandbytes' nested quant state flattened), and which of
    SHAPE_KEYS they hold."""
    plain, shape_keys = _key_set(st)
    if plain:  # the usual case: the dict as it is
        return st, shape_keys
    flat = _flattened(st)
    return flat, _key_set(flat)[1]


def _flattened(st: dict) -> dict[str, Any]:
    if "__bnb_optimizer_quant_state__" not in st:
        return {k if type(k) is str else str(k): v for k, v in st.items()}
    out = {}
    for k, v in st.items():
        if k == "__bnb_optimizer_quant_state__" and isinstance(v, dict):
            out.update(v)
        else:
            out[str(k)] = v
    return out


def from_state_dict(sd: dict, path: str, layout: str, names: list[str] | None = None) -> LoadedState:
    _check_state_dict(sd, path)
    params: list[ParamState] = []
    groups = []
    state = sd["state"]
    for gi, g in enumerate(sd["param_groups"]):
        groups.append({k: v for k, v in g.items() if k != "params"})
        for idx in g.get("params", []):
            try:
                st = state.get(idx)
                if st is None:
                    st = state.get(str(idx), {})
            except TypeError:  # an unhashable parameter id
                raise StateLoadError(f"{path}: a parameter id of type {type(idx).__name__}") from None
            entries, shape_keys = _entries(st) if isinstance(st, dict) else ({}, ())
            params.append(ParamState(int(idx) if isinstance(idx, int) else len(params), "", gi, entries,
                                     _infer_shape(entries, shape_keys)))
    names_from = "index"
    if names and len(names) == len(params):
        for p, n in zip(params, names, strict=True):
            p.name = n
        names_from = "checkpoint"
    for gi, g in enumerate(sd["param_groups"]):
        if g.get("param_names") and names_from == "index":
            for p, n in zip([p for p in params if p.group == gi], g["param_names"], strict=False):
                p.name = str(n)
            names_from = "param_names"
    for p in params:
        if not p.name:
            p.name = f"{p.group}/{p.index}"
    return LoadedState(path=path, layout=layout, params=params, groups=groups, names_from=names_from)


def _infer_shape(entries: dict, shape_keys: tuple[str, ...] | None = None) -> tuple[int, ...] | None:
    for key in _key_set(entries)[1] if shape_keys is None else shape_keys:
        v = entries[key]
        if is_tensor(v) and len(v.shape) >= 1:
            return tuple(v.shape)
    row, col = entries.get("exp_avg_sq_row"), entries.get("exp_avg_sq_col")
    if is_tensor(row) and is_tensor(col):
        return tuple(row.shape) + (col.shape[-1],)
    return None


def _names_from_param_shapes(ps: Any) -> list[str] | None:
    """DeepSpeed's `param_shapes`: a list (per group) of ordered name -> shape maps, or one map."""
    if isinstance(ps, dict):
        ps = [ps]
    if isinstance(ps, list) and all(isinstance(d, dict) for d in ps):
        return [str(n) for d in ps for n in d]
    return None


def _names_from_module(ls: LoadedState, module: Any) -> bool:
    """DeepSpeed stage 0 saves no param_shapes, but the module's weights sit beside the state in parameter order:
    their names fit when the count and every shape agree."""
    if not isinstance(module, dict):
        return False
    weights = [(str(k), tuple(v.shape)) for k, v in module.items() if is_tensor(v)]
    if len(weights) != len(ls.params) or any(p.shape is not None and tuple(p.shape) != s
                                              for p, (_, s) in zip(ls.params, weights, strict=True)):
        return False
    for p, (name, _) in zip(ls.params, weights, strict=True):
        p.name = name
    return True


def zero_stage(v: Any) -> str:
    if isinstance(v, int):
        return str(v)
    args = getattr(v, "args", ())
    return str(args[0]) if args and isinstance(args[0], int) else "?"


def interpret(obj: Any, path: str, optimizer: int = 0) -> LoadedState:
    """Turn whatever torch.load returned into a LoadedState, saying which layout and key were used."""
    if isinstance(obj, dict) and obj.get("format") == "optinspect-state/1" and _is_state_dict(obj.get("optimizer")):
        ls = from_state_dict(obj["optimizer"], path, "optinspect dry-run state (.pt)", obj.get("param_names"))
        ls.key_used = "optimizer"
        ls.extra["report"] = obj.get("report")
        return ls
    if _is_state_dict(obj):
        return from_state_dict(obj, path, "torch optimizer.state_dict()")
    if _is_grad_release(obj):
        merged = {"state": {}, "param_groups": []}
        for i, (_, sd) in enumerate(sorted(obj.items())):
            _check_state_dict(sd, path)
            ids = [j for g in sd["param_groups"] for j in g.get("params", [])]
            for j in ids:
                if j in sd["state"]:
                    merged["state"][i] = sd["state"][j]
            for g in sd["param_groups"]:
                merged["param_groups"].append({**g, "params": [i] if ids else []})
        return from_state_dict(merged, path, "gradient-release wrapper (one optimizer per parameter)")
    if isinstance(obj, dict):
        deepspeed = "ds_version" in obj or "ds_config" in obj or "dp_world_size" in obj
        for key in OPTIMIZER_KEYS:
            inner = obj.get(key)
            if inner is None:
                continue
            if isinstance(inner, list) and inner and all(_is_state_dict(x) for x in inner):
                # Lightning's `optimizer_states`: one state_dict per optimizer of configure_optimizers()
                if not 0 <= optimizer < len(inner):
                    raise StateLoadError(f"{path}: --optimizer {optimizer}, but the checkpoint holds {len(inner)} "
                                         f"optimizer{'s' * (len(inner) != 1)} (0..{len(inner) - 1})")
                ls = interpret(inner[optimizer], path)
                ls.layout = f"Lightning checkpoint -> optimizer_states[{optimizer}] of {len(inner)} -> {ls.layout}"
                ls.key_used = f"{key}[{optimizer}]"
                if len(inner) > 1:
                    ls.warnings.append(f"this checkpoint holds {len(inner)} optimizers; number {optimizer} is shown "
                                       "(--optimizer N picks another)")
                if isinstance(obj.get("global_step"), int):
                    ls.extra["global_step"] = obj["global_step"]
                return ls
            if isinstance(inner, dict) and "zero_stage" in inner and _is_state_dict(inner.get("optimizer_state_dict")):
                stage = zero_stage(inner["zero_stage"])
                ls = from_state_dict(inner["optimizer_state_dict"], path, f"DeepSpeed ZeRO stage {stage} "
                                     "optimizer states (partitioned base-optimizer state)")
                ls.key_used = f"{key}.optimizer_state_dict"
                ls.warnings.append("ZeRO partitions flatten parameters: state tensors are flat per partition")
                return ls
            if _is_state_dict(inner) or _is_grad_release(inner):
                ls = interpret(inner, path)
                names = _names_from_param_shapes(obj.get("param_shapes"))
                if names and len(names) == len(ls.params):
                    for p, n in zip(ls.params, names, strict=True):
                        p.name = n
                    ls.names_from = "param_shapes"
                elif names:
                    ls.warnings.append(f"param_shapes lists {len(names)} names for {len(ls.params)} state entries")
                elif deepspeed and _names_from_module(ls, obj.get("module")):
                    ls.names_from = "module (the model's weights in the same file, by order and shape)"
                ls.layout = ("DeepSpeed checkpoint" if deepspeed else "training checkpoint") + f" -> {ls.layout}"
                ls.key_used = key
                if deepspeed:
                    ls.extra.update({k: obj[k] for k in ("global_steps", "global_samples", "ds_version", "step")
                                     if k in obj and isinstance(obj[k], (int, float, str))})
                return ls
        if deepspeed and obj.get("optimizer", "absent") is None:
            raise StateLoadError(f"{path}: a DeepSpeed checkpoint whose `optimizer` is None: the state lives in "
                                 "*_optim_states.pt files (ZeRO or DeepSpeed's bf16 optimizer)")
        keys = ", ".join(sorted(map(str, obj))[:12])
        raise StateLoadError(f"{path}: no optimizer state found (looked for a state_dict and under "
                             f"{', '.join(OPTIMIZER_KEYS)}; top-level keys: {keys})")
    raise StateLoadError(f"{path}: holds a {type(obj).__name__}, not optimizer state")


def looks_like_safetensors(path: str) -> bool:
    """A safetensors file under another name: an 8-byte little-endian header length, then a JSON object."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(9)
            size = os.fstat(fh.fileno()).st_size
    except OSError:
        return False  # the torch path reports the error
    return len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") <= size - 8


# -- safetensors -------------------------------------------------------------------------------------
def load_safetensors(path: str, max_tensors: int = MAX_TENSORS) -> LoadedState:
    try:
        header = read_header(path, max_tensors)
    except HeaderError as e:
        raise StateLoadError(str(e)) from None
    from optinspect.state.mapped import MappedFile

    meta = header.metadata
    mapped = MappedFile(path)
    infos = {t.name: t for t in header.tensors}
    names = list(infos)
    pattern = re.compile(r"^(?:optimizer\.)?state\.(.+)\.([^.]+)$")
    per: dict[str, dict[str, Any]] = {}
    groups_tensors: dict[int, dict[str, Any]] = {}
    for n in names:
        m = pattern.match(n)
        if m:
            per.setdefault(m.group(1), {})[m.group(2)] = _mapped_tensor(mapped, infos[n])
            continue
        g = re.match(r"^(?:optimizer\.)?(?:param_groups|group)\.(\d+)\.(.+)$", n)
        if g:
            groups_tensors.setdefault(int(g.group(1)), {})[g.group(2)] = _mapped_tensor(mapped, infos[n]).load()
    if not per:
        raise StateLoadError(f"{path}: a safetensors file without optimizer state keys (expected "
                             f"`state.<param>.<key>`; found e.g. {', '.join(names[:5])})")
    groups: list[dict[str, Any]] = []
    order = list(per)
    if meta.get("param_groups"):
        groups = _json_list(meta["param_groups"])
        if not all(isinstance(g, dict) and isinstance(g.get("params", []), list) for g in groups):
            groups = []
    if meta.get("param_names"):
        listed = [n for n in _json_list(meta["param_names"]) if isinstance(n, str)]
        order = [n for n in listed if n in per] + [n for n in per if n not in set(listed)]
    params = []
    group_of = {}
    for gi, g in enumerate(groups):
        for n in g.get("params", []):
            if isinstance(n, str):
                group_of[n] = gi
    for i, name in enumerate(order):
        entries = {}
        for k, v in per[name].items():
            entries[k] = v.scalar() if v.is_scalar else v
        params.append(ParamState(i, name, group_of.get(name, 0), entries))
    for p in params:
        p.shape = _infer_shape(p.entries)
    if not groups:
        groups = [{}]
    for gi, extra in groups_tensors.items():
        while len(groups) <= gi:
            groups.append({})
        groups[gi].update(extra)
    groups = [{k: v for k, v in g.items() if k != "params"} for g in groups]
    layout = "optinspect dry-run state (.safetensors)" if meta.get("format", "").startswith("optinspect-state") \
        else "flattened optimizer state (.safetensors)"
    ls = LoadedState(path=path, layout=layout, params=params, groups=groups, names_from="file")
    if meta.get("report"):
        ls.extra["report"] = meta["report"]
    return ls


def _json_list(text: str) -> list:
    """A JSON list from safetensors metadata; anything else (or JSON nested past reason) counts as absent."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return []
    return value if isinstance(value, list) else []


def _mapped_tensor(mapped: Any, info: Any) -> MappedTensor:
    return MappedTensor(mapped, info.start, info.torch_dtype, tuple(info.shape))


def has_mapped(ls: LoadedState) -> bool:
    return any(isinstance(v, MappedTensor) for p in ls.params for v in p.entries.values())
