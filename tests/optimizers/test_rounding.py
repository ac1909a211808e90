"""Stochastic rounding (optimizers/_rounding.py): unbiased, exact where representable, finite, seedable."""

import threading

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from optinspect.optimizers._rounding import _keep_special, copy_stochastic_

finite32 = st.floats(allow_nan=False, allow_infinity=False, width=32)


def _neighbours_bf16(x: float) -> tuple[float, float]:
    t = torch.tensor([x], dtype=torch.float32)
    down = (t.view(torch.int32) & -65536).view(torch.float32)  # toward zero on the bf16 grid
    up_bits = (t.view(torch.int32) & -65536) + 65536
    return float(down), float(up_bits.view(torch.float32))


@settings(max_examples=200, deadline=None)
@given(finite32)
def test_result_is_one_of_the_two_bf16_neighbours_and_finite(x):
    src = torch.full((64,), x, dtype=torch.float32)
    out = torch.empty(64, dtype=torch.bfloat16)
    copy_stochastic_(out, src)
    vals = set(out.float().tolist())
    lo, hi = _neighbours_bf16(x)
    allowed = {lo, hi, float(torch.finfo(torch.bfloat16).max), -float(torch.finfo(torch.bfloat16).max)}
    assert vals <= allowed
    assert torch.isfinite(out).all()


@settings(max_examples=200, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False, width=16).filter(lambda v: abs(v) < 3e38))
def test_exact_for_representable_values(x):
    exact = torch.tensor([x] * 32, dtype=torch.bfloat16).float()
    out = torch.empty(32, dtype=torch.bfloat16)
    copy_stochastic_(out, exact)
    assert torch.equal(out.float(), exact)


def test_unbiased_mean_over_many_draws():
    g = torch.Generator().manual_seed(0)
    x = torch.tensor([1.0 + 3 * 2**-10, -0.3141592, 1e-3 + 1e-7, 12345.678])
    src = x.repeat(200_000, 1)
    out = torch.empty_like(src, dtype=torch.bfloat16)
    copy_stochastic_(out, src, generator=g)
    mean = out.float().double().mean(0)
    spacing = torch.tensor([abs(_neighbours_bf16(v)[1] - _neighbours_bf16(v)[0]) for v in x.tolist()],
                           dtype=torch.float64)
    # the standard error of a two-point draw is <= spacing / (2 sqrt(n)); allow 5 of them
    assert ((mean - x.double()).abs() <= 5 * spacing / (2 * 200_000**0.5)).all(), (mean - x.double())
    # and plain round-to-nearest would be biased by far more for the first value
    assert abs(float(x[0].to(torch.bfloat16)) - float(x[0])) > 50 * float((mean - x.double()).abs()[0])


def test_reproducible_under_a_seeded_generator_and_global_seed():
    src = torch.randn(1000) * 10
    a, b = torch.empty(1000, dtype=torch.bfloat16), torch.empty(1000, dtype=torch.bfloat16)
    copy_stochastic_(a, src, generator=torch.Generator().manual_seed(7))
    copy_stochastic_(b, src, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    torch.manual_seed(3)
    copy_stochastic_(a, src)
    torch.manual_seed(3)
    copy_stochastic_(b, src)
    assert torch.equal(a, b)


def test_special_values():
    src = torch.tensor([float("inf"), -float("inf"), float("nan"), 3.4e38, 0.0, -0.0])
    nan_low = torch.tensor([0x7F800001], dtype=torch.int32).view(torch.float32)
    out = torch.empty(6, dtype=torch.bfloat16)
    copy_stochastic_(out, src)
    assert out[0] == float("inf") and out[1] == -float("inf") and torch.isnan(out[2])
    assert torch.isfinite(out[3]) and out[4] == 0
    one = torch.empty(1, dtype=torch.bfloat16)
    copy_stochastic_(one, nan_low)
    assert torch.isnan(one).all()


@pytest.mark.parametrize("pattern", [0x7FFFFFFF, -1, 0x7F80FFFF, 0x7FC0FFFF, -0x7F0001])  # NaN bit patterns
def test_nan_with_low_payload_stays_nan(pattern):
    # 0x7FFFFFFF plus 16 random bits carries into the sign (-0.0 after truncation) and 0xFFFFFFFF wraps to
    # +0.0: a NaN must never come out as a number, whatever the draw
    nan = torch.tensor([pattern] * 4096, dtype=torch.int32).view(torch.float32)
    assert torch.isnan(nan).all()
    out = torch.empty(4096, dtype=torch.bfloat16)
    copy_stochastic_(out, nan, generator=torch.Generator().manual_seed(0))
    assert torch.isnan(out).all()


def test_clean_tensors_skip_a_repair_that_would_change_nothing():
    # On CPU a min/max check skips the repair for tensors within bf16's range; off CPU the repair always
    # runs. Both must give the same bits: on in-range values (the largest finite ones included, and values
    # just below the first overflow) the repair is the identity. Expected bits from spec 2.1, by hand.
    big = torch.finfo(torch.bfloat16).max
    g = torch.Generator().manual_seed(5)
    src = torch.cat([torch.randn(10_000, generator=g) * 10.0 ** torch.randint(-30, 30, (10_000,), generator=g),
                     torch.tensor([big, -big, 0.0, -0.0, 1e-45])])
    draw = torch.randint(0, 1 << 16, src.shape, dtype=torch.int32, generator=torch.Generator().manual_seed(9))
    truncated = ((src.view(torch.int32) + draw) & -65536).view(torch.float32)
    assert torch.equal(_keep_special(truncated, src), truncated)
    out = torch.empty(src.shape, dtype=torch.bfloat16)
    copy_stochastic_(out, src, generator=torch.Generator().manual_seed(9))
    assert torch.equal(out.float(), truncated)


def test_fp16_default_keeps_only_bf16_precision_and_the_fix_rounds_to_fp16():
    x = torch.full((20_000,), 1 + 3 * 2**-10)
    legacy = torch.empty(20_000, dtype=torch.float16)
    copy_stochastic_(legacy, x, generator=torch.Generator().manual_seed(1))
    assert set(legacy.float().unique().tolist()) <= {1.0, 1.0078125}  # the originals' behaviour (spec 2.1)
    fixed = torch.empty(20_000, dtype=torch.float16)
    copy_stochastic_(fixed, x, generator=torch.Generator().manual_seed(1), fp16_exact=True)
    assert set(fixed.float().unique().tolist()) == {1 + 3 * 2**-10}  # representable in fp16: exact
    y = torch.full((200_000,), 1 + 2.5 * 2**-10)
    copy_stochastic_(fixed.resize_(200_000), y, fp16_exact=True)
    assert set(fixed.float().unique().tolist()) == {1 + 2 * 2**-10, 1 + 3 * 2**-10}
    assert abs(fixed.double().mean().item() - (1 + 2.5 * 2**-10)) < 2**-10 / 100


def test_fp32_target_is_a_plain_copy():
    src = torch.randn(10)
    out = torch.empty(10)
    copy_stochastic_(out, src)
    assert torch.equal(out, src)


# -- bits drawn ahead (bits_ahead): the oracle is torch's own global generator, drawn in turn ----------------

def _rounding_run(sizes, *, fp16_exact_at=None, ahead=False):
    """Round fp32 tensors of the given sizes into bf16 one after another from a seeded global generator (an
    fp16 exact rounding at one position, if asked); the results and the generator state left."""
    from optinspect.optimizers._rounding import bits_ahead

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
    from optinspect.optimizers._rounding import bits_ahead

    torch.manual_seed(5)
    before = torch.get_rng_state()
    with bits_ahead([torch.empty(4000, dtype=torch.bfloat16)]):
        pass
    assert len(bits_ahead_on) == 1 and torch.equal(torch.get_rng_state(), before)


def test_no_thread_for_fp32_work_or_when_switched_off(monkeypatch, bits_ahead_on):
    from optinspect.optimizers import _rounding

    with _rounding.bits_ahead([torch.empty(4000, dtype=torch.float32)]):
        pass
    monkeypatch.setenv("OPTINSPECT_BITS_AHEAD", "0")  # switched off by the user
    with _rounding.bits_ahead([torch.empty(4000, dtype=torch.bfloat16)]):
        pass
    assert bits_ahead_on == []
    monkeypatch.delenv("OPTINSPECT_BITS_AHEAD")
    with _rounding.bits_ahead([torch.empty(4000, dtype=torch.bfloat16)]) as pool:
        assert torch.get_num_threads() == pool.threads  # an idle CPU: the pool keeps its threads
    assert len(bits_ahead_on) == 1 and not pool.lent


def test_without_an_idle_cpu_the_pool_lends_a_thread_and_reductions_take_it_back(thread_lent):
    from optinspect.optimizers._rounding import all_threads, bits_ahead

    threads = torch.get_num_threads()
    with bits_ahead([torch.empty(4000, dtype=torch.bfloat16)]) as pool:
        assert pool.lent and torch.get_num_threads() == threads - 1
        assert not pool.reduced
        with all_threads:
            assert torch.get_num_threads() == threads
            with all_threads:
                assert torch.get_num_threads() == threads
            assert torch.get_num_threads() == threads  # the inner block leaves the outer one's count
        assert torch.get_num_threads() == threads - 1 and pool.reduced
    assert torch.get_num_threads() == threads and len(thread_lent) == 1
    with all_threads:  # outside a step: nothing to give back
        assert torch.get_num_threads() == threads


@pytest.mark.parametrize("case", ["one thread", "not lent", "splits apart"])
def test_no_thread_lent_where_it_cannot_be(case, thread_lent):
    """One intra-op thread has none to lend; `lend=False` (a step that reduces often) keeps it; and a tensor whose
    split among threads is not whole 64-element vectors would be computed differently one thread short."""
    from optinspect.optimizers._rounding import bits_ahead

    if case == "one thread":
        torch.set_num_threads(1)
    sizes = [4000, 70000 if case != "splits apart" else 65576]
    with bits_ahead([torch.empty(n, dtype=torch.bfloat16) for n in sizes], lend=case != "not lent") as pool:
        pass
    assert not pool.lent and thread_lent == []


def test_elementwise_ops_split_apart_round_apart():
    """Why the sizes matter: atan2's vector and scalar code differ in the last bit, and a thread's chunk ends in
    scalar code where it is not whole vectors (65576 elements on two threads: chunks of 32788)."""
    from optinspect.optimizers._rounding import _splits_alike

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
            assert _splits_alike(n, 2) == (n == 49152)
            if n == 49152:
                assert same
    finally:
        torch.set_num_threads(threads)


def test_the_pool_gets_its_thread_back_when_the_step_fails(thread_lent):
    from optinspect.optimizers._rounding import bits_ahead

    threads = torch.get_num_threads()
    with pytest.raises(ValueError, match="bad step"), bits_ahead([torch.empty(4000, dtype=torch.bfloat16)]):
        assert torch.get_num_threads() == threads - 1
        raise ValueError("bad step")
    assert torch.get_num_threads() == threads


def test_a_failing_draw_reaches_the_step(monkeypatch, bits_ahead_on):
    """The helper thread's error is raised where the bits are taken, not lost with the thread."""
    from optinspect.optimizers import _rounding

    real = torch.randint

    def failing(*args, **kwargs):
        if threading.current_thread().name == "optinspect-random-bits":
            raise RuntimeError("no memory for the bits")
        return real(*args, **kwargs)

    assert _rounding._draws_concatenate()  # checked (and cached) before the draws start failing
    source = torch.randn(10, generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(_rounding.torch, "randint", failing)
    torch.manual_seed(3)
    before = torch.get_rng_state()
    with pytest.raises(RuntimeError, match="no memory for the bits"), \
            _rounding.bits_ahead([torch.empty(10, dtype=torch.bfloat16)]):
        copy_stochastic_(torch.empty(10, dtype=torch.bfloat16), source)
    assert len(bits_ahead_on) == 1
    assert torch.equal(torch.get_rng_state(), before)


def test_draws_by_another_thread_meanwhile_are_kept_and_never_met_again(bits_ahead_on):
    """Another thread drawing from the global generator during the block (data augmentation, say) keeps its draws,
    and what it draws after the block lies past every value the block used."""
    from optinspect.optimizers._rounding import bits_ahead

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
