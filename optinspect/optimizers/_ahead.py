"""Stochastic rounding's random bits drawn ahead on a helper thread, on CPU, and the intra-op thread the helper
may borrow: the same bits as drawing them in turn, and the same results."""

from __future__ import annotations

import os
import queue
import statistics
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import cache
from typing import TypeVar

import torch

T = TypeVar("T")

__all__ = ["HIGH", "HelperChoice", "Pool", "TimedChoice", "all_threads", "at_full_count", "bits_ahead", "helper_choice",
           "mean", "random_inputs", "reduction", "same_bits_at", "settle", "splits_alike", "splits_alike_at", "stream",
           "task"]

HIGH = 1 << 16  # 16 random bits per element, as the originals draw them

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
                chunk = torch.randint(0, HIGH, (AHEAD_CHUNK,), dtype=torch.int32, generator=self._copy)
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
        buf[:k].random_(0, HIGH)
        n -= k


@cache
def _draws_concatenate() -> bool:
    """Whether this torch's CPU draws have the property the stream relies on (checked once, on a private
    generator): n values then m values equal the n + m values of one draw."""
    g = torch.Generator().manual_seed(1234)
    sizes = (1, 3, 4097, 70001)
    parts = [torch.randint(0, HIGH, (k,), dtype=torch.int32, generator=g) for k in sizes]
    g.manual_seed(1234)
    whole = torch.randint(0, HIGH, (sum(sizes),), dtype=torch.int32, generator=g)
    return torch.equal(torch.cat(parts), whole)


def _cores() -> int:
    """CPUs this process may run on: more than torch's intra-op threads (torch takes one per physical core, so SMT
    siblings usually are idle) leaves one for the helper thread."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


GRAIN = 32768  # torch's CPU elementwise kernels split a tensor among threads only from this many elements


def splits_alike_at(n: int, threads: int) -> bool:
    """Whether an elementwise op on n elements computes each one the same way at any thread count up to
    `threads`. Each thread's chunk runs a vectorised loop and finishes its last few elements with scalar code,
    which may round differently (atan2, fused multiply-adds): chunks of whole 64-element vectors (every
    split torch makes of a LoRA matrix or a usual weight) leave only the tensor's own tail to scalar code, at
    every count."""
    return n < GRAIN or all(-(-n // k) % 64 == 0 for k in range(2, threads + 1))


def splits_alike(n: int) -> bool:
    """Whether elementwise arithmetic on n elements gives the same bits at the count in effect (a lent pool, a
    task run side by side at one thread) as at the step's full count (a step checks its parameters' sizes first;
    this is for other tensors, e.g. Adafactor's row vectors)."""
    if n < GRAIN:  # split at no count
        return True
    running = task()
    if running is not None:
        return splits_alike_at(n, running.threads)
    pool = getattr(_local, "pool", None)
    return pool is None or not pool.lent or splits_alike_at(n, pool.threads)


def task() -> FullCount | None:
    """The side-by-side task this thread is running (see `_spread.side_by_side`), or None."""
    return getattr(_local, "task", None)


def enter_task(running: FullCount | None) -> None:
    _local.task = running


class FullCount:
    """What a task run side by side at a pool of one thread needs from the step that runs it: the step's full
    count, and a way to run work at that count (on the step's own thread, which keeps its pool)."""

    threads: int

    def call(self, fn: Callable[[], T]) -> T:
        raise NotImplementedError


def at_full_count(fn: Callable[[], T]) -> T:
    """fn() at the step's full intra-op count: where its reductions split their work by thread count, as the
    original runs them. Inside a side-by-side task it runs on the step's own thread meanwhile."""
    running = task()
    if running is not None:
        return running.call(fn)
    with all_threads:
        return fn()


class Pool:
    """What a `bits_ahead` block did: whether the helper could draw its bits (a stream worth drawing, and an idle
    CPU or a thread the intra-op pool can lend), whether it did, and whether the pool lent it a thread."""

    __slots__ = ("threads", "size", "depth", "possible", "helped", "lent")

    def __init__(self, threads: int) -> None:
        self.threads = threads  # the step's count: reductions run at it
        self.size = threads  # the count for everything else
        self.depth = 0  # nested `all_threads` blocks
        self.possible = False
        self.helped = False
        self.lent = False


class _AllThreads:
    """`with all_threads:` runs reductions on the step's whole intra-op pool while one of its threads is lent to
    the helper. CPU sums, means and dot products split their work by thread count and round accordingly (norms
    and matrix products may too, in other builds), so they must run at the count the original runs at;
    elementwise arithmetic gives the same bits at any count (see splits_alike_at). Nothing happens outside a step
    that lent a thread."""

    def __enter__(self) -> None:
        if task() is not None:  # its thread's count is one and must stay so: the work goes to the step's thread
            raise RuntimeError("all_threads inside a side-by-side task: use at_full_count")
        pool = getattr(_local, "pool", None)
        if pool is not None and pool.lent:
            if pool.depth == 0:
                torch.set_num_threads(pool.threads)
            pool.depth += 1

    def __exit__(self, *exc: object) -> None:
        pool = getattr(_local, "pool", None)
        if pool is not None and pool.lent:
            pool.depth -= 1
            if pool.depth == 0:
                torch.set_num_threads(pool.size)


all_threads = _AllThreads()

PROBES = 48  # random tensors a reduction is tried on, at both thread counts: one that splits its work differs on
# a quarter of them or more (a sum over one LoRA matrix's 49k elements, SCORN's normalisation of a vector)
PROBE_MAX = 1 << 17  # elements: larger tensors are reduced at the full count untried (trying costs, and they
# reduce less often per element)
_invariant: dict = {}


def reduction(op: Callable[[torch.Tensor], torch.Tensor], t: torch.Tensor) -> torch.Tensor:
    """op(t), where op reduces (sums, norms, matrix products), with the original's bits: at the lent pool's
    count where op is thread-invariant for tensors like t, else at the full count (`all_threads`). Some
    reductions never split their work: torch computes an L2 norm of a contiguous tensor, or a mean along one
    dimension of a matrix, one output per thread. Which ones is torch's business, so it is tried once per op,
    shape, dtype and count on random tensors; a reduction that splits its work rounds differently on most.
    `op` is a module-level function: the answers are kept per function object. (Called a few times per tensor
    per step: `is_cpu` and the thread-local read inline, ~1 us a call less than `device.type` and `task()`.)"""
    running = getattr(_local, "task", None)
    if running is not None:  # a pool of one, beside other tasks: the probe and any split op run on the step's thread
        if not t.is_cpu:
            return op(t)
        key = (op, t.shape, t.dtype, running.threads, 1)
        same = _invariant.get(key) if t.is_contiguous() else False
        if same is None:
            same = _invariant[key] = running.call(lambda: _thread_invariant(op, t, running.threads, 1))
        return op(t) if same else running.call(lambda: op(t))
    pool = getattr(_local, "pool", None)
    if pool is None or not pool.lent or not t.is_cpu:
        return op(t)
    key = (op, t.shape, t.dtype, pool.threads, pool.size)
    same = _invariant.get(key) if t.is_contiguous() else False
    if same is None:
        same = _invariant[key] = _thread_invariant(op, t, pool.threads, pool.size)
    if same:
        return op(t)
    with all_threads:
        return op(t)


def _thread_invariant(op: Callable[[torch.Tensor], torch.Tensor], like: torch.Tensor, full: int, fewer: int) -> bool:
    if like.numel() > PROBE_MAX:
        return False
    return same_bits_at(op, random_inputs(like.shape, like.dtype, PROBES), full, fewer)


def _chunked_mean(t: torch.Tensor, threads: int) -> torch.Tensor:
    """t.mean() as torch computes it at `threads` intra-op threads, at any count: the elements split into one
    equal chunk per thread (but no more chunks than whole GRAINs of elements begun), each summed on its own, the
    partial sums added in order onto zero, and the total divided by n."""
    flat = t.reshape(-1)
    n = flat.numel()
    parts = max(1, min(threads, -(-n // GRAIN)))
    chunk = -(-n // parts)
    total = torch.zeros((), dtype=t.dtype, device=t.device)
    for start in range(0, n, chunk):
        total = total + flat[start:start + chunk].sum()
    return total / n


_chunked_same: dict = {}


def mean(t: torch.Tensor) -> torch.Tensor:
    """t.mean() with the bits of the step's full count. CPU fp32 means split among threads (from GRAIN
    elements), so a side-by-side task at a pool of one computes the full pool's chunks itself (tried once per
    size and count against torch's own mean, on inputs of widely spread magnitudes that show any other order);
    other dtypes, and sizes where that fails, go to the step's thread."""
    running = task()
    if running is None or t.device.type != "cpu" or t.dtype != torch.float32 or not t.is_contiguous():
        return at_full_count(t.mean)
    key = (t.numel(), running.threads)
    same = _chunked_same.get(key)
    if same is None:
        same = _chunked_same[key] = running.call(lambda: _chunks_match(t.numel(), running.threads))
    return _chunked_mean(t, running.threads) if same else running.call(t.mean)


def _chunks_match(n: int, threads: int) -> bool:
    g = torch.Generator().manual_seed(0)
    before = torch.get_num_threads()
    try:
        for _ in range(PROBES // 4):
            x = torch.randn(n, generator=g) * torch.randn(n, generator=g).mul_(4).exp_()
            torch.set_num_threads(threads)
            full = x.mean()
            torch.set_num_threads(1)
            if not torch.equal(full, _chunked_mean(x, threads)):
                return False
        return True
    finally:
        torch.set_num_threads(before)


def random_inputs(shape: tuple[int, ...], dtype: torch.dtype, count: int) -> Iterator[torch.Tensor]:
    """`count` standard-normal tensors in `dtype`, from a private generator (the global one is never touched),
    made one at a time: a probe that fails early makes no more."""
    g = torch.Generator().manual_seed(0)
    for _ in range(count):
        yield torch.randn(shape, generator=g).to(dtype)


def same_bits_at(op: Callable[[torch.Tensor], torch.Tensor], inputs: Iterable[torch.Tensor], full: int,
                 fewer: int) -> bool:
    """Whether op gives the same bits with `fewer` intra-op threads as with `full`, on every input (a clone each
    time: op may work in place, as SCORN's normalisation of a vector does). The caller's count is restored."""
    before = torch.get_num_threads()
    try:
        for x in inputs:
            torch.set_num_threads(full)
            result = op(x.clone())
            torch.set_num_threads(fewer)
            if not torch.equal(result, op(x.clone())):
                return False
        return True
    finally:
        torch.set_num_threads(before)


@contextmanager
def bits_ahead(rounded: Iterable[torch.Tensor], stepped: Iterable[torch.Tensor] = (), *,
               helper: bool = True) -> Iterator[Pool]:
    """Within the block, stochastic rounding on CPU takes its bits from a stream drawn ahead on a helper thread;
    the results and the global generator's state after the block are those of drawing each time. `rounded`: the
    tensors the block will round (they decide whether a thread is worth starting); `stepped`: every tensor its
    elementwise arithmetic runs on.

    The helper (`helper=False`: none) gets a CPU the intra-op pool leaves idle or else one of the pool's
    threads: the elementwise arithmetic then runs one thread short while reductions that split their work
    (`all_threads`, `reduction`) keep the full count, provided every stepped tensor splits alike at both counts.
    Whether the helper pays depends on the step and the machine (see HelperChoice)."""
    threads = torch.get_num_threads()
    status = Pool(threads)
    if getattr(_local, "ahead", None) is not None or os.environ.get("OPTINSPECT_BITS_AHEAD") == "0":
        yield status  # nested, or switched off: e.g. many 1-thread processes share the CPUs
        return
    rounded = list(rounded)
    size = sum(t.numel() for t in rounded if t.device.type == "cpu" and t.dtype in (torch.bfloat16, torch.float16))
    if size == 0 or size < AHEAD_MIN or not _draws_concatenate():
        yield status
        return
    idle = _cores() > threads
    status.possible = idle or threads >= 2 and all(
        splits_alike_at(t.numel(), threads) for t in (*rounded, *stepped) if t.device.type == "cpu")
    if not (helper and status.possible):
        yield status
        return
    ahead = _local.ahead = _BitsAhead()
    status.helped = True
    if not idle:
        status.lent, status.size = True, threads - 1
        _local.pool = status
        torch.set_num_threads(status.size)
    try:
        yield status
    finally:
        _end(ahead)


class TimedChoice:
    """Which of two ways to run an optimizer's steps is faster, found by running both: the first steps that could
    go either way alternate, each way two steps in a row with only the second timed (a step inherits the
    allocator's state from the one before), three timed steps each; then the way with the lower median is kept
    (in turn on a tie). The results are the same either way; only the time differs, with the step, the machine
    and even the allocator's state."""

    TRIALS = 3  # timed steps each way
    RUN = 2  # steps in a row each way

    def __init__(self, choice: bool | None = None) -> None:
        self.choice = choice
        self._times: tuple[list[float], list[float]] = ([], [])  # the first way, the second
        self._tried = -1  # steps that could go either way, less the first (it builds the state)

    @property
    def deciding(self) -> bool:
        """Still trying both ways (steps that could go either way have run, not yet enough of them)."""
        return self.choice is None and self._tried >= 0

    def use(self) -> bool:
        if self.choice is not None:
            return self.choice
        return max(self._tried, 0) // self.RUN % 2 == 0

    def timed(self, way: bool, seconds: float) -> None:
        """A step that could have gone either way went `way` and took `seconds`."""
        if self.choice is not None:
            return
        if self._tried >= 0 and self._tried % self.RUN == self.RUN - 1:
            self._times[way].append(seconds)
        self._tried += 1
        if min(len(t) for t in self._times) >= self.TRIALS:
            self.choice = statistics.median(self._times[1]) < statistics.median(self._times[0])


class HelperChoice(TimedChoice):
    """Whether an optimizer's steps draw their bits on the helper thread. bf16 LoRA (1000 tensors) on 2 cores,
    where the pool lends the helper a thread, ms per step in turn vs helped: Persona (elementwise) 484 vs 303;
    REMASTER 1030 vs 1150, where each of its dot products wakes the lent thread on the helper's core and libgomp's
    workers then spin, ~90 us a time; SCORN 1680 vs 1100 under glibc's defaults but 1270 vs 1430 with freed
    memory recycled (its many small temporaries). A CPU that looks idle may not be (a container's CPU quota). So
    it is tried (`TimedChoice`); the bits are the same either way."""

    possible: bool | None = None  # whether the last step could have used the helper (None: no step yet)

    @property
    def settled(self) -> bool:
        """Decided, or the steps cannot use the helper: other ways may be tried against the way kept."""
        return self.choice is not None or self.possible is False

    def record(self, pool: Pool, seconds: float) -> None:
        self.possible = pool.possible
        if pool.possible:
            self.timed(pool.helped, seconds)

    @contextmanager
    def step(self, rounded: Iterable[torch.Tensor], stepped: Iterable[torch.Tensor] = ()) -> Iterator[Pool]:
        """`bits_ahead` for one optimizer step, helped or not as decided, and timed while deciding."""
        start = time.perf_counter()
        with bits_ahead(rounded, stepped, helper=self.use()) as pool:
            yield pool
        self.record(pool, time.perf_counter() - start)


def helper_choice(optimizer: object) -> HelperChoice:
    """The optimizer's own `HelperChoice` (made on its first step)."""
    found = optimizer.__dict__.get("_helper")
    if found is None:
        found = optimizer.__dict__["_helper"] = HelperChoice()
    return found


def _end(ahead: _BitsAhead) -> None:
    """Close the stream and give the pool its thread back."""
    _local.ahead = None
    pool = getattr(_local, "pool", None)
    _local.pool = None
    try:
        ahead.close()
    finally:
        if pool is not None:
            torch.set_num_threads(pool.threads)


def settle() -> None:
    """Before any other draw from the global generator within a `bits_ahead` block: catch it up and draw
    directly from then on."""
    ahead = getattr(_local, "ahead", None)
    if ahead is not None:
        _end(ahead)


def stream() -> _BitsAhead | None:
    """The stream this thread's stochastic rounding takes its bits from, or None (draw in turn)."""
    return getattr(_local, "ahead", None)
