"""Tensors read straight from a file: `MappedFile` (memory-mapped chunk views whose pages are given back after use)
and `MappedTensor` (a tensor of a checkpoint, read chunk by chunk; the one type the engine streams from).

Statistics read each chunk once; dropping its pages afterwards keeps the resident set bounded by a few
chunks even for a state file larger than RAM (the pages are clean file-backed pages: dropping them only
means a later read faults them in again).
"""

from __future__ import annotations

import ctypes
import functools
import math
import mmap
import os
import sys
import warnings
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

PAGE = mmap.PAGESIZE
# The mapping is read-only and so is every use of its views: torch's warning about a non-writable buffer is
# silenced once here (a catch_warnings around each view cost more than the view, for a million small tensors).
warnings.filterwarnings("ignore", message="The given buffer is not writable", category=UserWarning)


class CorruptData(ValueError):
    """Tensor bytes that are not where the file says they are (or no longer are: the file shrank)."""


# Element sizes by dtype name. The index of a checkpoint (names, shapes, dtypes, where the bytes lie) is read
# without importing torch, which takes most of a second: the TUI shows its rows before torch is loaded.
ITEMSIZE = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4, "int16": 2,
            "int8": 1, "uint8": 1, "bool": 1, "complex64": 8, "complex128": 16, "float8_e4m3fn": 1,
            "float8_e5m2": 1, "float8_e4m3fnuz": 1, "float8_e5m2fnuz": 1, "uint16": 2, "uint32": 4, "uint64": 8}
_TORCH_DTYPES: dict[str, Any] = {}


def dtype_name(dtype: Any) -> str:
    """`float32` for torch.float32 or for the name itself."""
    return dtype if type(dtype) is str else str(dtype).replace("torch.", "")


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a name (torch imported on first need)."""
    try:
        return _TORCH_DTYPES[name]
    except KeyError:
        import torch

        _TORCH_DTYPES[name] = getattr(torch, name)
        return _TORCH_DTYPES[name]


def is_tensor(value: Any) -> bool:
    """A tensor, mapped or torch's. Before torch is imported no torch tensor can exist, so the index of a
    checkpoint is walked without importing it."""
    if isinstance(value, MappedTensor):
        return True
    tensor = getattr(sys.modules.get("torch"), "Tensor", None)
    return tensor is not None and isinstance(value, tensor)
_MADV_DONTNEED = getattr(mmap, "MADV_DONTNEED", 4)
_libc = None
if sys.platform.startswith("linux"):
    try:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    except (OSError, AttributeError):
        _libc = None


def release(ptr: int, nbytes: int) -> None:
    """Drop the whole pages inside [ptr, ptr + nbytes) of a read-only file mapping (best effort, Linux)."""
    if _libc is None or nbytes <= 0:
        return
    start = (ptr + PAGE - 1) // PAGE * PAGE
    end = (ptr + nbytes) // PAGE * PAGE
    if end > start:
        _libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), _MADV_DONTNEED)


def release_tensor(t: torch.Tensor) -> None:
    """Give back the pages of a tensor that torch.load(mmap=True) mapped from a file."""
    if t.device.type == "cpu" and t.numel():
        release(t.data_ptr(), t.numel() * t.element_size())


class MappedFile:
    """A read-only mapping of a whole file; `view` makes zero-copy tensors over byte ranges."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDONLY)
        self.size = os.fstat(self.fd).st_size
        self.mm = mmap.mmap(self.fd, 0, access=mmap.ACCESS_READ) if self.size else None

    def view(self, start: int, count: int, dtype: torch.dtype) -> torch.Tensor:
        import torch

        if count == 0:
            return torch.empty(0, dtype=dtype)
        # Touching a mapped page past the end of a file that shrank (a trainer re-saving in place) is SIGBUS,
        # which kills the process: the size is checked before each chunk is viewed, so a truncation shows as a
        # clean error (a truncation in the microseconds between this check and the read is not covered).
        end = start + count * dtype.itemsize
        if end > self.size or os.fstat(self.fd).st_size < end:
            raise CorruptData(f"{self.path}: the file is shorter than its tensors need (truncated, or being "
                              "rewritten while it is read)")
        return torch.frombuffer(self.mm, dtype=dtype, count=count, offset=start)

    def release(self, start: int, nbytes: int) -> None:
        a = start // PAGE * PAGE
        b = min(self.size, -(-(start + nbytes) // PAGE) * PAGE)
        if b > a and hasattr(self.mm, "madvise"):
            try:
                self.mm.madvise(_MADV_DONTNEED, a, b - a)
            except (OSError, ValueError):
                pass

    def close(self) -> None:
        if self.mm is not None:
            self.mm.close()
        os.close(self.fd)


class MappedTensor:
    """A tensor in a file mapping: shape and dtype known, bytes read on demand (chunks, or all at once)."""

    __slots__ = ("mapped", "_start", "_dtype", "shape", "stride", "storage_numel", "_numel", "_placement")

    def __init__(self, mapped: MappedFile, byte_start: int, dtype: torch.dtype | str, shape: tuple[int, ...],
                 stride: tuple[int, ...] | None = None, storage_numel: int | None = None,
                 placement: Any = None, numel: int = -1) -> None:
        self.mapped = mapped
        self._start = byte_start
        self._dtype = dtype if type(dtype) is str else dtype_name(dtype)  # a name: no torch needed to index
        self.shape = shape
        self.stride = stride
        self.storage_numel = storage_numel
        self._numel = numel  # computed on first need where not given
        self._placement = placement  # where `byte_start` is found on first need (it is -1 until then)

    @property
    def byte_start(self) -> int:
        """Where the bytes begin in the mapping. A zip checkpoint's reader learns it from the archive's directory,
        which for 300k tensors takes a good part of the load: it is read when the first bytes are wanted, so
        names and shapes can be shown before."""
        if self._start < 0:
            self._placement()
        return self._start

    @property
    def numel(self) -> int:
        if self._numel < 0:
            self._numel = math.prod(self.shape)
        return self._numel

    @property
    def dtype(self) -> torch.dtype:
        return torch_dtype(self._dtype)

    @property
    def itemsize(self) -> int:
        size = ITEMSIZE.get(self._dtype)
        return _itemsize(self._dtype) if size is None else size

    @property
    def nbytes(self) -> int:
        return self.numel * self.itemsize

    @property
    def dtype_name(self) -> str:
        return self._dtype

    @property
    def contiguous(self) -> bool:
        return self.stride is None or self.numel <= 1 or tuple(self.stride) == _contiguous(tuple(self.shape))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def is_scalar(self) -> bool:
        return self.shape == ()

    def scalar(self) -> Any:
        import torch

        t = self.load()
        return t.item() if t.numel() == 1 and (t.dtype.is_floating_point or t.dtype in (torch.int64, torch.int32)) \
            else t

    def view(self, start: int, count: int) -> torch.Tensor:
        if not self.contiguous:  # elements [start, start + count) in C order, copying only those
            return _strided_range(self._strided(), start, count)
        end = self.byte_start + (start + count) * self.itemsize
        if (self.storage_numel is not None and start + count > self.storage_numel) or end > self.mapped.size:
            raise CorruptData(f"{self.mapped.path}: a tensor extends past its data (truncated or corrupt file)")
        return self.mapped.view(self.byte_start + start * self.itemsize, count, self.dtype)

    def release(self, start: int, count: int) -> None:
        if self.contiguous:
            self.mapped.release(self.byte_start + start * self.itemsize, count * self.itemsize)

    def chunks(self, chunk: int):
        for i in range(0, self.numel, chunk):
            n = min(chunk, self.numel - i)
            yield self.view(i, n), (lambda i=i, n=n: self.release(i, n))

    def load(self) -> torch.Tensor:
        if self.contiguous:
            return self.view(0, self.numel).clone().reshape(self.shape)
        return self._strided().clone()

    def _strided(self) -> torch.Tensor:
        """A zero-copy strided view over the mapping (its extent was checked against the storage)."""
        import torch

        base = self.mapped.view(self.byte_start, self.storage_numel or 0, self.dtype)
        return torch.as_strided(base, self.shape, self.stride)

    def meta_tensor(self) -> torch.Tensor:
        import torch

        return torch.empty(self.shape, device="meta")


def _strided_range(full: torch.Tensor, start: int, count: int) -> torch.Tensor:
    """Elements [start, start + count) of a strided tensor in C order, copying only those: whole rows in one
    slice, the partial first and last rows recursively."""
    import torch

    if full.dim() <= 1:
        return full.reshape(-1)[start:start + count].clone()
    inner = math.prod(full.shape[1:])
    if inner == 0 or count <= 0:
        return torch.empty(0, dtype=full.dtype)
    pieces = []
    end = start + count
    row = start // inner
    while row * inner < end:
        lo, hi = max(start - row * inner, 0), min(end - row * inner, inner)
        if lo == 0 and hi == inner:  # a run of whole rows
            last = min(end // inner, full.shape[0])
            pieces.append(full[row:last].reshape(-1))
            row = last
        else:
            pieces.append(_strided_range(full[row], lo, hi - lo))
            row += 1
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces)


def _itemsize(dtype: torch.dtype | str) -> int:
    """Bytes per element, of a dtype or its name (a name outside the table is asked of torch)."""
    name = dtype_name(dtype)
    if name not in ITEMSIZE:
        ITEMSIZE[name] = torch_dtype(name).itemsize
    return ITEMSIZE[name]


@functools.lru_cache(maxsize=1024)
def _contiguous(shape: tuple[int, ...]) -> tuple[int, ...]:
    out, acc = [], 1
    for s in reversed(shape):
        out.append(acc)
        acc *= max(s, 1)
    return tuple(reversed(out))


def check_extent(shape: tuple[int, ...], stride: tuple[int, ...], offset: int, storage_numel: int) -> None:
    """What a tensor claims must lie inside its storage, and may not claim more elements than the storage holds
    (an overlapping view: a few stored bytes that would be read as a huge tensor)."""
    if len(stride) != len(shape):
        raise CorruptData(f"a tensor has {len(shape)} dimensions but {len(stride)} strides")
    numel = math.prod(shape)
    if numel == 0:
        return
    last = offset + sum((n - 1) * st for n, st in zip(shape, stride, strict=True))
    if offset < 0 or last >= storage_numel:
        raise CorruptData(f"a tensor of shape {list(shape)} reaches element {last} of a storage of {storage_numel} "
                          "(truncated or corrupt file)")
    if numel > storage_numel:
        raise CorruptData(f"a tensor of shape {list(shape)} claims {numel:,} elements over {storage_numel:,} stored "
                          "(an overlapping view); refused: reading it would take time unbounded by the file")


def positions(starts: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Element indices start_i .. start_i + length_i - 1 for every i, laid end to end (int64)."""
    import torch

    before = lengths.cumsum(0) - lengths
    return torch.arange(int(lengths.sum())) + torch.repeat_interleave(starts - before, lengths)


def gather(tensors: list, dtype: torch.dtype | None | str = "float32") -> torch.Tensor:
    """The elements of many small tensors laid end to end in C order (as `dtype`, or their own shared dtype for
    None): mapped ones of one file and dtype in a single indexed read instead of a view and a copy each, which
    for a state of 100k tensors was most of the time. Their pages are given back afterwards."""
    import torch

    lengths = [t.numel if isinstance(t, MappedTensor) else t.numel() for t in tensors]
    out_dtype = torch_dtype(dtype) if isinstance(dtype, str) else dtype or (tensors[0].dtype if tensors else
                                                                             torch.float32)
    out = torch.empty(sum(lengths), dtype=out_dtype)
    at, groups = 0, {}
    for t, n in zip(tensors, lengths, strict=True):
        # the slots read directly: this loop runs once per tensor of a 300k-tensor state
        if type(t) is MappedTensor and (t.stride is None or t.contiguous) and \
                (t.storage_numel is None or n <= t.storage_numel):
            start = t._start if t._start >= 0 else t.byte_start
            size = ITEMSIZE.get(t._dtype) or t.itemsize
            if start % size == 0:
                members = groups.get((id(t.mapped), t._dtype))
                if members is None:
                    members = groups[(id(t.mapped), t._dtype)] = ([], [], [], t.mapped, size)
                members[0].append(at)
                members[1].append(start // size)
                members[2].append(n)
                at += n
                continue
        if n:
            out[at:at + n] = (t.view(0, n) if isinstance(t, MappedTensor) else t).reshape(-1)
        at += n
    for (_, name), (ats, firsts, counts, mapped, size) in groups.items():
        starts, counts = torch.tensor(firsts), torch.tensor(counts)
        lo, hi = int(starts.min()), int((starts + counts).max())
        base = mapped.view(lo * size, hi - lo, torch_dtype(name))
        out[positions(torch.tensor(ats), counts)] = base[positions(starts - lo, counts)].to(out_dtype)
        mapped.release(lo * size, (hi - lo) * size)
    return out
