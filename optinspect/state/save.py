"""Write an optimizer state (plus a report) as .pt or .safetensors, atomically, never over a user's file."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import signal
import tempfile
import threading

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
    """Write to a temporary file in the same folder, flush it to disk, then publish it under `path`.

    Without `force` the publish is a hard link, which fails if `path` exists, so of two runs saving to one name
    one wins and the other says so (never a silent replacement); with `force` it is a rename over the old file.
    SIGTERM and SIGINT during the write remove the temporary file; the file gets the mode the umask gives."""
    if os.path.isdir(path):
        raise SaveError(f"{path} is a directory")
    if os.path.lexists(path) and not force:
        raise SaveError(f"{path} exists; pass --force to overwrite it")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise SaveError(f"folder {folder} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=".optinspect-", suffix=".tmp", dir=folder)
    with _signals_raise():
        try:
            with os.fdopen(fd, "wb") as fh:
                if path.endswith(".safetensors"):
                    tensors, meta = flatten_state(state_dict, names)
                    metadata = {"format": FORMAT, "optimizer_type": optimizer_type,
                                "param_groups": json.dumps(_json_safe(meta["param_groups"])),
                                "param_names": json.dumps(names), "report": json.dumps(_json_safe(report))}
                    write_safetensors(fh, tensors, metadata)
                else:
                    torch.save({"format": FORMAT, "optimizer_type": optimizer_type, "optimizer": state_dict,
                                "param_names": names, "report": json.dumps(_json_safe(report))}, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o666 & ~_umask())
            _publish(tmp, path, force)
            _fsync_dir(folder)
        except (OSError, RuntimeError) as e:  # torch reports a full disk as RuntimeError
            raise SaveError(f"cannot write {path}: {_reason(e)}") from None
        finally:
            if os.path.lexists(tmp):
                os.unlink(tmp)
    return path


def _publish(tmp: str, path: str, force: bool) -> None:
    if force:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # atomic and exclusive: fails when `path` appeared meanwhile
    except FileExistsError:
        raise SaveError(f"{path} exists (written by something else meanwhile); pass --force to overwrite it") \
            from None
    except OSError:  # a filesystem without hard links: exclusive create, then copy the bytes in
        with open(path, "xb") as out, open(tmp, "rb") as src:
            while chunk := src.read(1 << 20):
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())


def _reason(e: BaseException) -> str:
    text = str(e)
    if getattr(e, "errno", None) == errno.ENOSPC or "No space left" in text or "file write failed" in text:
        return "no space left on the device"
    if getattr(e, "strerror", None):
        return e.strerror
    return text.splitlines()[0] if text else type(e).__name__


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def _signals_raise():
    """SIGTERM (and SIGINT) raise while saving, so the cleanup above runs instead of the process just ending."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    old = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


SAFETENSORS_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
                      torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
                      torch.uint8: "U8", torch.bool: "BOOL"}


def write_safetensors(fh, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """The safetensors format written directly (8-byte header length, JSON header padded to 8 bytes, raw
    little-endian data): safetensors' own writer needs numpy, which optinspect does not install."""
    header: dict = {"__metadata__": metadata}
    order = sorted(tensors)
    offset = 0
    for name in order:
        t = tensors[name]
        if t.dtype not in SAFETENSORS_DTYPES:
            raise SaveError(f"{name}: dtype {t.dtype} has no safetensors name")
        nbytes = t.numel() * t.element_size()
        header[name] = {"dtype": SAFETENSORS_DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    fh.write(len(raw).to_bytes(8, "little"))
    fh.write(raw)
    for name in order:
        t = tensors[name].detach().to("cpu").contiguous()
        if t.numel():
            fh.write((ctypes.c_char * (t.numel() * t.element_size())).from_address(t.data_ptr()))
