"""The joint first/second moment pass, against figures computed directly in the test (float64)."""

import math

import pytest
import torch

from optinspect.state.stats import moment_pair_stats


def _pair(kind: str):
    g = torch.Generator().manual_seed(3)
    m = torch.randn(300_001, generator=g) * 1e-3
    v = m * m * torch.rand(m.shape, generator=g) * 4 + 1e-10
    if kind == "zeros":  # never-updated elements: v = 0 (their scale is excluded, not infinite)
        v[::97] = 0.0
    elif kind == "negative_and_nan":
        v[5] = -1.0
        m[9] = float("nan")
    elif kind == "overflow":  # a huge first moment over a tiny second moment: a*rsqrt(b) overflows fp32
        m[4], v[4] = 1e30, 1e-30
    return m, v


@pytest.mark.parametrize("kind", ["clean", "zeros", "negative_and_nan", "overflow"])
@pytest.mark.parametrize("chunk", [1 << 14, 1 << 20])  # many chunks on two workers / one chunk inline
def test_update_scale_and_moment_stats(kind, chunk):
    m, v = _pair(kind)
    sm, sv, mean, mx = moment_pair_stats("m", m, "v", v, chunk=chunk)
    md, vd = m.double(), v.double()
    keep = torch.isfinite(md) & (vd > 0) & torch.isfinite(vd)
    ratio = md[keep].abs() / vd[keep].sqrt()
    if kind == "overflow":  # fp32 arithmetic: that element's scale is inf and dropped like the other invalid ones
        keep[4] = False
        ratio = md[keep].abs() / vd[keep].sqrt()
        ratio_sum = ratio.sum()
        assert mean == pytest.approx(float(ratio_sum / (keep.sum() + 1)), rel=1e-4)
    else:
        assert mean == pytest.approx(float(ratio.mean()), rel=1e-4)
        assert mx == pytest.approx(float(ratio.max()), rel=1e-5)
    for st, x in ((sm, md), (sv, vd)):
        f = x[torch.isfinite(x)]
        assert st.numel == x.numel() and st.nan == int(torch.isnan(x).sum())
        assert st.rms == pytest.approx(float(f.pow(2).mean().sqrt()), rel=1e-5)
        assert (st.min, st.max) == (float(f.min()), float(f.max()))
    assert math.isfinite(mean) and math.isfinite(mx)


def test_workers_run_one_thread_per_op_and_leave_the_callers_setting_alone():
    import threading

    from optinspect.state import stats

    before = torch.get_num_threads()
    pool = stats._pool()
    assert [f.result() for f in [pool.submit(torch.get_num_threads) for _ in range(4)]] == [1] * 4
    seen = []
    t = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    t.start()
    t.join()
    assert torch.get_num_threads() == before and seen == [before]
