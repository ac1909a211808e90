"""Figures of the state report, checked against values computed independently in the test."""

import json
import math
import warnings

import pytest
import torch

import optinspect
from optinspect.state.analyse import build_report
from optinspect.state.load import load_state
from optinspect.state.stats import quantized_stats, tensor_stats

from .test_load import trained


def save_load(tmp_path, sd, name="s.pt"):
    torch.save(sd, tmp_path / name)
    return build_report(load_state(str(tmp_path / name)))


def test_tensor_stats_match_direct_computation():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3_000_001, generator=g) * 3 + 1
    x[::1000] = 0.0
    x[7], x[11], x[13] = float("nan"), float("inf"), -float("inf")
    st = tensor_stats("x", x, chunk=1 << 16)
    f = x[torch.isfinite(x)].double()
    assert st.nan == 1 and st.inf == 2 and st.numel == x.numel()
    assert st.mean == pytest.approx(float(f.mean()), rel=1e-6)  # fp32 partial sums per chunk
    assert st.std == pytest.approx(float(f.std(unbiased=False)), rel=1e-6)
    assert st.rms == pytest.approx(float(f.pow(2).mean().sqrt()), rel=1e-6)
    assert (st.min, st.max) == (float(f.min()), float(f.max()))
    assert st.zero_frac == pytest.approx(float((f == 0).double().mean()), rel=1e-9)
    assert sum(st.hist) == x.numel() and st.hist[255] == 3
    e = torch.frexp(f[f != 0].abs().float()).exponent + 126  # biased exponent = frexp exponent + 126
    assert st.hist[140] == int((e == 140).sum())


def test_quantized_stats_dequantize_like_bitsandbytes_and_bound_the_real_error():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bnb = pytest.importorskip("bitsandbytes")
    F = bnb.functional
    g = torch.Generator().manual_seed(1)
    truth = torch.randn(100_000, generator=g) * torch.logspace(-6, 0, 100_000)
    qmap = F.create_dynamic_map(signed=True)
    codes, qs = F.quantize_blockwise(truth, code=qmap, blocksize=256)
    st = quantized_stats("state1", codes, qs.absmax, qmap, chunk=4096)
    deq = F.dequantize_blockwise(codes, qs).double()
    assert st.mean == pytest.approx(float(deq.mean()), abs=1e-6 * st.rms)  # fp32 partial sums
    assert st.rms == pytest.approx(float(deq.pow(2).mean().sqrt()), rel=1e-6)
    err = (deq - truth.double()).abs()
    assert float(err.max()) <= st.quant.max_bound
    assert float(err.pow(2).mean().sqrt()) <= st.quant.rms_bound
    assert st.quant.block == 256 and 0 < st.quant.rel_rms_bound < 0.05


def test_bitsandbytes_adamw8bit_state_is_recognised_and_dequantized(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bnb = pytest.importorskip("bitsandbytes")
    m = torch.nn.Linear(128, 64)
    opt = bnb.optim.AdamW8bit(m.parameters(), lr=1e-3, min_8bit_size=1024)
    for _ in range(3):
        m(torch.randn(8, 128)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    r = save_load(tmp_path, opt.state_dict())
    w = r.params[0]
    assert r.family == "bitsandbytes 8-bit Adam(W)" and w.step == 3 and w.quant_rel_error > 0
    st = opt.state[m.weight]
    deq = bnb.functional.dequantize_blockwise(st["state2"], absmax=st["absmax2"], code=st["qmap2"], blocksize=256)
    assert w.second_rms == pytest.approx(float(deq.double().pow(2).mean().sqrt()), rel=1e-5)
    assert r.params[1].quant_rel_error is None  # the bias is below min_8bit_size: fp32 state, no quantization


def test_transformers_adafactor_factored_moment_is_reconstructed(tmp_path):
    transformers = pytest.importorskip("transformers")
    m, opt = trained(lambda p: transformers.Adafactor(p, lr=1e-3, relative_step=False, scale_parameter=False,
                                                      beta1=0.9))
    r = save_load(tmp_path, opt.state_dict())
    assert r.family == "Adafactor"
    w = next(p for p in r.params if p.shape == [32, 16])
    st = opt.state[list(m.parameters())[0]]
    row, col = st["exp_avg_sq_row"], st["exp_avg_sq_col"]
    v = torch.outer(row / row.mean(), col)
    assert w.second_rms == pytest.approx(float(v.double().pow(2).mean().sqrt()), rel=1e-5)


def test_prodigy_group_d_values_are_reported(tmp_path):
    po = pytest.importorskip("pytorch_optimizer")
    _, opt = trained(lambda p: po.Prodigy(p, lr=1.0))
    r = save_load(tmp_path, opt.state_dict())
    assert r.family == "Prodigy"
    assert r.groups[0]["d"] == pytest.approx(opt.param_groups[0]["d"]) and "d_numerator" in r.groups[0]


@pytest.mark.parametrize("table", [
    {"type": "adafactor", "lr": 1e-3, "relative_step": False, "scale_parameter": False},
    {"type": "scorn", "lr": 1e-3, "reset_interval": 2, "focus_ratio": 0.1},
    {"type": "remaster", "lr": 1e-3, "reset_interval": 2},
    {"type": "persona", "lr": 1e-3, "reset_interval": 2, "focus_boost": 0.1},
    {"type": "AdamW8bitKahan", "lr": 1e-3, "stabilize": False, "min_8bit_size": 256},
    {"type": "Prodigy"},
], ids=lambda t: t["type"])
def test_our_optimizers_are_recognised_with_their_counters(tmp_path, table):
    m = torch.nn.Sequential(torch.nn.Linear(32, 16), torch.nn.Linear(16, 4))
    opt = optinspect.build_optimizer(m.parameters(), table)
    for _ in range(5):
        m(torch.randn(4, 32)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    r = save_load(tmp_path, opt.state_dict())
    expected = {"adafactor": "Adafactor", "scorn": "SCORN", "remaster": "REMASTER", "persona": "PersonaOptimizer",
                "AdamW8bitKahan": "AdamW8bitKahan", "Prodigy": "Prodigy"}[table["type"]]
    assert r.family == expected
    if table.get("reset_interval"):
        key = "times_reset" if expected == "PersonaOptimizer" else "times_zero"
        live = opt.state[list(m.parameters())[0]][key]
        assert r.params[0].counters[key] == live and live >= 1
        if expected in ("SCORN", "REMASTER"):
            assert r.params[0].step == 5  # the group's count, not SCORN/REMASTER's per-parameter 0
    if expected == "AdamW8bitKahan":
        assert r.params[0].kahan_rms == pytest.approx(float(opt.state[list(m.parameters())[0]]["shift"].pow(2)
                                                            .mean().sqrt()), rel=1e-6)


def test_anomalies_nan_differing_steps_and_moment_spread(tmp_path):
    m = torch.nn.Sequential(*[torch.nn.Linear(8, 8, bias=False) for _ in range(4)])
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    ps = list(m.parameters())
    for i, p in enumerate(ps):
        p.grad = torch.randn_like(p) * 10.0 ** (-8 * i / 3)
    opt.step()
    ps[0].grad = torch.randn_like(ps[0])
    for p in ps[1:]:
        p.grad = None
    opt.step()  # parameter 0 is a step ahead: counters disagree
    opt.state[ps[2]]["exp_avg"][0, 0] = float("nan")
    r = save_load(tmp_path, opt.state_dict())
    text = " | ".join(r.anomalies)
    assert "step counters differ" in text and "nan/inf in exp_avg" in text and "second-moment RMS spans" in text
    assert r.steps == [1, 2]
    assert "step 2 (most: 1)" in r.params[0].flags


def test_report_json_is_documented_and_stable(tmp_path):
    _, opt = trained(lambda p: torch.optim.AdamW(p, lr=1e-3))
    d = save_load(tmp_path, opt.state_dict()).to_dict()
    assert d["schema"] == "optinspect-state-report/1"
    assert {"path", "layout", "family", "steps", "groups", "params", "anomalies", "definitions"} <= set(d)
    p = d["params"][0]
    assert {"name", "shape", "family", "step", "counters", "first_rms", "second_rms", "update_scale_mean",
            "quant_rel_error", "flags", "tensors"} <= set(p)
    assert {"mean", "std", "min", "max", "absmax", "rms", "l2", "zero_frac", "nan", "inf", "hist"} <= set(p["tensors"][0])
    json.dumps(d)
    assert math.isfinite(p["second_rms"])


def test_group_values_that_are_tensors_show_as_values_or_shape_and_figures():
    from optinspect.state.analyse import plain_value

    assert plain_value(torch.tensor(3.0)) == 3.0 and plain_value(torch.zeros(3, dtype=torch.int64)) == [0, 0, 0]
    assert plain_value(torch.arange(20.0)) == "tensor[20] float32 (mean 9.5, absmax 19)"
    assert plain_value(torch.zeros(2**21)) == "tensor[2097152] float32"  # too large to read for a group value
