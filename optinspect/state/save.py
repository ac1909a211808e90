"""Write an optimizer state (plus a report) as .pt or .safetensors, atomically, never over a user's file."""

from __future__ import annotations

import json
import os
import tempfile

import torch

FORMAT = "optinspect-state/1"


class SaveError(Exception):
    pass


def flatten_state(state_dict: dict, names: list[str]) -> tuple[dict[str, torch.Tensor], dict]:
    """`state.<param name>.<key>` tensors (nested bitsandbytes quant state flattened into its keys) and a JSON-able
    description of the groups and of scalar state."""
    tensors: dict[str, torch.Tensor] = {}
    index_to_name = {}
    order = [i for g in state_dict["param_groups"] for i in g["params"]]
    for pos, idx in enumerate(order):
        index_to_name[idx] = names[pos] if pos < len(names) else f"{pos}"
    shared: dict[int, str] = {}
    for idx, st in state_dict["state"].items():
        name = index_to_name.get(idx, str(idx))
        flat = dict(st)
        nested = flat.pop("__bnb_optimizer_quant_state__", None) or {}
        flat.update(nested)
        for key, v in flat.items():
            if isinstance(v, torch.Tensor):
                t = v.detach().cpu()
                ptr = t.untyped_storage().data_ptr()
                if key.startswith("qmap") and ptr in shared:  # shared maps: stored once per name, cloned
                    t = t.clone()
                shared.setdefault(ptr, key)
                tensors[f"state.{name}.{key}"] = t.contiguous()
            elif isinstance(v, (bool, int, float)):
                tensors[f"state.{name}.{key}"] = torch.tensor(v, dtype=torch.float64 if isinstance(v, float)
                                                              else torch.int64)
    groups = []
    for i, g in enumerate(state_dict["param_groups"]):
        out = {}
        for k, v in g.items():
            if k == "params":
                out[k] = [index_to_name.get(j, str(j)) for j in v]
            elif isinstance(v, torch.Tensor):
                tensors[f"group.{i}.{k}"] = v.detach().cpu().contiguous()
            elif isinstance(v, (list, tuple)):
                out[k] = [x if isinstance(x, (int, float, bool, str)) or x is None else str(x) for x in v]
            elif isinstance(v, (int, float, bool, str)) or v is None:
                out[k] = v if not (isinstance(v, float) and v != v) else "nan"
            else:
                out[k] = str(v)
        groups.append(out)
    return tensors, {"param_groups": groups}


def _json_safe(obj):
    import math

    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def save(path: str, state_dict: dict, names: list[str], report: dict, *, optimizer_type: str,
         force: bool = False) -> str:
    """Write to a temporary file in the same folder, then rename over `path` (refused if it exists unless force)."""
    if os.path.isdir(path):
        raise SaveError(f"{path} is a directory")
    if os.path.exists(path) and not force:
        raise SaveError(f"{path} exists; pass --force to overwrite it")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise SaveError(f"folder {folder} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=".optinspect-", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import save_file

            tensors, meta = flatten_state(state_dict, names)
            metadata = {"format": FORMAT, "optimizer_type": optimizer_type,
                        "param_groups": json.dumps(_json_safe(meta["param_groups"])),
                        "param_names": json.dumps(names), "report": json.dumps(_json_safe(report))}
            save_file(tensors, tmp, metadata=metadata)
        else:
            torch.save({"format": FORMAT, "optimizer_type": optimizer_type, "optimizer": state_dict,
                        "param_names": names, "report": json.dumps(_json_safe(report))}, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
