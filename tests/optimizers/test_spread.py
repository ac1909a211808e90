"""Serial reductions spread over the pool's threads (`_spread`): the probe that decides which dot products are serial,
and the runner, checked against torch itself."""

import threading

import pytest
import torch

from optinspect.optimizers._spread import _mirrored_dot, dot_is_serial, spread


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
