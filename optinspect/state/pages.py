"""Memory-mapped reading that gives pages back: chunk views of a file, released after use.

Statistics read each chunk once; dropping its pages afterwards keeps the resident set bounded by a few
chunks even for a state file larger than RAM (the pages are clean file-backed pages: dropping them only
means a later read faults them in again).
"""

from __future__ import annotations

import ctypes
import mmap
import os
import sys
import warnings

import torch

PAGE = mmap.PAGESIZE


class CorruptData(ValueError):
    """Tensor bytes that are not where the file says they are (or no longer are: the file shrank)."""
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
        if count == 0:
            return torch.empty(0, dtype=dtype)
        # Touching a mapped page past the end of a file that shrank (a trainer re-saving in place) is SIGBUS,
        # which kills the process: the size is checked before each chunk is viewed, so a truncation shows as a
        # clean error (a truncation in the microseconds between this check and the read is not covered).
        end = start + count * dtype.itemsize
        if end > self.size or os.fstat(self.fd).st_size < end:
            raise CorruptData(f"{self.path}: the file is shorter than its tensors need (truncated, or being "
                              "rewritten while it is read)")
        with warnings.catch_warnings():  # the mapping is read-only and so is every use of the view
            warnings.simplefilter("ignore", UserWarning)
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
