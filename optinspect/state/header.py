"""safetensors headers without torch: names, dtypes, shapes and offsets, with sizes checked before use.

A header is 8 bytes of little-endian length, then JSON. A hostile file can claim any length or any tensor
size, so everything is validated against the real file size before anything is allocated or mapped.
"""

from __future__ import annotations

import json
import math
import os
import stat
import struct
from dataclasses import dataclass

from optinspect.state.limits import too_many_tensors

MAX_HEADER = 100 * 1024 * 1024  # the format's own limit
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
               "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1, "C64": 8}
TORCH_NAMES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64", "I32": "int32",
               "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool", "U16": "uint16", "U32": "uint32",
               "U64": "uint64", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "F8_E8M0": "float8_e8m0fnu",
               "C64": "complex64"}


class HeaderError(ValueError):
    """The file is not a valid safetensors file; the message says why and where."""


@dataclass(frozen=True, slots=True)
class TensorInfo:
    name: str
    dtype: str  # safetensors spelling (F32, BF16, ...)
    shape: tuple[int, ...]
    start: int  # absolute byte offsets in the file
    end: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.end - self.start

    @property
    def torch_dtype(self) -> str:
        return TORCH_NAMES.get(self.dtype, self.dtype.lower())


@dataclass(frozen=True)
class Header:
    path: str
    tensors: tuple[TensorInfo, ...]
    metadata: dict
    data_start: int
    file_size: int


MAX_INT = 1 << 62  # shapes and offsets beyond any real file; larger numbers are corrupt, not big


def _index(value: object) -> bool:
    return type(value) is int and 0 <= value < MAX_INT


def read_header(path: str, max_tensors: int | None = None) -> Header:
    """The header, checked against the file; more than `max_tensors` entries is refused before parsing."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise HeaderError(f"{path}: not a regular file (a FIFO, device or socket is never read)")
    size = st.st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise HeaderError(f"{path}: {size} bytes, too short for a safetensors header")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER or 8 + n > size:
            raise HeaderError(f"{path}: header claims {n} bytes but the file has {size}")
        raw = fh.read(n)
    if max_tensors is not None:  # counted before any object is made
        count = raw.count(b'"data_offsets"')
        if count > max_tensors:
            raise HeaderError(too_many_tensors(path, f"{count:,}", max_tensors))
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise HeaderError(f"{path}: header is not valid JSON ({e})") from None
    except (RecursionError, ValueError):  # nesting past reason, or an integer of thousands of digits
        raise HeaderError(f"{path}: header JSON nests too deep or holds numbers too large to be a header") from None
    if not isinstance(doc, dict):
        raise HeaderError(f"{path}: header is not a JSON object")
    metadata = doc.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise HeaderError(f"{path}: __metadata__ is not an object of strings")
    data_start = 8 + n
    tensors = []
    for name, info in doc.items():
        try:
            dtype, shape, (a, b) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise HeaderError(f"{path}: tensor {name[:80]!r} has a malformed entry") from None
        if not all(_index(v) for v in (*shape, a, b)) or len(shape) > 64:
            raise HeaderError(f"{path}: tensor {name[:80]!r} has a shape or offsets that are not non-negative "
                              "integers of a real file's size")
        if not isinstance(dtype, str) or dtype not in DTYPE_BYTES:
            raise HeaderError(f"{path}: tensor {name[:80]!r} has unknown dtype {str(dtype)[:40]!r}")
        if any(s < 0 for s in shape) or not (0 <= a <= b):
            raise HeaderError(f"{path}: tensor {name!r} has a negative shape or offsets")
        want = math.prod(shape) * DTYPE_BYTES[dtype]
        if b - a != want:
            raise HeaderError(f"{path}: tensor {name!r} {dtype}{list(shape)} needs {want} bytes, offsets give {b - a}")
        if data_start + b > size:
            raise HeaderError(f"{path}: tensor {name!r} ends at byte {data_start + b}, past the end of the file "
                              f"({size} bytes): truncated or corrupt")
        tensors.append(TensorInfo(name, dtype, shape, data_start + a, data_start + b))
    metadata = {str(k): str(v) for k, v in metadata.items()}
    return Header(path, tuple(sorted(tensors, key=lambda t: t.start)), metadata, data_start, size)
