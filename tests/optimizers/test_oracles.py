"""Compare with the libraries the originals are built on (test-only dependencies, skipped when missing):
transformers' Adafactor, pytorch_optimizer's Prodigy, bitsandbytes' 8-bit AdamW."""

import io
import math
import warnings

import pytest
import torch

from optinspect.optimizers._quant import dequantize_blockwise, dynamic_map, quantize_blockwise
from optinspect.optimizers.adafactor import EnhancedAdafactor
from optinspect.optimizers.adamw_8bit import QUANT_STATE_KEY, AdamW8bitKahan
from optinspect.optimizers.prodigy import Prodigy

pytestmark = pytest.mark.oracle
SHAPES = [(24, 16), (16,), (4, 3, 3, 3), (1,), (7, 5), (2, 3, 4)]


def make_params(seed=0, shapes=SHAPES, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter((torch.randn(s, generator=g) * 0.1).to(dtype)) for s in shapes]


def grads(params, step, scale=1.0):
    g = torch.Generator().manual_seed(100 + step)
    out = []
    for p in params:
        x = torch.randn(p.shape, generator=g) * scale + p.detach().float() * 0.3
        if step == 7:
            x = x * 30  # a spike: clipping branches
        out.append(x.to(p.dtype))
    return out


def strided(g):
    """The same values in another memory layout: column-major for matrices, every other element for vectors
    (gradients of transposed or sliced weights arrive like this)."""
    if g.dim() >= 2:
        return g.transpose(-1, -2).contiguous().transpose(-1, -2)
    out = g.new_zeros(2 * g.numel())[::2].view(g.shape)
    return out.copy_(g)


def run_pair(ours, theirs, pa, pb, steps=30, scale=1.0, layout=torch.Tensor.clone):
    for t in range(1, steps + 1):
        for p, q, g in zip(pa, pb, grads(pa, t, scale), strict=True):
            p.grad = layout(g)
            q.grad = layout(g)
        ours.step()
        theirs.step()
        for p, q in zip(pa, pb, strict=True):
            torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-5, atol=1e-6, msg=f"step {t}")


ADAFACTOR_CASES = [
    dict(lr=1e-3, relative_step=False, scale_parameter=False),
    dict(lr=1e-3, relative_step=False, scale_parameter=False, beta1=0.9, weight_decay=0.1),
    dict(lr=1e-2, relative_step=False, scale_parameter=True, clip_threshold=0.5),
    dict(relative_step=True),
    dict(relative_step=True, warmup_init=True, beta1=0.5),
    dict(lr=1e-3, relative_step=False, scale_parameter=False, decay_rate=-0.5, eps=(1e-20, 1e-2)),
]


@pytest.mark.parametrize("slice_elements", [None, 64])
@pytest.mark.parametrize("kw", ADAFACTOR_CASES, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()))
def test_adafactor_matches_transformers(kw, slice_elements, monkeypatch):
    """Also with in-cache slices (CPU_SLICE) far smaller than the tensors: still bit-identical."""
    transformers = pytest.importorskip("transformers")
    if slice_elements is not None:
        import optinspect.optimizers._common

        monkeypatch.setattr(optinspect.optimizers._common, "CPU_SLICE", slice_elements)
    pa, pb = make_params(), make_params()
    ours = EnhancedAdafactor(pa, **kw)
    theirs = transformers.Adafactor(pb, **kw)
    run_pair(ours, theirs, pa, pb)
    for p, q in zip(pa, pb, strict=True):
        assert torch.equal(p, q)  # same formulation: bit-identical, not merely close


@pytest.mark.parametrize("kw", ADAFACTOR_CASES[:3], ids=["plain", "beta1-wd", "scaled"])
def test_adafactor_matches_transformers_on_strided_gradients(kw):
    """A reused buffer must not change the layout a reduction (the update's RMS, the factor means) walks."""
    transformers = pytest.importorskip("transformers")
    pa, pb = make_params(), make_params()
    run_pair(EnhancedAdafactor(pa, **kw), transformers.Adafactor(pb, **kw), pa, pb, steps=8, layout=strided)
    assert not pa[0].grad.is_contiguous()
    for p, q in zip(pa, pb, strict=True):
        assert torch.equal(p, q)


def test_adafactor_checkpoints_move_both_ways():
    transformers = pytest.importorskip("transformers")
    kw = dict(lr=1e-3, relative_step=False, scale_parameter=False, beta1=0.9)
    pa, pb = make_params(), make_params()
    ours, theirs = EnhancedAdafactor(pa, **kw), transformers.Adafactor(pb, **kw)
    run_pair(ours, theirs, pa, pb, steps=5)
    # swap: theirs continues from our state, ours from theirs
    sa, sb = io.BytesIO(), io.BytesIO()
    torch.save(ours.state_dict(), sa)
    torch.save(theirs.state_dict(), sb)
    sa.seek(0)
    sb.seek(0)
    pa2, pb2 = [torch.nn.Parameter(p.detach().clone()) for p in pa], [torch.nn.Parameter(p.detach().clone()) for p in pb]
    theirs2, ours2 = transformers.Adafactor(pb2, **kw), EnhancedAdafactor(pa2, **kw)
    theirs2.load_state_dict(torch.load(sa, weights_only=True))
    ours2.load_state_dict(torch.load(sb, weights_only=True))
    run_pair(ours2, theirs2, pa2, pb2, steps=10)
    assert set(ours.state_dict()["state"][0]) == set(theirs.state_dict()["state"][0])


PRODIGY_CASES = [
    dict(),
    dict(betas=(0.9, 0.99), weight_decay=0.05),
    dict(weight_decay=0.1, fixed_decay=True),
    dict(bias_correction=True, d0=1e-4),
    dict(safeguard_warmup=True, beta3=0.9),
    dict(growth_rate=1.02, d_coef=2.0, weight_decay=0.01),
    dict(weight_decouple=False, weight_decay=0.05),
    dict(eps=None),
]


@pytest.mark.parametrize("multi_tensor", [False, True])
@pytest.mark.parametrize("slice_elements", [None, 64])
@pytest.mark.parametrize("kw", PRODIGY_CASES, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()) or "defaults")
def test_prodigy_matches_pytorch_optimizer(kw, slice_elements, multi_tensor, monkeypatch):
    """Also with in-cache slices (CPU_SLICE) far smaller than the tensors, and with the multi-tensor chains (the
    CUDA path, forced on here): still bit-identical."""
    po = pytest.importorskip("pytorch_optimizer")
    import optinspect.optimizers._common

    monkeypatch.setattr(optinspect.optimizers._common, "MULTI_TENSOR_ON_CPU", multi_tensor)
    if slice_elements is not None:
        monkeypatch.setattr(optinspect.optimizers._common, "CPU_SLICE", slice_elements)
    pa, pb = make_params(), make_params()
    ours, theirs = Prodigy(pa, **kw), po.Prodigy(pb, **kw)
    run_pair(ours, theirs, pa, pb, steps=30, scale=0.05)
    for p, q in zip(pa, pb, strict=True):
        assert torch.equal(p, q)
    assert ours.param_groups[0]["d"] == theirs.param_groups[0]["d"]
    assert ours.param_groups[0]["d"] > ours.param_groups[0]["d0"] or kw.get("eps", 1) is None


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kw", PRODIGY_CASES[:4], ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()) or "defaults")
def test_prodigy_in_bf16_is_pytorch_optimizers_bit_for_bit(kw, dtype):
    """By default ours computes in the parameters' dtype as the original does: bf16 weights, moments and d equal
    pytorch_optimizer's exactly, step after step."""
    po = pytest.importorskip("pytorch_optimizer")
    pa, pb = make_params(dtype=dtype), make_params(dtype=dtype)
    assert all(p.dtype == dtype for p in pa)
    prodigy_lockstep(Prodigy(pa, **kw), po.Prodigy(pb, **kw), pa, pb, steps=15)


def prodigy_lockstep(ours, theirs, pa, pb, steps: int) -> None:
    """Step both on the same gradients; after every step weights, state (dtype included) and d are equal."""
    same = dict(rtol=0, atol=0, equal_nan=True)  # fp16 overflows to NaN in both, alike
    for t in range(1, steps + 1):
        for p, q, g in zip(pa, pb, grads(pa, t, 0.05), strict=True):
            p.grad, q.grad = g.clone(), g.clone()
        ours.step()
        theirs.step()
        for p, q in zip(pa, pb, strict=True):
            torch.testing.assert_close(p, q, **same, msg=f"step {t}")
            for key in ("s", "p0", "exp_avg", "exp_avg_sq"):
                assert ours.state[p][key].dtype == p.dtype
                torch.testing.assert_close(ours.state[p][key], theirs.state[q][key], **same)
        d, want = ours.param_groups[0]["d"], theirs.param_groups[0]["d"]
        assert d == want or (math.isnan(d) and math.isnan(want)), t


LORA_MIX = [(3072, 16), (16, 3072), (65576,), (24, 16), (3072, 16)]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kw", [dict(weight_decay=0.05), dict(eps=None, weight_decay=0.1, fixed_decay=True)],
                         ids=["decay", "atan2"])
def test_prodigy_spreads_its_dot_products_and_stays_bit_for_bit(kw, dtype, monkeypatch, two_threads):
    """At LoRA sizes a bf16/fp16 dot product is one serial chain, so with two threads the pool's threads each take
    one (with that parameter's moment updates where its size splits alike at both counts: 65576 elements does
    not, and is computed at the full count). The last tensor stays fp32, whose dot product splits among threads
    and must not be spread. Weights, state and d equal pytorch_optimizer's, step after step."""
    po = pytest.importorskip("pytorch_optimizer")
    from optinspect.optimizers import _spread, prodigy

    spread_calls = []

    def spy(tasks):
        spread_calls.append([t.func.__name__ for t in tasks])
        return _spread.spread(tasks)

    monkeypatch.setattr(prodigy, "spread", spy)
    pa, pb = make_params(shapes=LORA_MIX, dtype=dtype), make_params(shapes=LORA_MIX, dtype=dtype)
    for params in (pa, pb):
        params[-1].data = params[-1].data.float()
    ours = Prodigy(pa, **kw)
    prodigy_lockstep(ours, po.Prodigy(pb, **kw), pa, pb, steps=6)
    assert pa[-1].dtype == torch.float32
    assert ours.param_groups[0]["d"] > ours.param_groups[0]["d0"] or dtype == torch.float16  # fp16's stays
    # per step: the four low-precision dot products, the 65576-element one without its moments
    assert spread_calls == [["_moments_and_dot", "_moments_and_dot", "_moved_dot", "_moments_and_dot"]] * 6
    assert torch.get_num_threads() == 2


def test_prodigy_upcast_computes_in_fp32_and_rounds_stochastically():
    """`upcast=True` (ours alone): each step is the fp32 step from the stored bf16 values, stored with stochastic
    rounding: every weight lands on one of the two bf16 neighbours of the fp32 result (bf16 arithmetic, the
    default, lands elsewhere: on LoRA-sized updates it mostly leaves the weight unchanged)."""
    torch.manual_seed(0)  # whether d grows within five steps depends on the rounding's draws (some seeds: not yet)
    pbf = make_params(dtype=torch.bfloat16)
    up = Prodigy(pbf, upcast=True)
    for t in range(1, 6):
        before = [p.detach().float() for p in pbf]
        state = [{k: v.float() for k, v in up.state[p].items()} for p in pbf] if t > 1 else None
        gs = grads(pbf, t, 0.05)
        ref_params = [torch.nn.Parameter(b.clone()) for b in before]
        ref = Prodigy(ref_params)
        ref.load_state_dict(up.state_dict())  # the same d and step as ours before this step, in fp32 below
        for q, st in zip(ref_params, state or [None] * len(pbf), strict=True):
            if st:
                ref.state[q].update(st)
        for p, q, g in zip(pbf, ref_params, gs, strict=True):
            p.grad, q.grad = g, g.float()
        up.step()
        ref.step()
        for p, q in zip(pbf, ref_params, strict=True):
            assert p.dtype == torch.bfloat16 and up.state[p]["exp_avg"].dtype == torch.bfloat16
            exact = q.detach()
            down = exact.bfloat16().float()
            ulp = (torch.nextafter(exact.abs().bfloat16(), torch.tensor(float("inf"), dtype=torch.bfloat16)).float()
                   - exact.abs().bfloat16().float())
            assert bool(((p.float() - exact).abs() <= ulp * 1.0001).all()), t
            assert bool(((p.float() - down).abs() <= ulp * 1.0001).all()), t
    assert up.param_groups[0]["d"] > up.param_groups[0]["d0"]  # the fp32 updates move the weights: d grows


def test_prodigy_matches_pytorch_optimizer_on_strided_gradients():
    po = pytest.importorskip("pytorch_optimizer")
    pa, pb = make_params(), make_params()
    kw = dict(weight_decay=0.05)
    run_pair(Prodigy(pa, **kw), po.Prodigy(pb, **kw), pa, pb, steps=8, scale=0.05, layout=strided)
    for p, q in zip(pa, pb, strict=True):
        assert torch.equal(p, q)


def test_prodigy_two_groups_and_checkpoint_exchange():
    po = pytest.importorskip("pytorch_optimizer")
    pa, pb = make_params(), make_params()
    ours = Prodigy([{"params": pa[:3]}, {"params": pa[3:], "weight_decay": 0.1}])
    theirs = po.Prodigy([{"params": pb[:3]}, {"params": pb[3:], "weight_decay": 0.1}])
    run_pair(ours, theirs, pa, pb, steps=8, scale=0.05)
    sd = io.BytesIO()
    torch.save(theirs.state_dict(), sd)
    sd.seek(0)
    ours.load_state_dict(torch.load(sd, weights_only=True))
    run_pair(ours, theirs, pa, pb, steps=8, scale=0.05)


def _bnb():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pytest.importorskip("bitsandbytes")


def test_quantization_maps_and_codes_match_bitsandbytes():
    bnb = _bnb()
    F = bnb.functional
    for signed in (True, False):
        qmap = dynamic_map(signed)
        assert torch.equal(qmap, F.create_dynamic_map(signed=signed))
        g = torch.Generator().manual_seed(3)
        x = torch.randn(50_000, generator=g) * torch.logspace(-8, 2, 50_000)
        x[:256] = 0.0  # an all-zero block
        x[300:310] = 0.0
        if not signed:
            x = x.abs()
        codes, absmax = quantize_blockwise(x, qmap)
        ref_codes, ref_state = F.quantize_blockwise(x, code=qmap, blocksize=256)
        assert torch.equal(codes, ref_codes) and torch.equal(absmax, ref_state.absmax)
        ref = F.dequantize_blockwise(ref_codes, ref_state)
        assert torch.equal(dequantize_blockwise(codes, absmax, qmap), ref)


def test_a_map_changed_in_place_quantizes_by_its_new_values():
    """The lookup table is kept per map tensor while the tensor is unchanged: a map overwritten in place (a state
    loaded into the same tensor) must quantize as bitsandbytes does with the new values, not the old table."""
    F = _bnb().functional
    g = torch.Generator().manual_seed(5)
    x = torch.randn(4096, generator=g).abs()
    qmap = dynamic_map(True)
    quantize_blockwise(x, qmap)  # the signed map's table, kept
    qmap.copy_(dynamic_map(False))
    codes, absmax = quantize_blockwise(x, qmap)
    ref_codes, ref_state = F.quantize_blockwise(x, code=dynamic_map(False), blocksize=256)
    assert torch.equal(codes, ref_codes) and torch.equal(absmax, ref_state.absmax)


@pytest.mark.parametrize("signed", [True, False])
def test_quantized_codes_match_bitsandbytes_on_millions_of_moments(signed):
    """Values a hair from the midpoint between two codes decide by the last bit of x * (1 / absmax): over 4M
    moment-like values (where x / absmax chose another code for about one in a million) every code must be
    bitsandbytes'."""
    F = _bnb().functional
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1 << 22, generator=g)
    x = x * 1e-3 if signed else x * x * 1e-6
    qmap = dynamic_map(signed)
    codes, absmax = quantize_blockwise(x, qmap)
    ref_codes, ref_state = F.quantize_blockwise(x, code=qmap, blocksize=256)
    assert torch.equal(absmax, ref_state.absmax)
    assert int((codes != ref_codes).sum()) == 0


@pytest.mark.parametrize("min_8bit_size", [4096, 64])
def test_adamw8bitkahan_moments_match_bitsandbytes_adamw8bit(min_8bit_size):
    """Without weight decay and stabilize, the moments depend only on the gradients: the codes, absmax and
    fp32 moments must equal bitsandbytes' bit for bit; weights differ only by the Kahan compensation."""
    bnb = _bnb()
    shapes = [(40, 30), (300,), (8,)]
    pa, pb = make_params(shapes=shapes), make_params(shapes=shapes)
    ours = AdamW8bitKahan(pa, lr=1e-3, weight_decay=0.0, stabilize=False, min_8bit_size=min_8bit_size)
    theirs = bnb.optim.AdamW8bit(pb, lr=1e-3, weight_decay=0.0, min_8bit_size=min_8bit_size)
    run_pair(ours, theirs, pa, pb, steps=20)
    for p, q in zip(pa, pb, strict=True):
        a, b = ours.state[p], theirs.state[q]
        for key in ("state1", "state2", "absmax1", "absmax2", "qmap1", "qmap2"):
            if key in b:
                assert torch.equal(a[key], b[key]), key


def test_bitsandbytes_state_dicts_load_both_ways():
    bnb = _bnb()
    shapes = [(40, 30), (8,)]
    pa, pb = make_params(shapes=shapes), make_params(shapes=shapes)
    ours = AdamW8bitKahan(pa, lr=1e-3, weight_decay=0.0, stabilize=False, min_8bit_size=64)
    theirs = bnb.optim.AdamW8bit(pb, lr=1e-3, weight_decay=0.0, min_8bit_size=64)
    run_pair(ours, theirs, pa, pb, steps=3)
    ours_sd, theirs_sd = ours.state_dict(), theirs.state_dict()
    assert QUANT_STATE_KEY in ours_sd["state"][0] and QUANT_STATE_KEY in theirs_sd["state"][0]
    assert set(ours_sd["state"][0][QUANT_STATE_KEY]) == set(theirs_sd["state"][0][QUANT_STATE_KEY])
    # theirs -> ours: the quantized moments arrive unchanged (uint8 not cast)
    fresh = AdamW8bitKahan([torch.nn.Parameter(p.detach().clone()) for p in pa], lr=1e-3, weight_decay=0.0,
                           stabilize=False, min_8bit_size=64)
    fresh.load_state_dict(theirs_sd)
    p0 = fresh.param_groups[0]["params"][0]
    assert fresh.state[p0]["state1"].dtype == torch.uint8
    assert torch.equal(fresh.state[p0]["state1"], theirs.state[pb[0]]["state1"])
    # ours -> theirs
    other = bnb.optim.AdamW8bit([torch.nn.Parameter(p.detach().clone()) for p in pb], lr=1e-3, weight_decay=0.0,
                                min_8bit_size=64)
    other.load_state_dict(ours_sd)
    q0 = other.param_groups[0]["params"][0]
    assert torch.equal(other.state[q0]["state2"], ours.state[pa[0]]["state2"])


def test_flat_pre_045_layout_loads():
    p = [torch.nn.Parameter(torch.randn(40, 30))]
    a = AdamW8bitKahan(p, lr=1e-3, min_8bit_size=64, stabilize=False)
    p[0].grad = torch.randn(40, 30)
    a.step()
    sd = a.state_dict()
    flat = {"state": {0: {**{k: v for k, v in sd["state"][0].items() if k != QUANT_STATE_KEY},
                          **sd["state"][0][QUANT_STATE_KEY]}}, "param_groups": sd["param_groups"]}
    b = AdamW8bitKahan([torch.nn.Parameter(p[0].detach().clone())], lr=1e-3, min_8bit_size=64, stabilize=False)
    b.load_state_dict(flat)
    q = b.param_groups[0]["params"][0]
    assert torch.equal(b.state[q]["state1"], a.state[p[0]]["state1"]) and b.state[q]["state1"].dtype == torch.uint8


def test_pytorch_optimizers_prodigy_stalls_on_bf16_model_weights_as_opt412_says():
    """OPT412's claim, on the original itself: on bf16 weights of magnitude ~1e-2 its first updates round away
    and d stays at d0, where the same steps in fp32 move the weights and grow d; a zero-initialised tensor (a
    LoRA's B) moves in bf16 too and lets d grow."""
    po = pytest.importorskip("pytorch_optimizer")
    g = torch.Generator().manual_seed(0)
    w = torch.randn(256, 64, generator=g) * 0.02
    grads = [torch.randn(256, 64, generator=g) * 1e-3 + w * 0.1 for _ in range(30)]

    def final_d(start: torch.Tensor, dtype: torch.dtype) -> float:
        p = torch.nn.Parameter(start.clone().to(dtype))
        opt = po.Prodigy([p])
        for gr in grads:
            p.grad = gr.to(dtype)
            opt.step()
        return opt.param_groups[0]["d"]

    assert final_d(w, torch.bfloat16) == 1e-6
    assert final_d(w, torch.float32) > 1e-4
    assert final_d(torch.zeros_like(w), torch.bfloat16) > 1e-4
