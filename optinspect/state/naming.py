"""Naming parameters a state file knows only by index: from a model .safetensors (by order and shape), or
from DeepSpeed pipeline layer files beside the state."""

from __future__ import annotations

import glob
import os
import re

from optinspect.state.header import HeaderError, read_header
from optinspect.state.loaded import LoadedState, StateLoadError
from optinspect.state.unpickle import safe_torch_load


def _natural(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def names_from_model(ls: LoadedState, model: str) -> None:
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


def names_from_pipeline_layers(ls: LoadedState, file: str) -> None:
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
