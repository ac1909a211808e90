"""Stochastic rounding (optimizers/_rounding.py): unbiased, exact where representable, finite, seedable."""


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


def test_the_repair_element_by_element_around_the_carries():
    """Every high half near bf16's largest, infinity and NaN (both signs), with edge and random low halves, under
    20 draws: a NaN or infinite source comes back bit for bit, a finite one that carried to infinity becomes
    bf16's largest of its sign, and anything else is the truncated sum untouched. Each rule applied on its own."""
    big = torch.finfo(torch.bfloat16).max
    hi = torch.tensor([0x7F7E, 0x7F7F, 0x7F80, 0x7F81, 0x7FBF, 0x7FC0, 0x7FFF, 0x0000, 0x3F80])
    hi = torch.cat([hi, hi | 0x8000])
    g = torch.Generator().manual_seed(0)
    lows = torch.cat([torch.tensor([0, 1, 0x7FFF, 0x8000, 0xFFFE, 0xFFFF]), torch.randint(0, 1 << 16, (60,),
                                                                                          generator=g)])
    pattern = ((hi[:, None] << 16) | lows[None, :]).reshape(-1)
    src = torch.where(pattern >= 1 << 31, pattern - (1 << 32), pattern).to(torch.int32).view(torch.float32)
    for seed in range(20):
        draw = torch.randint(0, 1 << 16, src.shape, dtype=torch.int32, generator=torch.Generator().manual_seed(seed))
        raw = ((src.view(torch.int32) + draw) & -65536).view(torch.float32)
        out = _keep_special(raw.clone(), src)
        special = ~torch.isfinite(src)
        assert torch.equal(out[special].view(torch.int32), src[special].view(torch.int32))
        carried = torch.isfinite(src) & torch.isinf(raw)
        assert carried.any() and torch.equal(out[carried], torch.where(src[carried] > 0, big, -big))
        rest = ~special & ~carried
        assert torch.equal(out[rest].view(torch.int32), raw[rest].view(torch.int32))


@pytest.mark.parametrize("bound", [None, 1e3, 1e37, 1.7e38, float("nan"), float("inf")])
def test_a_bound_skips_the_check_only_where_it_rules_out_a_bad_carry(bound, monkeypatch):
    from optinspect.optimizers import _rounding

    checked = []
    real = _rounding._may_carry_badly
    monkeypatch.setattr(_rounding, "_may_carry_badly", lambda source: checked.append(1) or real(source))
    src = torch.randn(4096, generator=torch.Generator().manual_seed(2)) * 100
    want, got = torch.empty(4096, dtype=torch.bfloat16), torch.empty(4096, dtype=torch.bfloat16)
    copy_stochastic_(want, src, generator=torch.Generator().manual_seed(4))
    checked.clear()
    copy_stochastic_(got, src, generator=torch.Generator().manual_seed(4), bound=bound)
    assert torch.equal(got, want)
    skipped = bound is not None and bound < torch.finfo(torch.bfloat16).max / 2
    assert checked == ([] if skipped else [1])


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
