"""DeepSpeed ZeRO checkpoints (stages 1, 2 and 3): per-parameter, named state rebuilt from every rank's shard.

ZeRO keeps the wrapped optimizer's state flat: each data-parallel rank holds one contiguous partition of every
param group's flattened parameters, and its `*_optim_states.pt` file holds the moments over that partition. The
names and shapes, in flat order, are the `param_shapes` of the model-states file. Stage 1/2: a group's flat
vector is the ranks' partitions one after the other (each moment cut to the rank's fp32 partition: the last
rank's carries padding), and the parameters follow each other in it (plus their alignment padding). Stage 3:
every parameter is split over the ranks by itself, ceil(numel / ranks) elements each, in one vector per rank
across all groups.

Nothing is concatenated in memory: each parameter's moment is a `JoinedTensor`, the list of the pieces of the
rank files it is made of, read chunk by chunk like any mapped tensor.
"""

from __future__ import annotations

import glob
import math
import os
import re
from typing import TYPE_CHECKING, Any

from optinspect.state.loaded import LoadedState, ParamState, StateLoadError
from optinspect.state.mapped import CorruptData, MappedTensor

if TYPE_CHECKING:
    import torch

OPTIM_FILE = re.compile(r"^(?:bf16_|fp16_)?zero_pp_rank_(\d+)_mp_rank_\d+_optim_states\.pt$")
MOMENT_KEYS = ("exp_avg", "exp_avg_sq", "momentum_buffer", "max_exp_avg_sq")


def _numel(t: Any) -> int:
    return t.numel if isinstance(t, MappedTensor) else t.numel()


def _read(t: Any, start: int, count: int) -> torch.Tensor:
    return t.view(start, count) if isinstance(t, MappedTensor) else t.reshape(-1)[start:start + count]


class JoinedTensor(MappedTensor):
    """A tensor made of pieces of other (flat) tensors: [(source, start, count), ...] in order."""

    __slots__ = ("parts",)

    def __init__(self, parts: list[tuple[Any, int, int]], shape: tuple[int, ...], dtype: torch.dtype):
        super().__init__(None, 0, dtype, shape)
        if sum(c for _, _, c in parts) != self.numel:
            raise CorruptData("the ranks' pieces of a parameter do not add up to its shape")
        self.parts = parts

    @property
    def contiguous(self) -> bool:
        return True

    def _pieces(self, start: int, count: int):
        pos = 0
        for src, s, c in self.parts:
            lo, hi = max(start, pos), min(start + count, pos + c)
            if lo < hi:
                yield src, s + lo - pos, hi - lo
            pos += c
            if pos >= start + count:
                break

    def view(self, start: int, count: int) -> torch.Tensor:
        import torch

        pieces = [_read(src, s, c) for src, s, c in self._pieces(start, count)]
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces) if pieces else torch.empty(0, dtype=self.dtype)

    def release(self, start: int, count: int) -> None:
        for src, s, c in self._pieces(start, count):
            if isinstance(src, MappedTensor):
                src.release(s, c)

    def load(self) -> torch.Tensor:
        return self.view(0, self.numel).clone().reshape(self.shape)


def zero_files(folder: str) -> list[str]:
    """The optimizer-state files of a ZeRO folder, in rank order (by number: rank 10 after rank 9)."""
    found = [(int(m.group(1)), os.path.join(folder, n)) for n in os.listdir(folder)
             if (m := OPTIM_FILE.match(n))]
    return [p for _, p in sorted(found)]


def _slices(sources: list[tuple[Any, int]], start: int, count: int) -> list[tuple[Any, int, int]]:
    """Pieces [start, start + count) of the concatenation of `sources` [(tensor, length), ...]."""
    out, pos = [], 0
    for src, length in sources:
        lo, hi = max(start, pos), min(start + count, pos + length)
        if lo < hi:
            out.append((src, lo - pos, hi - lo))
        pos += length
    if sum(c for _, _, c in out) != count:
        raise CorruptData("the ranks' partitions are shorter than the parameters they should hold")
    return out


def load_zero(folder: str, model_states: str) -> LoadedState:
    from optinspect.state.layouts import zero_stage
    from optinspect.state.unpickle import safe_torch_load

    files = zero_files(folder)
    if not files:
        raise StateLoadError(f"{folder}: no zero_pp_rank_*_optim_states.pt files")
    meta, _ = safe_torch_load(model_states)
    shapes = meta.get("param_shapes") if isinstance(meta, dict) else None
    if isinstance(shapes, dict):
        shapes = [shapes]
    if not isinstance(shapes, list) or not all(isinstance(g, dict) for g in shapes):
        raise StateLoadError(f"{model_states}: no param_shapes to name the flat ZeRO state by")
    ranks = []
    for f in files:
        obj, _ = safe_torch_load(f)
        osd = obj.get("optimizer_state_dict") if isinstance(obj, dict) else None
        if not isinstance(osd, dict):
            raise StateLoadError(f"{f}: not a ZeRO optimizer-states file (no optimizer_state_dict)")
        ranks.append(osd)
    stage = zero_stage(ranks[0].get("zero_stage"))
    world = len(ranks)
    if stage == "3":
        params, groups = _stage3(ranks, shapes, world)
    elif stage in ("1", "2"):
        params, groups = _stage12(ranks, shapes, files)
    else:
        raise StateLoadError(f"{folder}: ZeRO stage {stage} optimizer states are not read")
    ls = LoadedState(path=folder, layout=f"DeepSpeed ZeRO stage {stage}, {world} rank{'s' * (world != 1)} "
                     "(per-parameter state rebuilt from the partitions)", params=params, groups=groups,
                     names_from="param_shapes")
    ls.mapped = True
    return ls


def _shape(s: Any) -> tuple[int, ...]:
    if not isinstance(s, (tuple, list)) or not all(type(d) is int and d >= 0 for d in s):
        raise CorruptData("a malformed shape in param_shapes")
    return tuple(s)


def _stage12(ranks: list[dict], shapes: list[dict], files: list[str]):
    bases = [r.get("base_optimizer_state") for r in ranks]
    if not all(isinstance(b, dict) and isinstance(b.get("state"), dict) for b in bases):
        raise StateLoadError(f"{files[0]}: an elastic ZeRO checkpoint (per-group state lists): not read yet")
    paddings = ranks[0].get("param_alignment_paddings") or [[0] * len(g) for g in shapes]
    params, index = [], 0
    for g, named in enumerate(shapes):
        lengths = []
        for r, rank in enumerate(ranks):
            parts = rank.get("single_partition_of_fp32_groups")
            if not isinstance(parts, list) or g >= len(parts):
                raise CorruptData(f"{files[r]}: no fp32 partition for param group {g}")
            lengths.append(_numel(parts[g]))
        states = [b["state"].get(g, b["state"].get(str(g), {})) for b in bases]
        keys = [k for k in MOMENT_KEYS if all(k in s for s in states)]
        off = 0
        pads = paddings[g] if g < len(paddings) else [0] * len(named)
        for (name, shape), pad in zip(named.items(), list(pads) + [0] * len(named), strict=False):
            shape = _shape(shape)
            n = math.prod(shape)
            entries: dict[str, Any] = {}
            for k in keys:
                sources = [(s[k], length) for s, length in zip(states, lengths, strict=True)]
                entries[k] = JoinedTensor(_slices(sources, off, n), shape, states[0][k].dtype)
            if "step" in states[0]:
                entries["step"] = states[0]["step"]
            params.append(ParamState(index, str(name), g, entries, shape))
            index += 1
            off += n + (pad if isinstance(pad, int) else 0)
    hyper = bases[0].get("param_groups") or [{}]
    return params, [{k: v for k, v in h.items() if k != "params"} for h in hyper]


def _stage3(ranks: list[dict], shapes: list[dict], world: int):
    inner = [r.get("optimizer_state_dict") for r in ranks]
    if not all(isinstance(i, dict) and isinstance(i.get("state"), dict) for i in inner):
        raise StateLoadError("a ZeRO-3 optimizer-states file without its inner state_dict")
    n_groups = len(inner[0].get("param_groups") or [None])
    keys = [k for k in MOMENT_KEYS if all(k in i["state"].get(0, {}) for i in inner)]
    flat = {k: [[(i["state"][g][k], _numel(i["state"][g][k])) for g in range(n_groups) if g in i["state"]]
                for i in inner] for k in keys}
    params, index, off = [], 0, 0
    for g, named in enumerate(shapes):
        for name, shape in named.items():
            shape = _shape(shape)
            n = math.prod(shape)
            k_each = math.ceil(n / world)
            entries: dict[str, Any] = {}
            for key in keys:
                parts: list[tuple[Any, int, int]] = []
                for r in range(world):
                    parts += _slices(flat[key][r], off, k_each)
                # the last rank's piece is padded: keep exactly n elements
                total, kept = 0, []
                for src, s, c in parts:
                    take = min(c, n - total)
                    if take > 0:
                        kept.append((src, s, take))
                    total += take
                entries[key] = JoinedTensor(kept, shape, inner[0]["state"][0][key].dtype)
            if "step" in inner[0]["state"].get(0, {}):
                entries["step"] = inner[0]["state"][0]["step"]
            params.append(ParamState(index, str(name), g, entries, shape))
            index += 1
            off += k_each
    hyper = inner[0].get("param_groups") or [{}]
    return params, [{k: v for k, v in h.items() if k != "params"} for h in hyper]


def model_states_file(folder: str) -> str | None:
    """The file holding param_shapes: mp_rank_00_model_states.pt (stages 0-2) or rank 0's (stage 3)."""
    for pattern in ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt",
                    "*mp_rank_00_model_states.pt"):
        found = sorted(glob.glob(os.path.join(folder, pattern)))
        if found:
            return found[0]
    return None
