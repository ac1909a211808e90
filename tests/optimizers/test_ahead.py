"""Random bits drawn ahead on a helper thread (optimizers/_ahead.py): the oracle is torch's own global generator,
drawn in turn, and torch's own reductions on the full intra-op pool."""

import threading

import pytest
import torch

from optinspect.optimizers._rounding import copy_stochastic_


def _rounding_run(sizes, *, fp16_exact_at=None, ahead=False):
    """Round fp32 tensors of the given sizes into bf16 one after another from a seeded global generator (an
    fp16 exact rounding at one position, if asked); the results and the generator state left."""
    from optinspect.optimizers._ahead import bits_ahead

    g = torch.Generator().manual_seed(7)
    sources = [torch.randn(n, generator=g) for n in sizes]
    targets = [torch.empty(n, dtype=torch.float16 if i == fp16_exact_at else torch.bfloat16)
               for i, n in enumerate(sizes)]
    torch.manual_seed(99)
    with bits_ahead(targets) if ahead else _nothing():
        for i, (t, s) in enumerate(zip(targets, sources, strict=True)):
            copy_stochastic_(t, s, fp16_exact=i == fp16_exact_at)
    return targets, torch.get_rng_state()


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("sizes", [
    [7, 3, 1000],  # within one chunk, then straddling two
    [500, 500, 1],  # exactly on chunk boundaries
    [2600],  # one request over five chunks
    [0, 13, 0, 499, 2],
    [1200, 5, 1300, 77, 4000],
])
def test_bits_drawn_ahead_are_the_bits_drawn_in_turn(sizes, bits_ahead_on):
    plain, state_plain = _rounding_run(sizes)
    ahead, state_ahead = _rounding_run(sizes, ahead=True)
    assert len(bits_ahead_on) == 1
    for a, b in zip(ahead, plain, strict=True):
        assert torch.equal(a.view(torch.int16), b.view(torch.int16))
    # the global generator is left where drawing in turn leaves it: the next draw is the same
    assert torch.equal(state_ahead, state_plain)


def test_another_draw_within_the_block_catches_the_generator_up_first(bits_ahead_on):
    """fp16 exact rounding draws floats, which the stream cannot serve: the generator is caught up before it
    draws, and everything after it draws in turn."""
    sizes = [700, 300, 900, 50]
    plain, state_plain = _rounding_run(sizes, fp16_exact_at=1)
    ahead, state_ahead = _rounding_run(sizes, fp16_exact_at=1, ahead=True)
    for a, b in zip(ahead, plain, strict=True):
        assert torch.equal(a.view(torch.int16), b.view(torch.int16))
    assert torch.equal(state_ahead, state_plain)


def test_a_block_that_draws_nothing_leaves_the_generator_alone(bits_ahead_on):
    from optinspect.optimizers._ahead import bits_ahead

    torch.manual_seed(5)
    before = torch.get_rng_state()
    with bits_ahead([torch.empty(4000, dtype=torch.bfloat16)]):
        pass
    assert len(bits_ahead_on) == 1 and torch.equal(torch.get_rng_state(), before)


def test_no_thread_for_fp32_work_or_when_switched_off(monkeypatch, bits_ahead_on):
    from optinspect.optimizers import _ahead

    with _ahead.bits_ahead([torch.empty(4000, dtype=torch.float32)]):
        pass
    monkeypatch.setenv("OPTINSPECT_BITS_AHEAD", "0")  # switched off by the user
    with _ahead.bits_ahead([torch.empty(4000, dtype=torch.bfloat16)]):
        pass
    assert bits_ahead_on == []
    monkeypatch.delenv("OPTINSPECT_BITS_AHEAD")
    with _ahead.bits_ahead([torch.empty(4000, dtype=torch.bfloat16)], helper=False) as pool:
        pass  # a step that drew faster in turn
    assert bits_ahead_on == [] and pool.possible and not pool.helped
    with _ahead.bits_ahead([torch.empty(4000, dtype=torch.bfloat16)]) as pool:
        assert torch.get_num_threads() == pool.threads  # an idle CPU: the pool keeps its threads
    assert len(bits_ahead_on) == 1 and pool.helped and not pool.lent


def test_without_an_idle_cpu_the_pool_lends_a_thread_and_reductions_take_it_back(thread_lent):
    from optinspect.optimizers._ahead import all_threads, bits_ahead

    threads = torch.get_num_threads()
    with bits_ahead([torch.empty(4000, dtype=torch.bfloat16)]) as pool:
        assert pool.possible and pool.lent and torch.get_num_threads() == threads - 1
        with all_threads:
            assert torch.get_num_threads() == threads
            with all_threads:
                assert torch.get_num_threads() == threads
            assert torch.get_num_threads() == threads  # the inner block leaves the outer one's count
        assert torch.get_num_threads() == threads - 1
    assert torch.get_num_threads() == threads and len(thread_lent) == 1
    with all_threads:  # outside a step: nothing to give back
        assert torch.get_num_threads() == threads


@pytest.mark.parametrize("case", ["one thread", "no helper", "splits apart"])
def test_no_thread_lent_where_it_cannot_be(case, thread_lent):
    """One intra-op thread has none to lend; `helper=False` (a step faster in turn) keeps it; and a tensor whose
    split among threads is not whole 64-element vectors would be computed differently one thread short."""
    from optinspect.optimizers._ahead import bits_ahead

    if case == "one thread":
        torch.set_num_threads(1)
    sizes = [4000, 65664 if case != "splits apart" else 65576]
    with bits_ahead([torch.empty(n, dtype=torch.bfloat16) for n in sizes], helper=case != "no helper") as pool:
        pass
    assert not pool.lent and not pool.helped and thread_lent == []
    assert pool.possible == (case == "no helper")


def test_elementwise_ops_split_apart_round_apart():
    """Why the sizes matter: atan2's vector and scalar code differ in the last bit, and a thread's chunk ends in
    scalar code where it is not whole vectors (65576 elements on two threads: chunks of 32788)."""
    from optinspect.optimizers._ahead import splits_alike_at

    threads = torch.get_num_threads()
    g = torch.Generator().manual_seed(0)
    try:
        for n in (65576, 100003, 49152):
            x, y = torch.randn(n, generator=g), torch.randn(n, generator=g)
            results = []
            for t in (2, 1):
                torch.set_num_threads(t)
                results.append(torch.atan2(x, y))
            same = torch.equal(*results)
            assert splits_alike_at(n, 2) == (n == 49152)
            if n == 49152:
                assert same
    finally:
        torch.set_num_threads(threads)


_counts = []  # intra-op threads each reduction below ran on


def _norm(t):
    _counts.append(torch.get_num_threads())
    return t.norm(2)


def _sum(t):
    _counts.append(torch.get_num_threads())
    return t.sum()


def _dot(t):
    _counts.append(torch.get_num_threads())
    return torch.dot(t, t.flip(0))


@pytest.mark.parametrize("op", [_norm, _sum, _dot])
def test_a_reduction_in_a_lent_step_gives_the_full_pools_bits(op, thread_lent):
    """Whether torch splits a reduction's work is tried on random tensors: a sum or a dot product that splits
    must take the thread back, and whatever the answer the bits are those of the full pool."""
    from optinspect.optimizers import _ahead

    threads = torch.get_num_threads()
    g = torch.Generator().manual_seed(5)
    xs = [torch.randn(49152, generator=g) for _ in range(6)]
    want = [op(x) for x in xs]
    with _ahead.bits_ahead([torch.empty(4000, dtype=torch.bfloat16)]):
        _counts.clear()
        got = [_ahead.reduction(op, x) for x in xs]
        assert torch.get_num_threads() == threads - 1
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
    invariant = _ahead._invariant[(op, xs[0].shape, xs[0].dtype, threads, threads - 1)]
    assert _counts[-len(xs):] == [threads - 1 if invariant else threads] * len(xs)
    if op is not _norm:  # these split their work between threads: the attempt must find it out
        assert not invariant


def _pool(possible: bool, helped: bool):
    from optinspect.optimizers._ahead import Pool

    pool = Pool(2)
    pool.possible, pool.helped = possible, helped
    return pool


@pytest.mark.parametrize("helper_faster", [True, False])
def test_the_helper_is_tried_both_ways_and_the_faster_kept(helper_faster):
    from optinspect.optimizers._ahead import HelperChoice

    choice = HelperChoice()
    choice.record(_pool(False, False), 0.0)
    assert not choice.deciding  # nothing could use the helper yet
    asked, timed = [], []
    for k in range(13):
        use = choice.use()
        asked.append(use)
        before = sum(map(len, choice._times))
        # only the second step of each run counts: the first inherits the other way's allocator state
        choice.record(_pool(True, use), (1.0 if use == helper_faster else 2.0) + (5.0 if k % 2 else 0.0))
        timed.append(sum(map(len, choice._times)) > before)
        choice.record(_pool(False, False), 0.0)  # a step that could not use it tells nothing
    # the first step builds the state and is not timed; then two steps each way, the second timed
    assert asked == [True] + [True, True, False, False] * 3
    assert timed == [False] + [False, True] * 6
    assert not choice.deciding
    assert choice.choice is helper_faster and choice.use() is helper_faster
    choice.record(_pool(True, not helper_faster), 0.0)  # decided: later steps change nothing
    assert choice.choice is helper_faster


def test_the_pool_gets_its_thread_back_when_the_step_fails(thread_lent):
    from optinspect.optimizers._ahead import bits_ahead

    threads = torch.get_num_threads()
    with pytest.raises(ValueError, match="bad step"), bits_ahead([torch.empty(4000, dtype=torch.bfloat16)]):
        assert torch.get_num_threads() == threads - 1
        raise ValueError("bad step")
    assert torch.get_num_threads() == threads


def test_a_failing_draw_reaches_the_step(monkeypatch, bits_ahead_on):
    """The helper thread's error is raised where the bits are taken, not lost with the thread."""
    from optinspect.optimizers import _ahead

    real = torch.randint

    def failing(*args, **kwargs):
        if threading.current_thread().name == "optinspect-random-bits":
            raise RuntimeError("no memory for the bits")
        return real(*args, **kwargs)

    assert _ahead._draws_concatenate()  # checked (and cached) before the draws start failing
    source = torch.randn(10, generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(_ahead.torch, "randint", failing)
    torch.manual_seed(3)
    before = torch.get_rng_state()
    with pytest.raises(RuntimeError, match="no memory for the bits"), \
            _ahead.bits_ahead([torch.empty(10, dtype=torch.bfloat16)]):
        copy_stochastic_(torch.empty(10, dtype=torch.bfloat16), source)
    assert len(bits_ahead_on) == 1
    assert torch.equal(torch.get_rng_state(), before)


def test_draws_by_another_thread_meanwhile_are_kept_and_never_met_again(bits_ahead_on):
    """Another thread drawing from the global generator during the block (data augmentation, say) keeps its draws,
    and what it draws after the block lies past every value the block used."""
    from optinspect.optimizers._ahead import bits_ahead

    source = torch.randn(1700, generator=torch.Generator().manual_seed(0))
    target = torch.empty(1700, dtype=torch.bfloat16)
    torch.manual_seed(21)
    with bits_ahead([target]):
        copy_stochastic_(target, source)
        theirs = torch.randint(0, 1 << 16, (3,), dtype=torch.int32)  # drawn directly, as another thread would
        copy_stochastic_(target, source)
    after = torch.randint(0, 1 << 16, (50,), dtype=torch.int32)
    torch.manual_seed(21)
    stream = torch.randint(0, 1 << 16, (3 + 3400 + 50,), dtype=torch.int32)
    assert torch.equal(theirs, stream[:3])  # its draw came from where the generator stood
    assert torch.equal(after, stream[3 + 3400:])  # then the 3400 values the block used were skipped
