"""Hand-made checkpoint files of the kind an attacker or a broken disk produces: torch zips whose pickle says
what we choose (shapes, strides, storage sizes), compressed members, billion-laughs values, odd safetensors."""

from __future__ import annotations

import io
import json
import pickle
import struct
import zipfile

import torch


class _Storage:
    def __init__(self, key: str, numel: int, stype=torch.FloatStorage) -> None:
        self.key, self.numel, self.stype = key, numel, stype


class _Tensor:
    """Pickles as torch.save's `_rebuild_tensor_v2(storage, offset, shape, stride, ...)` with the values given."""

    def __init__(self, storage: _Storage, offset, shape, stride) -> None:
        self.args = (storage, offset, shape, stride, False, {})

    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, self.args


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            return ("storage", obj.stype, obj.key, "cpu", obj.numel)
        return None


def torch_zip(path, obj, storages: dict[str, bytes], *, compress: bool = False) -> None:
    """A torch.save-style zip (archive/data.pkl, archive/data/<key>) holding `obj` as pickled here."""
    buf = io.BytesIO()
    _Pickler(buf, protocol=2).dump(obj)
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", buf.getvalue())
        z.writestr("archive/byteorder", "little")
        for key, data in storages.items():
            z.writestr(zipfile.ZipInfo(f"archive/data/{key}"), data, compress_type=method)
        z.writestr("archive/version", "3\n")


def state_with(tensor, **group) -> dict:
    return {"state": {0: {"step": 3, "exp_avg": tensor, "exp_avg_sq": tensor}},
            "param_groups": [{"params": [0], "lr": 1e-3, **group}]}


def laughs(levels: int = 9, width: int = 10) -> list:
    """`width ** levels` leaves in a few hundred pickled bytes: every level references the one below."""
    x: list = ["lol"] * width
    for _ in range(levels):
        x = [x] * width
    return x


def safetensors_bytes(header: dict, data: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data
