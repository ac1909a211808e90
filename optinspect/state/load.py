"""Find and load saved optimizer state safely, whatever wrote it, into one neutral shape.

Safety: every `.pt` is read with `torch.load(weights_only=True)` (memory-mapped when the format allows).
Harmless objects that checkpoints carry (argparse.Namespace, numpy scalars, DeepSpeed's LossScaler and
ZeroStageEnum, omegaconf containers, paths) are replaced by inert stubs through torch's own safe-globals
mechanism, and reported as skipped; any other global is refused by name. Nothing here ever unpickles with
code execution.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pickle
import re
import stat
import struct
import warnings
import zipfile
from dataclasses import dataclass, field
from typing import Any

import torch

from optinspect.specs import SHAPE_KEYS
from optinspect.state.header import HeaderError, read_header
from optinspect.state.ptindex import CorruptData, MappedTensor, Unsupported, check_extent, load_index

# globals that checkpoints carry and that hold no optimizer state: replaced by inert stubs
HARMLESS_GLOBALS = re.compile(r"""^(
    argparse\.Namespace
  | pathlib\.(Posix|Windows|Pure\w*)Path
  | numpy\.(core\.|_core\.)?multiarray\.scalar | numpy\.dtype | numpy\.dtypes\.\w+DType
  | deepspeed\.runtime\.fp16\.loss_scaler\.(Dynamic)?LossScaler
  | deepspeed\.runtime\.zero\.config\.ZeroStageEnum
  | deepspeed\.utils\.tensor_fragment\.fragment_address
  | deepspeed\.checkpoint\.\w+(\.\w+)*
  | omegaconf\.(listconfig\.ListConfig|dictconfig\.DictConfig|base\.(ContainerMetadata|Metadata)|nodes\.\w+)
  | typing\.Any
  | collections\.defaultdict
  | torch\.torch_version\.TorchVersion
  | transformers\.trainer_utils\.\w+
  | enum\.Enum
)$""", re.X)
TORCHAO = re.compile(r"^torchao\.")
OPTIMIZER_KEYS = ("optimizer", "optimizer_state_dict", "optim", "optimizer_state", "opt", "optimizer_states")


class StateLoadError(Exception):
    """The input cannot be read as optimizer state; the message says why (exit 2)."""


class _Stub:
    """Inert stand-in for a harmless non-tensor object: keeps its constructor arguments and state."""

    _name = "object"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.kwargs = kwargs

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<skipped {self._name}>"


def _stub_for(name: str) -> type:
    return type(name.rsplit(".", 1)[-1], (_Stub,), {"_name": name})


@dataclass
class ParamState:
    index: int
    name: str
    group: int
    entries: dict[str, Any]  # key -> tensor or scalar (bitsandbytes' nested quant state flattened)
    shape: tuple[int, ...] | None = None


@dataclass
class LoadedState:
    path: str
    layout: str
    params: list[ParamState]
    groups: list[dict[str, Any]]
    source_file: str = ""
    key_used: str | None = None
    skipped: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    names_from: str = "index"
    extra: dict[str, Any] = field(default_factory=dict)
    mapped: bool = False  # tensors are views of a read-only file mapping (their pages may be released)

    @property
    def tensor_bytes(self) -> int:
        """Bytes of every state tensor (mapped lazily or not): the total a progress bar counts towards."""
        return sum(int(v.nbytes) if isinstance(v, MappedTensor) else v.numel() * v.element_size()
                   for p in self.params for v in p.entries.values()
                   if isinstance(v, torch.Tensor) or isinstance(v, MappedTensor))


# -- reading files -----------------------------------------------------------------------------------
def check_regular(path: str) -> int:
    """The size of `path` if it is a regular file (links followed); a FIFO, device or socket is refused by name
    before anything opens it (opening a FIFO blocks, and a device never ends)."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise StateLoadError(f"{path}: cannot read ({e.strerror or e})") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode) else \
            "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "a socket" \
            if stat.S_ISSOCK(st.st_mode) else "not a regular file"
        raise StateLoadError(f"{path}: {kind}, not a file; only regular files are read")
    return st.st_size


def read_small(path: str, limit: int) -> bytes:
    """A small regular file (DeepSpeed's `latest`), read up to `limit` bytes whatever its size claims."""
    check_regular(path)
    with open(path, "rb") as fh:
        return fh.read(limit)


def safe_torch_load(path: str) -> tuple[Any, list[str]]:
    """torch.load(weights_only=True), with harmless globals stubbed; returns (object, skipped global names)."""
    check_regular(path)
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except OSError as e:
        raise StateLoadError(f"{path}: cannot read ({e.strerror or e})") from None
    if not magic:
        raise StateLoadError(f"{path}: empty file")
    is_zip = magic == b"PK\x03\x04"
    if not is_zip and magic[:1] != b"\x80":  # torch.save writes a zip, or (legacy) a pickle of protocol >= 2
        raise StateLoadError(f"{path}: not a PyTorch checkpoint (neither a torch.save zip nor a pickle) and not "
                             f"safetensors; it starts with {magic!r}")
    if is_zip:
        try:
            return load_index(path, HARMLESS_GLOBALS)
        except Unsupported:
            pass  # torch's own weights-only loader decides (and refuses what must be refused)
        except CorruptData as e:
            raise StateLoadError(f"{path}: {e}") from None
        try:  # the central directory sits at the end: a truncated file fails here, without reading the data
            with zipfile.ZipFile(path) as z:
                z.infolist()
        except (zipfile.BadZipFile, ValueError, EOFError, struct.error, IndexError, NotImplementedError,
                OverflowError) as e:  # zipfile's errors on a mangled directory (names that are not UTF-8 ...)
            raise StateLoadError(f"{path}: truncated or corrupt torch file ({type(e).__name__}: {e})") from None
    skipped: list[str] = []
    try:
        return _checked(path, _load(path, is_zip, [])), skipped
    except pickle.UnpicklingError as e:
        names = _unsafe_globals(path, is_zip, str(e))
    refused = [n for n in names if not HARMLESS_GLOBALS.match(n)]
    ao = [n for n in refused if TORCHAO.match(n)]
    if ao and len(ao) == len(refused):
        try:
            import torchao.optim  # noqa: F401 - registers its tensor subclasses as safe globals
        except ImportError:
            raise StateLoadError(f"{path}: holds torchao optimizer-state tensor subclasses ({', '.join(ao[:3])}); "
                                 "reading them needs torchao (pip install torchao)") from None
        refused = []
    if refused:
        raise StateLoadError(f"{path}: refused: loading it would need the global(s) {', '.join(refused)}, which "
                             "could execute code; optinspect never unpickles those")
    stubs = [(_stub_for(n), n) for n in names if HARMLESS_GLOBALS.match(n)]
    try:
        obj = _load(path, is_zip, stubs)
    except pickle.UnpicklingError as e:
        raise StateLoadError(f"{path}: refused: {_first_line(str(e))}") from None
    return _checked(path, obj), [n for _, n in stubs]


def _checked(path: str, obj: Any) -> Any:
    """What torch.load built, held to the reader's bounds: no tensor may claim more elements than its storage
    holds (a stride-0 view of a few bytes would otherwise be streamed as a huge tensor)."""
    seen = 0
    stack = [(obj, 0)]
    storages: dict[int, int] = {}
    while stack:
        node, depth = stack.pop()
        seen += 1
        if seen > 1_000_000 or depth > 200:
            raise StateLoadError(f"{path}: the object graph is too large or too deep to be optimizer state")
        if isinstance(node, torch.Tensor):
            storages[node.untyped_storage().data_ptr()] = node.untyped_storage().nbytes()
            storage = node.untyped_storage().nbytes() // max(1, node.element_size())
            try:
                check_extent(tuple(node.shape), tuple(node.stride()), node.storage_offset(), storage)
            except CorruptData as e:
                raise StateLoadError(f"{path}: {e}") from None
        elif isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, (list, tuple)):
            stack.extend((v, depth + 1) for v in node)
    claimed, size = sum(storages.values()), os.path.getsize(path)
    if claimed > size:  # every byte of every storage is in the file (stored, never compressed)
        raise StateLoadError(f"{path}: its tensors claim {claimed:,} bytes but the file holds {size:,} "
                             "(truncated or corrupt)")
    return obj


def _has_mapped(ls: LoadedState) -> bool:
    return any(isinstance(v, MappedTensor) for p in ls.params for v in p.entries.values())


def _looks_like_safetensors(path: str) -> bool:
    """A safetensors file under another name: an 8-byte little-endian header length, then a JSON object."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(9)
            size = os.fstat(fh.fileno()).st_size
    except OSError:
        return False  # the torch path reports the error
    return len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") <= size - 8


def _is_zip(path: str) -> bool:
    with open(path, "rb") as fh:
        return fh.read(4) == b"PK\x03\x04"


def _first_line(msg: str) -> str:
    for line in msg.splitlines():
        if "GLOBAL" in line or "Unsupported" in line:
            return line.strip()
    return msg.splitlines()[0] if msg else "weights-only load failed"


def _load(path: str, is_zip: bool, stubs: list) -> Any:
    ctx = torch.serialization.safe_globals(stubs) if stubs else contextlib.nullcontext()
    with ctx, warnings.catch_warnings():  # torch warns about odd protocols and such: our error line says it all
        warnings.simplefilter("ignore")
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
        except pickle.UnpicklingError:
            raise
        except (RuntimeError, EOFError, ValueError, OSError, KeyError, IndexError, TypeError, MemoryError,
                AssertionError, AttributeError, OverflowError, RecursionError, struct.error,
                zipfile.BadZipFile) as e:
            raise StateLoadError(f"{path}: truncated or corrupt torch file ({_first_line(str(e))})") from None


def _unsafe_globals(path: str, is_zip: bool, message: str) -> list[str]:
    if is_zip:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
        except Exception:  # noqa: BLE001 - fall back to what torch's message names
            pass
    found = re.findall(r"GLOBAL ([\w.]+) was not an allowed global", message)
    found += re.findall(r"Unsupported global: GLOBAL ([\w.]+)", message)
    if not found:
        raise StateLoadError(f"{path}: refused: {_first_line(message)}")
    return sorted(set(found))


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


def _flatten_entries(st: dict) -> dict[str, Any]:
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
    for gi, g in enumerate(sd["param_groups"]):
        groups.append({k: v for k, v in g.items() if k != "params"})
        for idx in g.get("params", []):
            try:
                st = sd["state"].get(idx, sd["state"].get(str(idx), {}))
            except TypeError:  # an unhashable parameter id
                raise StateLoadError(f"{path}: a parameter id of type {type(idx).__name__}") from None
            params.append(ParamState(int(idx) if isinstance(idx, int) else len(params), "", gi,
                                     _flatten_entries(st) if isinstance(st, dict) else {}))
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
        p.shape = _infer_shape(p.entries)
    return LoadedState(path=path, layout=layout, params=params, groups=groups, names_from=names_from)


def _tensorish(v: Any) -> bool:
    return isinstance(v, (torch.Tensor, MappedTensor))


def _infer_shape(entries: dict) -> tuple[int, ...] | None:
    for key in SHAPE_KEYS:
        v = entries.get(key)
        if _tensorish(v) and v.ndim >= 1:
            return tuple(v.shape)
    row, col = entries.get("exp_avg_sq_row"), entries.get("exp_avg_sq_col")
    if _tensorish(row) and _tensorish(col):
        return tuple(row.shape) + (col.shape[-1],)
    return None


def _names_from_param_shapes(ps: Any) -> list[str] | None:
    """DeepSpeed's `param_shapes`: a list (per group) of ordered name -> shape maps, or one map."""
    if isinstance(ps, dict):
        ps = [ps]
    if isinstance(ps, list) and all(isinstance(d, dict) for d in ps):
        return [str(n) for d in ps for n in d]
    return None


def _zero_stage(v: Any) -> str:
    if isinstance(v, int):
        return str(v)
    args = getattr(v, "args", ())
    return str(args[0]) if args and isinstance(args[0], int) else "?"


def interpret(obj: Any, path: str) -> LoadedState:
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
            if isinstance(inner, dict) and "zero_stage" in inner and _is_state_dict(inner.get("optimizer_state_dict")):
                stage = _zero_stage(inner["zero_stage"])
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


# -- safetensors -------------------------------------------------------------------------------------
def load_safetensors(path: str) -> LoadedState:
    try:
        header = read_header(path)
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


def materialize(v: Any) -> Any:
    """A real tensor for a mapped one (read fully: only for small tensors or diffs); anything else as is."""
    return v.load() if isinstance(v, MappedTensor) else v


def _mapped_tensor(mapped: Any, info: Any) -> MappedTensor:
    return MappedTensor(mapped, info.start, getattr(torch, info.torch_dtype), tuple(info.shape))


# -- paths -------------------------------------------------------------------------------------------
def resolve_path(path: str, depth: int = 0) -> tuple[str, str]:
    """A file, or the optimizer file inside a checkpoint folder; returns (file, how it was found)."""
    if not os.path.isdir(path):
        if not os.path.lexists(path):
            raise StateLoadError(f"{path}: no such file or folder")
        check_regular(path)
        return path, "file"
    if depth > 4:
        raise StateLoadError(f"{path}: checkpoint folders nest deeper than a checkpoint layout does")
    latest = os.path.join(path, "latest")
    if os.path.lexists(latest) and not os.path.isdir(latest):
        tag = read_small(latest, 256).decode("utf-8", "replace").strip()
        # a tag names a child folder (global_step1000), never `.`, `..` or a path elsewhere
        if tag and tag not in (".", "..") and os.sep not in tag and "/" not in tag \
                and os.path.isdir(os.path.join(path, tag)):
            f, how = resolve_path(os.path.join(path, tag), depth + 1)
            return f, f"DeepSpeed `latest` -> {tag}/{how}"
    steps = sorted(glob.glob(os.path.join(path, "global_step*")), key=lambda p: int(re.sub(r"\D", "", p[-12:]) or 0))
    candidates = ["mp_rank_00_model_states.pt", "optimizer.pt", "optimizer.bin",
                  os.path.join("optimizer", "optimizer.pt")]
    for c in candidates:
        if os.path.lexists(os.path.join(path, c)) and not os.path.isdir(os.path.join(path, c)):
            check_regular(os.path.join(path, c))
            return os.path.join(path, c), c
    zero = sorted(glob.glob(os.path.join(path, "*optim_states.pt")))
    if zero:
        return zero[0], os.path.basename(zero[0]) + (f" (1 of {len(zero)} ZeRO partitions)" if len(zero) > 1 else "")
    if steps:
        f, how = resolve_path(steps[-1], depth + 1)
        return f, f"{os.path.basename(steps[-1])}/{how}"
    found = sorted(glob.glob(os.path.join(path, "*.pt")) + glob.glob(os.path.join(path, "*.safetensors")))
    if len(found) == 1:
        return found[0], os.path.basename(found[0])
    raise StateLoadError(f"{path}: no optimizer file found in this folder (looked for latest, global_step*/, "
                         "mp_rank_00_model_states.pt, *optim_states.pt, optimizer.pt, optimizer.bin)")


def load_state(path: str, model: str | None = None) -> LoadedState:
    """Read any supported optimizer state; `model` (safetensors) names parameters by order and shape."""
    file, how = resolve_path(path)
    if file.endswith(".safetensors") or _looks_like_safetensors(file):
        ls = load_safetensors(file)
    else:
        obj, skipped = safe_torch_load(file)
        ls = interpret(obj, path)
        ls.skipped = skipped
        ls.mapped = _is_zip(file) and not _has_mapped(ls)
        if skipped:
            ls.warnings.append(f"skipped non-tensor objects: {', '.join(skipped)}")
    ls.path = path
    ls.source_file = file
    if how != "file":
        ls.layout = f"{how}: {ls.layout}"
    if model:
        _names_from_model(ls, model)
    elif ls.names_from == "index" and "DeepSpeed" in ls.layout:
        _names_from_pipeline_layers(ls, file)
    return ls


def _natural(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _names_from_model(ls: LoadedState, model: str) -> None:
    """Name state entries after a model file's tensors (see `assign_names`)."""
    try:
        header = read_header(model)
    except (OSError, HeaderError) as e:
        raise StateLoadError(f"--model: {e}") from None
    floats = [t for t in header.tensors if t.dtype in ("F32", "F16", "BF16", "F64")]
    assign_names(ls, [(t.name, tuple(t.shape)) for t in sorted(floats, key=lambda t: _natural(t.name))],
                 "--model", "model file (shape, then order)")


def assign_names(ls: LoadedState, candidates: list[tuple[str, tuple]], what: str, source: str) -> None:
    """Match state entries to named tensors by shape, in the candidates' order.

    Unique shapes are certain; tensors that share a shape are assigned in order and may be swapped, which is
    reported. Frozen tensors (no state) are skipped because no state entry asks for their shape.
    """
    pool: dict[tuple, list[str]] = {}
    for name, shape in candidates:
        pool.setdefault(tuple(shape), []).append(name)
    wanted: dict[tuple, int] = {}
    for p in ls.params:
        if p.shape is not None:
            wanted[tuple(p.shape)] = wanted.get(tuple(p.shape), 0) + 1
    unmatched, ambiguous = 0, 0
    for p in ls.params:
        names = pool.get(tuple(p.shape)) if p.shape is not None else None
        if not names:
            unmatched += 1
            continue
        if len(names) > 1 or wanted.get(tuple(p.shape), 0) > 1:
            ambiguous += 1
        p.name = names.pop(0)
    if unmatched:
        ls.warnings.append(f"{what}: {unmatched} of {len(ls.params)} state entries found no tensor of their shape; "
                           "those keep their index names")
    if ambiguous:
        ls.warnings.append(f"{what}: {ambiguous} state entries share their shape with other tensors; they were named "
                           "in order and may be swapped")
    ls.names_from = source


def _names_from_pipeline_layers(ls: LoadedState, file: str) -> None:
    """DeepSpeed pipeline checkpoints keep parameter names and shapes only in their layer files."""
    folder = os.path.dirname(file)
    layers = glob.glob(os.path.join(folder, "layer_*-model_states.pt")) + \
        glob.glob(os.path.join(folder, "layer_*-model_*-model_states.pt"))
    if not layers:
        return
    candidates: list[tuple[str, tuple]] = []
    for path in sorted(set(layers), key=lambda f: _natural(os.path.basename(f))):
        try:
            obj, _ = safe_torch_load(path)
        except StateLoadError as e:
            ls.warnings.append(f"layer file skipped: {e}")
            continue
        layer = os.path.basename(path).split("-", 1)[0]
        if isinstance(obj, dict):
            for key, v in obj.items():
                if hasattr(v, "shape"):
                    candidates.append((f"{layer}.{key}", tuple(v.shape)))
    if candidates:
        assign_names(ls, candidates, "layer files", "DeepSpeed layer files (shape, then order)")
