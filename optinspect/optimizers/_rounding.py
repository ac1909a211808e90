"""Stochastic rounding of fp32 values into bf16/fp16 storage: the one copy every optimizer here uses."""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from functools import cache

import torch

__all__ = ["Pool", "all_threads", "bits_ahead", "copy_stochastic_", "is_low_precision"]

_BF16_MAX = torch.finfo(torch.bfloat16).max
_HIGH = 1 << 16  # 16 random bits per element, as the originals draw them


def is_low_precision(t: torch.Tensor) -> bool:
    return t.dtype in (torch.bfloat16, torch.float16)


# -- drawing the bits ahead, on CPU ------------------------------------------------------------------------
# Stochastic rounding on CPU spends much of a bf16 step in the global generator: it is a serial Mersenne
# twister, ~2 ns per element on one core (LoRA bf16, 49M weights: ~100 ms of Adafactor's ~240 ms step, 310 of
# Persona's 550 with its two bf16 moments). The originals draw tensor by tensor between their arithmetic. The
# bits can be drawn on a second core meanwhile without changing one of them: on CPU an int32 draw takes one
# 32-bit output per element in order, so n values then m values are the n + m values of one draw. A helper
# thread draws chunks from a copy of the global generator; each request takes the next values of that stream;
# at the end the global generator is moved past the values handed out. Only draws from the global generator on
# CPU go through it; CUDA's counter-based generator offsets each call, so there it stays per call.

AHEAD_CHUNK = 1 << 18  # values per chunk (1 MiB): the most one settling re-draws
AHEAD_DEPTH = 8  # chunks drawn before they are asked for: bounds the memory and the work spent past the last use
AHEAD_MIN = 1 << 20  # low-precision elements in a step below which a thread is not worth starting
_local = threading.local()


class _BitsAhead:
    """The global CPU generator's stream of 16-bit draws, drawn ahead on a helper thread for one step."""

    def __init__(self) -> None:
        self._home = torch.default_generator
        self._initial = self._home.get_state()
        # The helper draws from a copy: the global generator is not touched until the step ends, so whether
        # another thread drew from it meanwhile is a plain comparison (the copy's own states never race).
        self._copy = torch.Generator()
        self._copy.set_state(self._initial)
        self._chunks: queue.Queue = queue.Queue(maxsize=AHEAD_DEPTH)
        self._stop = threading.Event()
        self._start: torch.Tensor | None = None  # the copy's state before the chunk being handed out
        self._chunk: torch.Tensor | None = None
        self._used = 0  # values of that chunk handed out
        self._taken = 0  # values handed out in all
        self._closed = False
        self._thread = threading.Thread(target=self._draw, name="optinspect-random-bits", daemon=True)
        self._thread.start()

    def _draw(self) -> None:
        try:
            while not self._stop.is_set():
                start = self._copy.get_state()
                chunk = torch.randint(0, _HIGH, (AHEAD_CHUNK,), dtype=torch.int32, generator=self._copy)
                self._put((start, chunk))
        except BaseException as e:  # noqa: BLE001 - handed to the step, which raises it
            self._put((None, e))

    def _put(self, item: tuple) -> None:
        while not self._stop.is_set():
            try:
                self._chunks.put(item, timeout=0.05)
                return
            except queue.Full:
                continue

    def take(self, n: int) -> torch.Tensor:
        """The next n values of the stream (a view into a chunk where they fit in one)."""
        pieces = []
        while n > 0:
            if self._chunk is None or self._used == AHEAD_CHUNK:
                start, chunk = self._chunks.get()
                if start is None:
                    raise chunk
                self._start, self._chunk, self._used = start, chunk, 0
            k = min(n, AHEAD_CHUNK - self._used)
            pieces.append(self._chunk[self._used:self._used + k])
            self._used += k
            self._taken += k
            n -= k
        if not pieces:
            return torch.empty(0, dtype=torch.int32)
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)

    def close(self) -> None:
        """Stop drawing and move the global generator past the values handed out: exactly where drawing each
        request from it would have left it."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        while True:  # a helper waiting for room in the queue gets it now, sees the stop, and ends
            try:
                self._chunks.get_nowait()
            except queue.Empty:
                break
        self._thread.join()
        if self._chunk is None:  # nothing was handed out
            return
        if not torch.equal(self._home.get_state(), self._initial):
            # Another thread drew from it meanwhile; a plain run would have interleaved its draws with ours in no
            # fixed order. Keep its draws and skip past the values handed out here, so that it never meets them
            # later (those it drew meanwhile were also among ours: harmless, they went to different uses).
            _skip(self._taken)
            return
        self._home.set_state(self._start)
        _skip(self._used)


def _skip(n: int) -> None:
    """Move the global generator past n of these draws, a chunk at a time (n can be billions: every value a
    full fine-tune's step rounded)."""
    if n <= 0:
        return
    buf = torch.empty(min(n, AHEAD_CHUNK), dtype=torch.int32)
    while n > 0:
        k = min(n, buf.numel())
        buf[:k].random_(0, _HIGH)
        n -= k


@cache
def _draws_concatenate() -> bool:
    """Whether this torch's CPU draws have the property the stream relies on (checked once, on a private
    generator): n values then m values equal the n + m values of one draw."""
    g = torch.Generator().manual_seed(1234)
    sizes = (1, 3, 4097, 70001)
    parts = [torch.randint(0, _HIGH, (k,), dtype=torch.int32, generator=g) for k in sizes]
    g.manual_seed(1234)
    whole = torch.randint(0, _HIGH, (sum(sizes),), dtype=torch.int32, generator=g)
    return torch.equal(torch.cat(parts), whole)


def _cores() -> int:
    """CPUs this process may run on: more than torch's intra-op threads (torch takes one per physical core, so SMT
    siblings usually are idle) leaves one for the helper thread."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


GRAIN = 32768  # torch's CPU elementwise kernels split a tensor among threads only from this many elements


def _splits_alike(n: int, threads: int) -> bool:
    """Whether an elementwise op on n elements computes each one the same way at any thread count up to
    `threads`. Each thread's chunk runs a vectorised loop and finishes its last few elements with scalar code,
    which may round differently (atan2, fused multiply-adds): chunks of whole 64-element vectors (every
    split torch makes of a LoRA matrix or a usual weight) leave only the tensor's own tail to scalar code, at
    every count."""
    return n < GRAIN or all(-(-n // k) % 64 == 0 for k in range(2, threads + 1))


class Pool:
    """What a `bits_ahead` block did with torch's intra-op pool: whether it lent a thread to the helper, and
    whether reductions ran while it did (each took the whole pool back for a moment)."""

    __slots__ = ("threads", "size", "depth", "lent", "reduced")

    def __init__(self, threads: int) -> None:
        self.threads = threads  # the step's count: reductions run at it
        self.size = threads  # the count for everything else
        self.depth = 0  # nested `all_threads` blocks
        self.lent = False
        self.reduced = False


class _AllThreads:
    """`with all_threads:` runs reductions on the step's whole intra-op pool while one of its threads is lent to
    the helper. CPU sums, means and dot products split their work by thread count and round accordingly (norms
    and matrix products may too, in other builds), so they must run at the count the original runs at;
    elementwise arithmetic gives the same bits at any count (see _splits_alike). Nothing happens outside a step
    that lent a thread."""

    def __enter__(self) -> None:
        pool = getattr(_local, "pool", None)
        if pool is not None and pool.lent:
            if pool.depth == 0:
                torch.set_num_threads(pool.threads)
                pool.reduced = True
            pool.depth += 1

    def __exit__(self, *exc: object) -> None:
        pool = getattr(_local, "pool", None)
        if pool is not None and pool.lent:
            pool.depth -= 1
            if pool.depth == 0:
                torch.set_num_threads(pool.size)


all_threads = _AllThreads()


@contextmanager
def bits_ahead(rounded: Iterable[torch.Tensor], stepped: Iterable[torch.Tensor] = (), *,
               lend: bool = True) -> Iterator[Pool]:
    """Within the block, stochastic rounding on CPU takes its bits from a stream drawn ahead on a helper thread;
    the results and the global generator's state after the block are those of drawing each time. `rounded`: the
    tensors the block will round (they decide whether a thread is worth starting); `stepped`: every tensor its
    elementwise arithmetic runs on.

    The helper gets a CPU the intra-op pool leaves idle or, with `lend`, one of the pool's threads: the
    elementwise arithmetic then runs one thread short while reductions (`all_threads`) keep the full count,
    provided every stepped tensor splits alike at both counts. Lending pays where the step is elementwise: the
    draws are serial, and a LoRA's small elementwise ops gain little from a second thread (Persona, bf16 LoRA on
    2 cores: 484 -> 356 ms). It costs where reductions are frequent: each wakes the lent thread on the helper's
    core, and libgomp's workers then spin between operations (Adafactor 236 -> 282 ms, ~90 us per reduction).
    So the yielded `Pool` says whether reductions ran while lent, and callers stop lending then."""
    threads = torch.get_num_threads()
    status = Pool(threads)
    if getattr(_local, "ahead", None) is not None or os.environ.get("OPTINSPECT_BITS_AHEAD") == "0":
        yield status  # nested, or switched off: e.g. many 1-thread processes share the CPUs
        return
    rounded = list(rounded)
    idle = _cores() > threads
    if not idle and not (lend and threads >= 2 and all(
            _splits_alike(t.numel(), threads) for t in (*rounded, *stepped) if t.device.type == "cpu")):
        yield status
        return
    size = sum(t.numel() for t in rounded if t.device.type == "cpu" and is_low_precision(t))
    if size == 0 or size < AHEAD_MIN or not _draws_concatenate():
        yield status
        return
    ahead = _local.ahead = _BitsAhead()
    if not idle:
        status.lent, status.size = True, threads - 1
        _local.pool = status
        torch.set_num_threads(status.size)
    try:
        yield status
    finally:
        _end(ahead)


def _end(ahead: _BitsAhead) -> None:
    """Close the stream and give the pool its thread back."""
    _local.ahead = None
    pool = getattr(_local, "pool", None)
    _local.pool = None
    try:
        ahead.close()
    finally:
        if pool is not None:
            pool.lent = False
            torch.set_num_threads(pool.threads)


def _settle() -> None:
    """Before any other draw from the global generator within a `bits_ahead` block: catch it up and draw
    directly from then on."""
    ahead = getattr(_local, "ahead", None)
    if ahead is not None:
        _end(ahead)


def _random_bits(source: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    if generator is None:  # the originals draw from the device's global generator, one draw per call
        ahead = getattr(_local, "ahead", None)
        if ahead is not None and source.device.type == "cpu":
            return ahead.take(source.numel()).view(source.shape)
        return torch.randint_like(source, dtype=torch.int32, low=0, high=_HIGH)
    return torch.randint(0, _HIGH, source.shape, dtype=torch.int32, device=source.device, generator=generator)


def _bf16_grid_(target: torch.Tensor, source: torch.Tensor, generator: torch.Generator | None) -> None:
    # Adding 16 random bits below bf16's mantissa and truncating rounds up with probability
    # (discarded bits) / 2^16: unbiased, and the carry moves into the exponent correctly.
    bits = _random_bits(source, generator)
    bits.add_(source.view(dtype=torch.int32))
    bits.bitwise_and_(-65536)
    result = bits.view(dtype=torch.float32)
    if _may_carry_badly(source):
        result = _keep_special(result, source)
    target.copy_(result)


def _may_carry_badly(source: torch.Tensor) -> bool:
    """Whether any element is NaN or beyond bf16's largest finite value: only those can carry badly.

    On CPU one min/max pass answers it (a NaN makes both comparisons false) and saves the five passes of
    the repair on the usual clean tensor; elsewhere the answer would cost a device sync, so repair always.
    """
    if source.device.type != "cpu":
        return True
    if source.numel() == 0:
        return False
    lo, hi = torch.aminmax(source)
    return not (-_BF16_MAX <= lo.item() and hi.item() <= _BF16_MAX)  # compared in Python: two dispatches fewer


def _keep_special(result: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """Where the carry went wrong: a finite value rounded up past bf16's largest becomes that largest value
    instead of inf, and a NaN (whose low payload bits can carry into inf, zero or the sign) stays NaN.
    Everywhere else `result` is unchanged, so the originals' numbers are kept."""
    overflow = torch.isinf(result) & torch.isfinite(source)
    result = torch.where(overflow, source.clamp(-_BF16_MAX, _BF16_MAX), result)
    return torch.where(torch.isnan(source), source, result)


def _fp16_exact_(target: torch.Tensor, source: torch.Tensor, generator: torch.Generator | None) -> None:
    # Round to one of the two neighbouring fp16 values with probability proportional to proximity.
    near = source.to(torch.float16)
    near32 = near.float()
    toward = torch.where(near32 > source, torch.full_like(near, -float("inf")), torch.full_like(near, float("inf")))
    other = torch.nextafter(near, toward).float()
    lo = torch.minimum(near32, other)
    hi = torch.maximum(near32, other)
    gap = hi - lo
    p_hi = torch.where(gap > 0, (source - lo) / gap, torch.zeros_like(source))
    if generator is None:
        _settle()
        u = torch.rand_like(source)
    else:
        u = torch.rand(source.shape, device=source.device, generator=generator)
    out = torch.where(u < p_hi, hi, lo)
    out = torch.where(torch.isfinite(source) & torch.isfinite(near32), out, near32)
    target.copy_(out)


def copy_stochastic_(target: torch.Tensor, source: torch.Tensor, *, generator: torch.Generator | None = None,
                     fp16_exact: bool = False) -> None:
    """Write fp32 `source` into `target`, stochastically rounded when `target` is bf16 or fp16.

    fp16 targets keep the originals' behaviour by default (rounded on the bf16 grid, then copied: only 7
    mantissa bits survive); `fp16_exact=True` rounds to real fp16 neighbours. fp32 targets get a plain copy.
    """
    if target.dtype == torch.float32 or not is_low_precision(target):
        target.copy_(source)
        return
    src = source if source.dtype == torch.float32 else source.float()
    src = src.contiguous()
    if target.dtype == torch.float16 and fp16_exact:
        _fp16_exact_(target, src, generator)
    else:
        _bf16_grid_(target, src, generator)
