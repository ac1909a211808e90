"""Work spread over the intra-op pool's threads, each thread at a pool of one, with the bits of doing it in turn
at the full count: serial reductions (`spread`), and whole per-parameter steps (`side_by_side`).

On CPU torch computes a bf16 or fp16 dot product of a LoRA matrix's size in one serial chain, whatever the pool:
~2 ns an element, 105 us for a 3072x16 matrix, while the pool's other threads idle. Prodigy takes one per tensor
(about half of its bf16 step), orthograd two. They are independent of each other, so each thread of the pool can
take one at a time, each at a pool of one: the bits are those of the original's call, provided the reduction
really is serial at that size. Which reductions are is torch's business (bf16 dot products split among threads
from about a million elements, fp32 ones from 32k): it is tried once per size, dtype and count, on inputs whose
result is nothing but rounding error, so that any other order of additions shows.

A LoRA's steps are many small ones (1000 matrices of 49k elements): each op is too small for torch to gain much
from splitting it, and the stochastic-rounding draws are one serial generator. Whole steps side by side keep
both cores busy (REMASTER's bf16 LoRA step: ~0.6 s against ~0.9 s in turn), the draws still in the parameters'
order.
"""

from __future__ import annotations

import itertools
import os
import queue
import threading
from collections.abc import Callable
from typing import TypeVar

import torch

from ._ahead import FullCount, enter_task, random_inputs, same_bits_at, stream, task

__all__ = ["dot_is_serial", "in_order", "side_by_side", "spread"]

T = TypeVar("T")
AHEAD_TASKS = 16  # done tasks whose ordered work may wait for an earlier one: bounds the memory they hold
DOT_PROBES = 4  # one is almost surely enough (see _mirrored_dot); a few more cost little
DOT_PROBE_MAX = 1 << 24  # elements: a larger dot is left at the full count untried (its own time dwarfs the gain)
_serial: dict = {}


def _mirrored_dot(t: torch.Tensor) -> torch.Tensor:
    """dot([a, a, r], [b, -b, 0]): exactly zero, but the serial sum leaves the rounding errors of the first half's
    running sum behind, which any other grouping (threads' chunks, several accumulators) changes. A random dot
    product would not show it: its fp32 sum is rounded to bf16 at the end, which hides the last bits."""
    h = t.numel() // 2
    a, b, rest = t[:h], t[h:2 * h], t[2 * h:]
    return torch.dot(torch.cat([a, a, rest]), torch.cat([b, -b, torch.zeros_like(rest)]))


def dot_is_serial(t: torch.Tensor) -> bool:
    """Whether torch.dot of t with a vector like it gives the same bits at a pool of one thread as at the current
    pool (and so may run beside others, one per thread): CPU tensors only."""
    threads = torch.get_num_threads()
    n = t.numel()
    if threads < 2 or n > DOT_PROBE_MAX or t.device.type != "cpu":
        return False
    key = (n, t.dtype, threads)
    found = _serial.get(key)
    if found is None:
        found = _serial[key] = same_bits_at(_mirrored_dot, random_inputs((n,), t.dtype, DOT_PROBES), threads, 1)
    return found


def spread(tasks: list[Callable[[], T]]) -> list[T]:
    """Run the tasks over the pool's threads, each thread at a pool of one (a task may only do what gives the same
    bits there: serial reductions, elementwise arithmetic); their results in the tasks' order. Inline where there
    is one thread, one task, or a helper already drawing random bits (it needs a core of its own)."""
    threads = torch.get_num_threads()
    if threads < 2 or len(tasks) < 2 or stream() is not None:
        return [task() for task in tasks]
    return side_by_side(tasks)


def side_by_side(tasks: list[Callable[[], T]]) -> list[T]:
    """Run whole tasks (an optimizer's per-parameter steps) on the pool's threads, each at a pool of one, with
    the results of running them in turn at the caller's count:

    * work that splits by thread count goes through `_ahead.at_full_count`/`mean`/`reduction`, which run it on
      the calling thread (it keeps its pool and serves those calls meanwhile) or compute the full pool's chunks;
    * random numbers are drawn in the tasks' order, so the generator hands out the values it would in turn:
      a task queues whatever draws (`in_order`: its stochastic rounding), and that work runs after every earlier
      task's, by whichever worker finishes the task whose turn it is.

    The caller's thread count is unchanged throughout; the results come in the tasks' order, and the first
    error a task raised is raised here (tasks not yet started are then skipped)."""
    threads = torch.get_num_threads()
    if threads < 2 or len(tasks) < 2:
        return [task() for task in tasks]
    run = _Run(tasks, threads)
    helpers = min(threads, len(tasks))
    _WORKERS.start(run.work, helpers)
    run.serve(helpers)
    if run.failed:
        raise run.failed[0]
    return run.results


class _Box:
    __slots__ = ("done", "value", "error")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value = None
        self.error: BaseException | None = None


_FINISHED = object()


class _Run:
    """One `side_by_side` call: the tasks, the turn for drawing, and the queue of work for the calling thread."""

    def __init__(self, tasks: list[Callable[[], T]], threads: int) -> None:
        self.tasks = tasks
        self.threads = threads
        self.results: list = [None] * len(tasks)
        self.failed: list[BaseException] = []
        self.order = itertools.count()  # next() on it is atomic: each task is taken once, in order
        self.grad = torch.is_grad_enabled()  # per thread: the workers take the caller's (an optimizer's no_grad)
        self.requests: queue.SimpleQueue = queue.SimpleQueue()
        self.turn = 0  # every task before this one is done, its ordered work too
        self.ready: dict[int, list[Callable[[], None]]] = {}  # done tasks' ordered work, waiting for its turn
        self.chained = False  # a thread is running ordered work
        self.cond = threading.Condition()

    def serve(self, helpers: int) -> None:
        """On the calling thread: run what the tasks send until every helper is through. Interrupted meanwhile
        (Ctrl-C), it stops the tasks not yet started and keeps serving the running ones until they end: a worker
        left waiting would hang every later step. The interruption is raised afterwards (`failed`)."""
        while helpers:
            try:
                item = self.requests.get()
            except BaseException as e:  # noqa: BLE001 - raised by side_by_side once the workers are through
                with self.cond:
                    self.failed.append(e)
                    self.cond.notify_all()
                continue
            if item is _FINISHED:
                helpers -= 1
                continue
            fn, box = item
            try:
                box.value = fn()
            except BaseException as e:  # noqa: BLE001 - raised in the task that asked
                box.error = e
            box.done.set()

    def call(self, fn: Callable[[], T]) -> T:
        box = _Box()
        self.requests.put((fn, box))
        box.done.wait()
        if box.error is not None:
            raise box.error
        return box.value

    def work(self) -> None:
        """On a worker: take tasks in order until none are left."""
        try:
            with torch.set_grad_enabled(self.grad):
                while True:
                    # bounded: each done task waiting for its turn holds its working tensors. Waited for before
                    # taking a task, never after: the turn may be the very task taken.
                    with self.cond:
                        self.cond.wait_for(lambda: len(self.ready) < AHEAD_TASKS or self.failed)
                    i = next(self.order)
                    if i >= len(self.tasks) or self.failed:
                        return
                    self._one(i)
        finally:
            self.requests.put(_FINISHED)

    def _one(self, i: int) -> None:
        running = _Task(self)
        enter_task(running)
        try:
            self.results[i] = self.tasks[i]()
        except BaseException as e:  # noqa: BLE001 - raised by the caller
            self.failed.append(e)
        finally:
            enter_task(None)
            self._finish(i, running.ordered)

    def _finish(self, i: int, ordered: list[Callable[[], None]]) -> None:
        """Task i is done: its ordered work joins the queue, and unless another thread is already at it, this
        one runs every queued piece whose turn has come, in the tasks' order. So no worker waits for a turn: the
        one that finishes the task whose turn it is carries on with whatever is queued after it."""
        with self.cond:
            self.ready[i] = ordered
            if self.chained:
                return
            self.chained = True
        while True:
            with self.cond:
                if self.turn not in self.ready or self.failed:
                    self.chained = False
                    self.cond.notify_all()
                    return
                work = self.ready.pop(self.turn)
            try:
                for fn in work:
                    fn()
            except BaseException as e:  # noqa: BLE001 - raised by the caller
                self.failed.append(e)
            with self.cond:
                self.turn += 1
                self.cond.notify_all()


class _Task(FullCount):
    """What the running task's thread sees (`_ahead.task()`)."""

    def __init__(self, run: _Run) -> None:
        self.run = run
        self.threads = run.threads
        self.ordered: list[Callable[[], None]] = []

    def call(self, fn: Callable[[], T]) -> T:
        return self.run.call(fn)

    def in_order(self, fn: Callable[[], None]) -> None:
        self.ordered.append(fn)


def in_order(fn: Callable[[], None]) -> bool:
    """Inside a side-by-side task, run fn after the task, once every earlier task's ordered work has run (drawing
    random numbers there draws them in the tasks' order), by whichever thread gets there; say so. Elsewhere
    False."""
    running = task()
    if isinstance(running, _Task):
        running.in_order(fn)
        return True
    return False


class _Workers:
    """Threads kept for the process's life (daemons), each at an intra-op pool of one: a thread made per call would
    start each time with an empty allocator arena and no scratch buffers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._count = 0
        self._pid = os.getpid()

    def start(self, job: Callable[[], None], k: int) -> None:
        with self._lock:
            if self._pid != os.getpid():  # a forked child has none of its parent's threads
                self._jobs, self._count, self._pid = queue.SimpleQueue(), 0, os.getpid()
            if self._count < k:
                threads = torch.get_num_threads()
                ready = [threading.Event() for _ in range(k - self._count)]
                for event in ready:
                    threading.Thread(target=self._loop, args=(self._jobs, event), name="optinspect-worker",
                                     daemon=True).start()
                for event in ready:
                    event.wait()
                # each new worker set the process-wide default (what a new thread starts with) to one: restored
                torch.set_num_threads(threads)
                self._count = k
        for _ in range(k):
            self._jobs.put(job)

    @staticmethod
    def _loop(jobs: queue.SimpleQueue, ready: threading.Event) -> None:
        torch.get_num_threads()  # a thread's count is initialised on its first use: then set it to one
        torch.set_num_threads(1)
        ready.set()
        while True:
            job = jobs.get()
            try:
                job()
            except BaseException:  # noqa: BLE001, S110 - a job reports its own errors; the thread stays for the next
                pass


_WORKERS = _Workers()
