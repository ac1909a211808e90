"""Serial reductions spread over the intra-op pool's threads, one reduction per thread at a time: the same bits,
several at once.

On CPU torch computes a bf16 or fp16 dot product of a LoRA matrix's size in one serial chain, whatever the pool:
~2 ns an element, 105 us for a 3072x16 matrix, while the pool's other threads idle. Prodigy takes one per tensor
(about half of its bf16 step), orthograd two. They are independent of each other, so each thread of the pool can
take one at a time, each at a pool of one: the bits are those of the original's call, provided the reduction
really is serial at that size. Which reductions are is torch's business (bf16 dot products split among threads
from about a million elements, fp32 ones from 32k): it is tried once per size, dtype and count, on inputs whose
result is nothing but rounding error, so that any other order of additions shows.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from typing import TypeVar

import torch

from ._ahead import random_inputs, same_bits_at, stream

__all__ = ["dot_is_serial", "spread"]

T = TypeVar("T")
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
    bits there: serial reductions, elementwise arithmetic); their results in the tasks' order. The calling thread
    takes part. Inline where there is one thread, one task, or a helper already drawing random bits."""
    threads = torch.get_num_threads()
    if threads < 2 or len(tasks) < 2 or stream() is not None:
        return [task() for task in tasks]
    results: list = [None] * len(tasks)
    failed: list[BaseException] = []
    order = itertools.count()  # next() on it is atomic: each task is taken once
    grad = torch.is_grad_enabled()  # grad mode is per thread: the helpers take the caller's (an optimizer's no_grad)

    def work() -> None:
        try:
            with torch.set_grad_enabled(grad):
                for i in order:
                    if i >= len(tasks) or failed:
                        return
                    results[i] = tasks[i]()
        except BaseException as e:  # noqa: BLE001 - raised by the calling thread
            failed.append(e)

    torch.set_num_threads(1)  # helpers made now start with a pool of one (each thread keeps its own count)
    helpers = [threading.Thread(target=work, name="optinspect-spread", daemon=True)
               for _ in range(min(threads, len(tasks)) - 1)]
    try:
        for h in helpers:
            h.start()
        work()
        for h in helpers:
            h.join()
    finally:
        torch.set_num_threads(threads)
    if failed:
        raise failed[0]
    return results
