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


def _values(seed: int) -> list[torch.Tensor]:
    """Small tensors of every kind the engine meets: signs, zeros, subnormals, huge values, NaN, inf, bf16."""
    g = torch.Generator().manual_seed(seed)
    out = [torch.randn(n, generator=g) * 10.0 ** torch.randint(-30, 30, (1,), generator=g).item()
           for n in (1, 2, 7, 256, 1000, 4096)]
    special = torch.tensor([0.0, -0.0, 1e-40, -1e-41, 3e38, -3e38, float("nan"), float("inf"), float("-inf"), 2.0])
    out += [special, special[:6], torch.zeros(5), torch.randn(33, generator=g).abs().to(torch.bfloat16)]
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_batched_statistics_equal_the_per_tensor_engine(seed):
    """Small tensors are counted many at a time (segment reductions): every figure must equal the per-tensor
    engine's (sums are taken in float64 there, so to rounding of the fp32 path)."""
    from optinspect.state import stats as S

    values = _values(seed)
    pairs = [(torch.randn(64), torch.rand(64)), (torch.randn(9), torch.tensor([0.0, 1.0, -0.0, float("nan"), 4.0,
                                                                             1e-42, 2.0, float("inf"), 3.0]))]
    jobs = [("one", f"t{i}", t) for i, t in enumerate(values)] + [("pair", "exp_avg", m, "exp_avg_sq", v)
                                                                  for m, v in pairs]
    got = S.batch_stats(jobs)
    want = [S.tensor_stats(k, t) for _, k, t in jobs[:len(values)]]
    want += [S.moment_pair_stats("exp_avg", m, "exp_avg_sq", v) for m, v in pairs]
    flat = lambda x: list(x[:2]) if isinstance(x, tuple) else [x]  # noqa: E731

    def close(a, b, scale) -> bool:  # to rounding relative to the tensor's magnitude (sums cancel at 3e38)
        return a == b or (math.isnan(a) and math.isnan(b)) or abs(a - b) <= 1e-6 * max(abs(a), abs(b), scale)

    for g, w in zip(got, want, strict=True):
        for gs, ws in zip(flat(g), flat(w), strict=True):
            assert gs.hist == ws.hist and (gs.nan, gs.inf, gs.numel, gs.shape, gs.dtype, gs.bytes) == \
                (ws.nan, ws.inf, ws.numel, ws.shape, ws.dtype, ws.bytes)
            for field in ("mean", "std", "min", "max", "absmax", "rms", "l2", "zero_frac"):
                assert close(getattr(gs, field), getattr(ws, field), ws.absmax), (gs.key, field, getattr(gs, field),
                                                                                  getattr(ws, field))
        if isinstance(g, tuple):
            assert close(g[2], w[2], 0.0) and close(g[3], w[3], 0.0)


def test_tiny_values_keep_their_rms():
    """|x| around 1e-28 (a tiny second moment): x*x underflows in fp32, so the RMS read 0 before."""
    from optinspect.state import stats as S

    t = torch.tensor([1e-28, -3e-28, 2e-28])
    st = S.tensor_stats("exp_avg_sq", t)
    want = float(t.double().square().mean().sqrt())
    assert st.rms == pytest.approx(want, rel=1e-6) and st.std > 0


def test_a_report_of_many_small_tensors_matches_per_tensor_statistics(tmp_path):
    """Through build_report: a state of many small parameters gives the same rows with batching as without."""
    from optinspect.state import stats as S
    from optinspect.state.analyse import build_report
    from optinspect.state.load import load_state

    params = [torch.nn.Parameter(torch.randn(n)) for n in (3, 17, 300, 5000, 70000, 1)]
    opt = torch.optim.AdamW(params, lr=1e-2)
    for _ in range(2):
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()
    torch.save(opt.state_dict(), tmp_path / "s.pt")
    batched = build_report(load_state(str(tmp_path / "s.pt")))
    S.BATCH_MAX, keep = 0, S.BATCH_MAX
    try:
        single = build_report(load_state(str(tmp_path / "s.pt")))
    finally:
        S.BATCH_MAX = keep
    for a, b in zip(batched.params, single.params, strict=True):
        assert [t.key for t in a.tensors] == [t.key for t in b.tensors]
        assert a.update_scale_mean == pytest.approx(b.update_scale_mean, rel=1e-6)
        for x, y in zip(a.tensors, b.tensors, strict=True):
            assert x.hist == y.hist and x.rms == pytest.approx(y.rms, rel=1e-6)


def test_gathered_small_tensors_equal_the_librarys_own_reading(tmp_path):
    """Small mapped tensors are read many at a time (one indexed read per file and dtype); what comes out must be
    what safetensors itself reads, for every dtype, odd sizes that leave later tensors unaligned, and 0-d ones."""
    from safetensors.torch import load_file, save_file

    from optinspect.state.layouts import load_safetensors
    from optinspect.state.mapped import gather

    g = torch.Generator().manual_seed(0)
    tensors = {"state.a.x": torch.randn(3, generator=g).to(torch.bfloat16),  # 6 bytes: the next starts unaligned
               "state.a.y": torch.randn(5, generator=g), "state.b.x": torch.randn(2, 3, generator=g).half(),
               "state.b.y": torch.tensor(7.5, dtype=torch.float64), "state.c.x": torch.randn(1, generator=g),
               "state.c.y": torch.tensor([float("nan"), float("inf"), -0.0, 1e-40])}
    save_file(tensors, str(tmp_path / "s.safetensors"))
    ls = load_safetensors(str(tmp_path / "s.safetensors"))
    mapped = [v for p in ls.params for v in p.entries.values() if not isinstance(v, float)]
    names = [f"state.{p.name}.{k}" for p in ls.params for k, v in p.entries.items() if not isinstance(v, float)]
    own = load_file(str(tmp_path / "s.safetensors"))
    mixed = mapped + [own["state.a.y"]]  # an in-memory tensor among the mapped ones
    want = torch.cat([own[n].reshape(-1).float() for n in names] + [own["state.a.y"].float()])
    assert torch.equal(gather(mixed).nan_to_num(nan=123.0), want.nan_to_num(nan=123.0))
