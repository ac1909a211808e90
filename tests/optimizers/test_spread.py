"""Work spread over the pool's threads (`_spread`): the probe that decides which dot products are serial, the runner,
and whole steps side by side (draws in turn, split reductions at the full count), checked against torch itself."""

import random
import threading
import time

import pytest
import torch

from optinspect.optimizers import _ahead
from optinspect.optimizers._spread import _mirrored_dot, dot_is_serial, in_order, side_by_side, spread


def test_the_probe_shows_any_other_grouping():
    """The probe's input sums to zero exactly, so its result is all rounding error of the order taken: the halves
    added separately (two threads' chunks) give exactly 0, one serial chain does not; bf16's final rounding hides
    the difference on random input."""
    g = torch.Generator().manual_seed(3)
    shown = 0
    for _ in range(8):
        t = torch.randn(4096, generator=g)
        h = t.numel() // 2
        x = torch.cat([t[:h], t[:h]])
        y = torch.cat([t[h:], -t[h:]])
        serial = torch.zeros((), dtype=torch.float32)
        for a, b in zip(x.tolist(), y.tolist(), strict=True):  # one fp32 chain, in order
            serial = serial + torch.tensor(a, dtype=torch.float32) * torch.tensor(b, dtype=torch.float32)
        halves = torch.dot(x[:h], y[:h]) + torch.dot(x[h:], y[h:])
        assert halves == 0
        shown += bool(serial != halves)
        assert torch.equal(_mirrored_dot(t), torch.dot(x, y))
    assert shown >= 6


def test_which_dots_are_serial_is_torchs_answer(two_threads):
    """torch computes a bf16 or fp16 dot of a LoRA matrix's size in one chain; an fp32 one splits among threads
    (and so must stay at the pool's count). Checked here on the dot products themselves."""
    assert dot_is_serial(torch.zeros(3072, 16, dtype=torch.bfloat16))
    assert dot_is_serial(torch.zeros(49152, dtype=torch.float16))
    assert not dot_is_serial(torch.zeros(49152))
    g = torch.Generator().manual_seed(0)
    t = torch.randn(49152, generator=g)
    torch.set_num_threads(1)
    one = _mirrored_dot(t)
    torch.set_num_threads(2)
    assert not torch.equal(one, _mirrored_dot(t))  # the fp32 answer, seen directly
    assert torch.get_num_threads() == 2


def test_one_thread_never_spreads():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert not dot_is_serial(torch.zeros(49152, dtype=torch.bfloat16))
        seen = []
        spread([lambda: seen.append(threading.current_thread()), lambda: seen.append(threading.current_thread())])
        assert seen == [threading.current_thread()] * 2
    finally:
        torch.set_num_threads(threads)


def test_spread_runs_every_task_once_in_order_on_the_pools_threads(two_threads):
    ran, threads_seen, counts = [], set(), set()
    barrier = threading.Barrier(2, timeout=10)

    def task(i):
        def run():
            if i < 2:
                barrier.wait()  # the first two run at once: on two threads
            ran.append(i)
            threads_seen.add(threading.get_ident())
            counts.add(torch.get_num_threads())
            return i * i
        return run

    assert spread([task(i) for i in range(50)]) == [i * i for i in range(50)]
    assert sorted(ran) == list(range(50))
    assert len(threads_seen) == 2
    assert counts == {1}  # each at a pool of one
    assert torch.get_num_threads() == 2


def test_spread_keeps_the_callers_grad_mode_and_raises_a_tasks_error(two_threads):
    modes = []
    with torch.no_grad():
        spread([lambda: modes.append(torch.is_grad_enabled())] * 8)
    assert modes == [False] * 8

    def bad():
        raise ValueError("task failed")

    with pytest.raises(ValueError, match="task failed"):
        spread([lambda: None] * 5 + [bad] + [lambda: None] * 5)
    assert torch.get_num_threads() == 2


def test_side_by_side_draws_in_the_tasks_order(two_threads):
    """Tasks that queue draws after work of random length (two each): each gets the numbers it would draw in
    turn, and the global generator ends where drawing them in turn leaves it."""
    sizes = [random.Random(i).randrange(1, 5000) for i in range(40)]
    torch.manual_seed(7)
    want = [torch.randint(0, 1 << 16, (n,), dtype=torch.int32) for n in sizes]
    after = torch.get_rng_state()
    jitter = random.Random(1)
    delays = [jitter.random() * 2e-3 for _ in sizes]

    got = [[] for _ in sizes]

    def draw(i, n):
        got[i].append(torch.randint(0, 1 << 16, (n,), dtype=torch.int32))

    def task(i):
        def run():
            time.sleep(delays[i])  # finish out of order
            assert in_order(lambda: draw(i, sizes[i] // 2))
            time.sleep(delays[-1 - i])
            assert in_order(lambda: draw(i, sizes[i] - sizes[i] // 2))  # a second draw of the same task
        return run

    torch.manual_seed(7)
    side_by_side([task(i) for i in range(len(sizes))])
    got = [torch.cat(parts) for parts in got]
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
    assert torch.equal(torch.get_rng_state(), after)


def test_side_by_side_orders_work_after_the_task_and_serves_full_count_work(two_threads):
    """Ordered work runs after its task, on a worker; `at_full_count` runs on the caller's thread at its count,
    and `all_threads` inside a task is refused. The workers are kept between calls."""
    caller = threading.get_ident()
    log, served, workers = [], [], []
    meet = [threading.Barrier(2, timeout=10)]

    def task(i):
        def run():
            if i < 2:
                meet[0].wait()  # the first two run at once: on both workers, however busy the machine
            workers.append(threading.get_ident())
            assert in_order(lambda: log.append(("ordered", i, threading.get_ident())))
            log.append(("task", i, threading.get_ident()))
            served.append(_ahead.at_full_count(lambda: (threading.get_ident(), torch.get_num_threads())))
            with pytest.raises(RuntimeError, match="at_full_count"), _ahead.all_threads:
                pass
            return torch.get_num_threads()
        return run

    assert side_by_side([task(i) for i in range(6)]) == [1] * 6
    for i in range(6):
        (kind_a, _, _), (kind_b, _, tb) = [e for e in log if e[1] == i]
        assert (kind_a, kind_b) == ("task", "ordered") and tb != caller
    assert set(served) == {(caller, 2)}
    first = set(workers)
    workers.clear()
    meet[0] = threading.Barrier(2, timeout=10)
    side_by_side([task(i) for i in range(6)])
    assert set(workers) == first and len(first) == 2 and caller not in first


def test_side_by_side_raises_the_first_error_and_stops_the_queue(two_threads):
    """A failing task: the error is raised, no later task's ordered work runs (no hang), the caller's count is
    kept and the workers are free for the next call."""
    ran = []

    def bad():
        time.sleep(0.01)
        raise ValueError("task failed")

    def draws(i):
        def run():
            in_order(lambda: ran.append(i))
            return i
        return run

    with pytest.raises(ValueError, match="task failed"):
        side_by_side([draws(0), bad, draws(2), draws(3), draws(4)])
    assert set(ran) <= {0} and torch.get_num_threads() == 2  # 0's work may run before the failure, no later one
    assert _side_by_side_within(20, [draws(5), draws(6)]) == [5, 6] and ran[-2:] == [5, 6]


@pytest.mark.parametrize("n", [1000, 32768 + 64, 49152, 65537, 100000, 1 << 20])
def test_a_mean_in_a_task_is_the_full_pools(n, two_threads):
    """fp32 means split among threads: in a task at a pool of one, `mean` computes the full pool's chunks and
    gives torch's own answer at two threads; bf16 ones go to the caller's thread."""
    g = torch.Generator().manual_seed(n)
    xs = [torch.randn(n, generator=g) * torch.randn(n, generator=g).mul(4).exp() for _ in range(6)]
    xs.append(torch.randn(n, generator=g).to(torch.bfloat16))
    want = [x.mean() for x in xs]
    got = side_by_side([lambda x=x: _ahead.mean(x) for x in xs])
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
    assert _ahead._chunked_same[(n, 2)]  # computed in the task, not sent to the caller
    if n >= 49152:  # the point: one thread alone gives other bits
        torch.set_num_threads(1)
        alone = [x.mean() for x in xs[:6]]
        torch.set_num_threads(2)
        assert any(not torch.equal(a, b) for a, b in zip(alone, want, strict=True))


def _sum(t):
    return t.sum()


def _l2(t):
    return t.norm(2)


@pytest.mark.parametrize("op", [_sum, _l2])
def test_a_reduction_in_a_task_gives_the_full_pools_bits(op, two_threads):
    """`reduction` inside a task: tried once at the full count and at one thread (on the caller's thread); an op
    that splits (a sum over 49k elements) is computed there, one that does not in the task."""
    g = torch.Generator().manual_seed(2)
    xs = [torch.randn(49152, generator=g) * torch.randn(49152, generator=g).mul(4).exp() for _ in range(8)]
    want = [op(x) for x in xs]
    got = side_by_side([lambda x=x: _ahead.reduction(op, x) for x in xs])
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
    assert _ahead._invariant[(op, xs[0].shape, xs[0].dtype, 2, 1)] is (op is _l2)


def test_an_interrupted_step_lets_its_workers_finish(two_threads, monkeypatch):
    """Ctrl-C while the caller serves the tasks: no task starts after it, the running ones are still served (none
    is left waiting for ever), the interruption is raised, and the next call finds its workers free."""
    import queue

    from optinspect.optimizers import _spread

    class Interrupted(queue.Queue):
        raised = False

        def get(self, *args, **kwargs):
            if not Interrupted.raised:
                Interrupted.raised = True
                raise KeyboardInterrupt
            return super().get(*args, **kwargs)

    started = []

    def task(i):
        def run():
            started.append(i)
            time.sleep(0.01)
            return _ahead.at_full_count(lambda: i)
        return run

    monkeypatch.setattr(_spread.queue, "SimpleQueue", Interrupted)
    with pytest.raises(KeyboardInterrupt):
        side_by_side([task(i) for i in range(20)])
    assert len(started) < 20
    monkeypatch.undo()
    assert _side_by_side_within(20, [task(i) for i in range(4)]) == [0, 1, 2, 3]


def _side_by_side_within(seconds: float, tasks: list) -> list | None:
    """side_by_side(tasks) from another thread (at this one's count), or None if it has not returned in time: a
    hang fails the test instead of stalling it."""
    out = []
    threads = torch.get_num_threads()
    t = threading.Thread(target=lambda: (torch.set_num_threads(threads), out.append(side_by_side(tasks))),
                         daemon=True)
    t.start()
    t.join(timeout=seconds)
    return out[0] if out else None


def test_ordered_work_runs_in_order_and_a_full_queue_never_stalls(two_threads, monkeypatch):
    """`in_order` work runs in the tasks' order whatever order they finish in, on whichever thread gets there;
    with the queue of done tasks bounded to one, many tiny tasks still all run (a worker that took the task whose
    turn it is must never wait for room)."""
    from optinspect.optimizers import _spread
    from optinspect.optimizers._spread import in_order

    class SlowCount:
        """Task indices, handed out once each; the one for task 5 arrives late (its thread was descheduled)."""

        def __init__(self):
            self.n, self.lock = 0, threading.Lock()

        def __iter__(self):
            return self

        def __next__(self):
            with self.lock:
                i, self.n = self.n, self.n + 1
            if i == 5:
                time.sleep(0.05)
            return i

    monkeypatch.setattr(_spread, "AHEAD_TASKS", 1)
    monkeypatch.setattr(_spread.itertools, "count", SlowCount)
    ran = []
    jitter = random.Random(2)
    delays = [jitter.random() * 1e-3 if jitter.random() < 0.2 else 0.0 for _ in range(300)]

    def task(i):
        def run():
            time.sleep(delays[i])
            assert in_order(lambda: ran.append(i))
            return i
        return run

    assert _side_by_side_within(30, [task(i) for i in range(300)]) == list(range(300))
    assert ran == list(range(300))
    assert not in_order(lambda: None)  # outside a task: nothing queued
