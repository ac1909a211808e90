"""A fast, safe reader for torch's zip checkpoints: the object graph without the tensor data.

torch's weights-only unpickler is pure Python (about 20 s for 300k tensors). This reader runs the C
unpickler with `find_class` restricted to an allow-list that maps every permitted global to a function of
ours: nothing from the file is ever called. Tensors become `MappedTensor`s, which read their bytes straight
from the zip member (torch stores them uncompressed) through a file mapping, chunk by chunk. Anything outside
the allow-list makes it give up (`Unsupported`), and the caller falls back to torch.load(weights_only=True),
which applies the refusal policy.
"""

from __future__ import annotations

import io
import math
import pickle
import re
import struct
import sys
from typing import Any

from optinspect.state.limits import MAX_TENSORS, too_many_tensors
from optinspect.state.loaded import StateLoadError
from optinspect.state.mapped import CorruptData, MappedFile, MappedTensor, _itemsize, check_extent, dtype_name

# dtypes by name: a checkpoint of typed storages (torch's usual form) is indexed without importing torch
STORAGE_DTYPES = {
    "FloatStorage": "float32", "DoubleStorage": "float64", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "ByteStorage": "uint8", "CharStorage": "int8",
    "ShortStorage": "int16", "IntStorage": "int32", "LongStorage": "int64", "BoolStorage": "bool",
    "ComplexFloatStorage": "complex64", "ComplexDoubleStorage": "complex128",
    "Float8_e4m3fnStorage": "float8_e4m3fn", "Float8_e5m2Storage": "float8_e5m2",
    "UntypedStorage": "uint8",  # bytes, with the tensor's dtype given by _rebuild_tensor_v3
}


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


def stub_for(name: str) -> type:
    return type(name.rsplit(".", 1)[-1], (_Stub,), {"_name": name})


class Unsupported(Exception):
    """Something this reader does not handle; torch.load(weights_only=True) decides instead."""




def _dims(value: Any, what: str) -> tuple[int, ...]:
    """A shape or stride from the pickle: a tuple of non-negative machine-sized integers, or CorruptData."""
    if not isinstance(value, (tuple, list)) or len(value) > 64 or \
            not all(type(v) is int and 0 <= v < 1 << 62 for v in value):
        raise CorruptData(f"a tensor's {what} is not a list of non-negative integers: {str(value)[:80]}")
    return tuple(value)


class _StorageType:
    def __init__(self, name: str) -> None:
        if name not in STORAGE_DTYPES:
            raise Unsupported(f"storage type {name}")
        self.dtype = STORAGE_DTYPES[name]

    @classmethod
    def of(cls, dtype: Any) -> _StorageType:
        """The storage type of `dtype` (for torch's untyped storages, whose tensors name their dtype)."""
        st = cls.__new__(cls)
        st.dtype = dtype_name(dtype)
        return st


def is_torch_dtype(name: str) -> bool:
    """Whether torch.<name> is a dtype (only pickles that name a dtype import torch while indexed)."""
    import torch

    return isinstance(getattr(torch, name, None), torch.dtype)


def _member_offsets(mm: Any, base: int = 0, end: int | None = None) -> tuple[dict[str, tuple[int, int]], str]:
    """Data offset and size of every stored member, read from the zip's central directory in the mapping
    (zipfile's own parser takes seconds for 300k members). The zip may sit inside a larger file at
    [base, end) (torch.distributed.checkpoint stores one torch.save archive per item); offsets are absolute."""
    try:
        return _parse_directory(mm, base, len(mm) if end is None else end)
    except (struct.error, IndexError, ValueError, OverflowError) as e:
        if isinstance(e, CorruptData):
            raise
        raise Unsupported(f"malformed zip directory ({e})") from None


# A central directory record's fields read here (signature, method, sizes, name/extra/comment lengths, local
# header offset), and a local header's (signature, name and extra lengths): one unpack each per member.
_CENTRAL = struct.Struct("<4s6xH8xIIHHH8xI")
_LOCAL = struct.Struct("<4s22xHH")


def _directory(mm: Any, base: int, size: int) -> tuple[int, int]:
    """(records, first record's position) of the archive's central directory, zip64 or not."""
    eocd = mm.rfind(b"PK\x05\x06", max(base, size - 65557), size)
    if eocd < 0:
        raise Unsupported("no end of central directory")
    count, cd_size, cd_off = struct.unpack_from("<HII", mm, eocd + 10)
    if count == 0xFFFF or cd_off == 0xFFFFFFFF or cd_size == 0xFFFFFFFF:
        loc = eocd - 20
        if loc < base or mm[loc:loc + 4] != b"PK\x06\x07":
            raise Unsupported("zip64 locator missing")
        (rec,) = struct.unpack_from("<Q", mm, loc + 8)
        rec += base
        if mm[rec:rec + 4] != b"PK\x06\x06":
            raise Unsupported("zip64 record missing")
        count, cd_size, cd_off = struct.unpack_from("<QQQ", mm, rec + 32)
    return count, base + cd_off


def _record(mm: Any, pos: int, base: int, size: int) -> tuple[str, int, int, int]:
    """The central-directory record at `pos`: (member name, data start, data size, next record's position)."""
    sig, method, csize, usize, n, m, k, local = _CENTRAL.unpack_from(mm, pos)
    if sig != b"PK\x01\x02":
        raise Unsupported("bad central directory")
    name = mm[pos + 46:pos + 46 + n].decode("utf-8", "replace")
    if 0xFFFFFFFF in (usize, local, csize):
        extra = mm[pos + 46 + n:pos + 46 + n + m]
        j = 0
        while j + 4 <= len(extra):
            tag, ln = struct.unpack_from("<HH", extra, j)
            if tag == 1:
                vals = list(struct.unpack_from("<" + "Q" * (ln // 8), extra, j + 4))
                if usize == 0xFFFFFFFF:
                    usize = vals.pop(0)
                if csize == 0xFFFFFFFF:
                    csize = vals.pop(0)
                if local == 0xFFFFFFFF:
                    local = vals.pop(0)
                break
            j += 4 + ln
    local += base
    if method != 0:
        raise CorruptData(f"zip member {name} is compressed (method {method}); torch.save never compresses, so "
                          "this file was re-packed by another tool and is not read (it could expand without bound)")
    sig, ln, lm = _LOCAL.unpack_from(mm, local)
    if sig != b"PK\x03\x04":
        raise Unsupported("bad local header")
    start = local + 30 + ln + lm
    if start + usize > size:
        raise Unsupported("member past the end of the file")
    return name, start, usize, pos + 46 + n + m + k


def _pickle_prefix(name: str) -> str | None:
    return name[: -len("/data.pkl")] if name.endswith("/data.pkl") and name.count("/") == 1 else None


def _parse_directory(mm: Any, base: int, size: int) -> tuple[dict[str, tuple[int, int]], str]:
    """(`size` is the archive's end in the mapping; its own offsets count from `base`.)"""
    count, pos = _directory(mm, base, size)
    out: dict[str, tuple[int, int]] = {}
    for _ in range(count):
        name, start, usize, pos = _record(mm, pos, base, size)
        out[name] = (start, usize)
    prefix = next((p for p in map(_pickle_prefix, out) if p is not None), None)
    if prefix is None:
        raise Unsupported("no data.pkl")
    return out, prefix


def _first_pickle(mm: Any, base: int, size: int) -> tuple[str, int, int] | None:
    """(prefix, start, size) of the archive's pickle where it is the first member, as torch writes it, read from
    the directory's first record alone: the rest of the directory can wait (see _Placement)."""
    try:
        count, pos = _directory(mm, base, size)
        if count:
            name, start, usize, _ = _record(mm, pos, base, size)
            prefix = _pickle_prefix(name)
            if prefix is not None:
                return prefix, start, usize
    except CorruptData:
        raise
    except (struct.error, IndexError, ValueError, OverflowError, Unsupported):
        pass  # the whole directory's parse says what is wrong
    return None


class _Placement:
    """Where the storages' bytes lie, read from the archive's central directory when the first bytes are wanted
    (or at once, for a caller that reads data straight away). For 300k tensors the directory is a quarter of the
    load, and a viewer can show names and shapes before it is read. Every storage is checked then: it must be
    a member of the archive holding the bytes it claims."""

    def __init__(self, mapped: MappedFile, base: int, end: int, pickle_at: tuple[str, int, int]) -> None:
        self.mapped, self.base, self.end, self.pickle_at = mapped, base, end, pickle_at
        self.pending: list[tuple[MappedTensor, str, int, int]] | None = []  # tensor, key, offset, bytes claimed

    def __call__(self) -> None:
        """Settle them now. A directory this reader cannot follow is corrupt here: torch's loader, which judges
        it before any tensor is made, can no longer be asked once they are."""
        try:
            self.place()
        except Unsupported as e:
            raise CorruptData(f"the archive's directory is malformed ({e})") from None

    def place(self) -> None:
        if self.pending is None:
            return
        members, prefix = _member_offsets(self.mapped.mm, self.base, self.end)
        if (prefix, *members[f"{prefix}/data.pkl"]) != self.pickle_at:
            raise CorruptData("the archive's directory and its first record disagree on where its pickle is")
        data_prefix = f"{prefix}/data/"
        for t, key, at, claimed in self.pending:
            member = members.get(data_prefix + key)
            if member is None:
                raise CorruptData(f"a tensor's data ({key}) is missing from the file")
            if claimed > member[1]:
                raise CorruptData(f"storage {key} claims {claimed:,} bytes; the file holds {member[1]:,} (truncated "
                                  "or corrupt)")
            t._start = member[0] + at
        self.pending = None
        self.mapped.release(self.base, self.end - self.base)  # the directory's and headers' pages


def load_index(path: str, harmless: re.Pattern, *, mapped: MappedFile | None = None, base: int = 0,
               end: int | None = None, max_tensors: int = MAX_TENSORS, placements: list | None = None
               ) -> tuple[Any, list[str]]:
    """Read a torch zip checkpoint's object graph with MappedTensors for every tensor (the archive may be the
    bytes [base, end) of a mapped file that holds several); more than `max_tensors` tensors is refused. Where
    the tensors' bytes lie is settled before returning, or, given `placements`, put there to be settled later
    (by calling it, or on the first read of any of them)."""
    mapped = mapped or MappedFile(path)
    if mapped.mm is None:
        raise Unsupported("empty file")
    if end is not None and not 0 <= base < end <= mapped.size:
        raise CorruptData(f"{path}: an item at bytes {base}..{end} of a {mapped.size}-byte file (truncated or "
                          "corrupt)")
    end = mapped.size if end is None else end
    first = _first_pickle(mapped.mm, base, end)
    if first is None:  # an archive that does not start with its pickle: its directory first, whole
        members, prefix = _member_offsets(mapped.mm, base, end)
        first = (prefix, *members[f"{prefix}/data.pkl"])
    _, start, size = first
    data = mapped.mm[start:start + size]
    skipped: list[str] = []
    placement = _Placement(mapped, base, end, first)
    pending = placement.pending
    extents: dict[tuple, tuple] = {}

    def storage_of(pid: Any) -> tuple[str, str, int]:
        """A storage reference's (dtype, key, elements), or why it is not one this reader takes (the unpickler
        hands over the raw persistent id: its `persistent_load` is the builtin `tuple`, no Python call per
        tensor). `rebuild_tensor` checks the usual form itself and comes here for anything else."""
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):  # torch's own loader decides
            raise Unsupported(f"a tensor's storage is {pid!r:.40}")
        if len(pid) != 5:
            raise CorruptData(f"a storage reference of {len(pid)} fields")
        _, stype, key, _location, numel = pid
        if not isinstance(stype, _StorageType):
            raise Unsupported("untyped storage")
        if type(numel) is not int or not 0 <= numel < 1 << 62:
            raise CorruptData(f"storage {str(key)[:40]} claims {str(numel)[:40]} elements")
        return stype.dtype, str(key), numel

    def rebuild_tensor(pid: Any, offset: int, shape: Any, stride: Any, *_: Any) -> MappedTensor:
        """One call per tensor, the usual storage reference checked inline: at 300k tensors each call counts."""
        try:
            tag, stype, key, _location, storage_numel = pid
        except (TypeError, ValueError):
            tag = None
        if tag == "storage" and type(stype) is _StorageType and type(key) is str and type(storage_numel) is int \
                and 0 <= storage_numel < 1 << 62:
            dtype = stype.dtype
        else:
            dtype, key, storage_numel = storage_of(pid)
        if len(pending) >= max_tensors:
            raise StateLoadError(too_many_tensors(path, f"more than {max_tensors:,}", max_tensors))
        if type(offset) is not int:
            raise CorruptData("a tensor's storage offset is not an integer")
        try:  # most tensors share a few shapes: checked once per (shape, stride, dtype), then looked up
            shape, stride, numel, span, itemsize = extents[(shape, stride, dtype)]
        except (KeyError, TypeError):
            shape, stride = _dims(shape, "shape"), _dims(stride, "stride")
            if len(stride) != len(shape):
                raise CorruptData(f"a tensor has {len(shape)} dimensions but {len(stride)} strides") from None
            numel = math.prod(shape)
            span = sum((n - 1) * st for n, st in zip(shape, stride, strict=True)) if numel else -1
            itemsize = _itemsize(dtype)
            extents[(shape, stride, dtype)] = shape, stride, numel, span, itemsize
        if numel and (offset < 0 or offset + span >= storage_numel or numel > storage_numel):
            check_extent(shape, stride, offset, storage_numel)  # raises, with the figures
        t = MappedTensor(mapped, -1, dtype, shape, stride, storage_numel - offset, placement, numel)
        pending.append((t, key, offset * itemsize, storage_numel * itemsize))
        return t

    def rebuild_tensor_v3(pid: Any, offset: int, shape: Any, stride: Any, _grad: Any, _hooks: Any,
                          dtype: Any, *_: Any) -> MappedTensor:
        """torch's newer form (float8 and other dtypes without a typed storage): bytes plus the dtype (a dtype
        global of the pickle, which imported torch)."""
        torch = sys.modules.get("torch")
        if torch is None or not isinstance(dtype, torch.dtype):
            raise CorruptData("a tensor without a storage or a dtype")
        storage_dtype, key, storage_numel = storage_of(pid)
        size = _itemsize(dtype)
        if storage_dtype != "uint8" or storage_numel % size:
            raise CorruptData(f"storage {key} does not hold whole {dtype} elements")
        return rebuild_tensor(("storage", _StorageType.of(dtype), key, None, storage_numel // size), offset, shape,
                              stride)

    def make_stub(name: str):

        skipped.append(name)
        return stub_for(name)

    from optinspect.state import lowbit

    allowed = {
        # torchao's low-bit optimizer states: their classes become markers, rebuilt as LowBitTensors
        ("torch._tensor", "_rebuild_from_type_v2"): lowbit.rebuild,
        ("torch._utils", "_rebuild_wrapper_subclass"): lowbit.Marker("wrapper"),
        ("torch.serialization", "_get_layout"): str,
        ("torch", "device"): lambda *a, **k: "device",
        ("torch._utils", "_rebuild_tensor_v2"): rebuild_tensor,
        ("torch._utils", "_rebuild_tensor"): rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v3"): rebuild_tensor_v3,
        # every tensor's backward hooks are an empty OrderedDict: a dict is built faster, and reads the same
        ("collections", "OrderedDict"): dict,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("torch", "Size"): tuple,
        ("_codecs", "encode"): lambda s, enc="latin1": s.encode(enc),
    }

    class Reader(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            if (module, name) in allowed:
                return allowed[(module, name)]
            if module in ("torch", "torch.storage") and name in STORAGE_DTYPES:
                return _StorageType(name)
            if module == "torch" and is_torch_dtype(name):
                return getattr(sys.modules["torch"], name)  # a dtype value (float8 tensors, torchao's dtype)
            if f"{module}.{name}" in lowbit.CLASSES:
                return lowbit.Marker(lowbit.CLASSES[f"{module}.{name}"])
            full = f"{module}.{name}"
            if harmless.match(full):
                return make_stub(full)
            raise Unsupported(full)

        persistent_load = tuple  # storage references stay their persistent ids (see storage_of)

    try:
        # buffered: the C unpickler prefetches through `peek`, where a bare BytesIO costs a Python call per read
        # (three times the whole load at 300k tensors)
        obj = Reader(io.BufferedReader(io.BytesIO(data), 1 << 20)).load()
    except (Unsupported, CorruptData, StateLoadError):
        raise
    except RecursionError:
        raise CorruptData("the object graph nests deeper than Python can follow") from None
    except Exception as e:  # noqa: BLE001 - a broken pickle: let torch's loader produce its own message
        raise Unsupported(f"{type(e).__name__}: {e}") from None
    if placements is None:
        placement.place()
    else:
        placements.append(placement)
    return obj, sorted(set(skipped))
