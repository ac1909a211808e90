"""Behaviour shared by the six bundled optimizers, parametrised over type: bf16, argument errors, groups,
checkpoints, and the documented fixes of the originals' bugs."""

import io
import math

import pytest
import torch

import optinspect
from optinspect.optimizers._ahead import HelperChoice
from optinspect.optimizers._common import orthograd_
from optinspect.optimizers.adafactor import EnhancedAdafactor
from optinspect.optimizers.adamw_8bit import AdamW8bitKahan
from optinspect.optimizers.persona import PersonaOptimizer
from optinspect.optimizers.remaster import REMASTER
from optinspect.optimizers.scorn import SCORN

TABLES = {
    "adafactor": {"type": "adafactor", "lr": 1e-3, "scale_parameter": False, "relative_step": False, "beta1": 0.9,
                  "weight_decay": 0.01},
    "scorn": {"type": "scorn", "lr": 1e-3, "betas": [0.95, 0.9999], "weight_decay": 0.01, "focus_ratio": 0.1},
    "remaster": {"type": "remaster", "lr": 1e-3, "betas": [0.95, 0.9999], "weight_decay": 0.01},
    "persona": {"type": "persona", "lr": 1e-3, "betas": [0.95, 0.999], "weight_decay": 0.01, "focus_boost": 0.05},
    "AdamW8bitKahan": {"type": "AdamW8bitKahan", "lr": 1e-3, "betas": [0.9, 0.99], "weight_decay": 0.0,
                       "stabilize": False, "min_8bit_size": 256},
    "Prodigy": {"type": "Prodigy", "betas": [0.9, 0.99], "weight_decay": 0.01, "d0": 1e-4, "safeguard_warmup": True,
                "bias_correction": True},
}
SHAPES = [(48, 32), (32,), (8, 4, 3, 3), (1,), (300,)]


def model(dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter((torch.randn(s, generator=g) * 0.1).to(dtype)) for s in SHAPES]


def grad(p, t):
    g = torch.Generator().manual_seed(1000 + t)
    target = torch.randn(p.shape, generator=g) * 0.05
    return (p.detach().float() - target + 0.01 * torch.randn(p.shape, generator=g)).to(p.dtype)


def train(opt, params, steps, start=1):
    for t in range(start, start + steps):
        for p in params:
            p.grad = grad(p, t)
        opt.step()


def outcome(opt, params, groups: bool = False) -> tuple:
    """What a run leaves: the weights, every state tensor (and the groups' numbers), the global generator."""
    state = [v for st in opt.state.values() for v in st.values() if isinstance(v, torch.Tensor)]
    if groups:
        state += [torch.as_tensor(v) for group in opt.param_groups for v in group.values()
                  if isinstance(v, (float, torch.Tensor))]
    return [p.detach().clone() for p in params], state, torch.get_rng_state()


def assert_same(a: tuple, b: tuple) -> None:
    (p0, s0, r0), (p1, s1, r1) = a, b
    assert all(torch.equal(x, y) for x, y in zip(p0, p1, strict=True))
    assert len(s0) == len(s1) and all(torch.equal(x, y) for x, y in zip(s0, s1, strict=True))
    assert torch.equal(r0, r1)


@pytest.mark.parametrize("name", sorted(TABLES))
def test_bf16_updates_in_fp32_with_stochastic_rounding(name):
    ref = model()
    train(optinspect.build_optimizer(ref, TABLES[name]), ref, 30)
    torch.manual_seed(0)
    low = model(torch.bfloat16)
    # Prodigy computes in bf16 by default, as pytorch_optimizer does (test_oracles); `upcast` is our fp32 path
    opt = optinspect.build_optimizer(low, TABLES[name], options={"upcast": True} if name == "Prodigy" else None)
    train(opt, low, 30)
    init = model()
    for p, r, i in zip(low, ref, init, strict=True):
        assert p.dtype == torch.bfloat16 and torch.isfinite(p).all()
        moved = (r - i).norm().item()
        drift = (p.float() - r).norm().item()
        assert drift <= 0.25 * moved + 0.05 * r.norm().item(), (name, drift, moved)
    for st in opt.state.values():  # states keep the original layouts' dtypes
        for k, v in st.items():
            if isinstance(v, torch.Tensor) and k in ("ema", "ema_squared", "exp_avg", "s", "shift"):
                assert v.dtype in (torch.bfloat16, torch.float32)


BAD_ARGS = {
    "adafactor": [({"lr": 1e-3, "relative_step": True}, "relative_step"), ({"warmup_init": True,
                                                                          "relative_step": False, "lr": 1.0}, "warmup"),
                  ({"eps": 1e-30, "relative_step": False, "lr": 1.0}, "eps")],
    "scorn": [({"betas": (0.9, 1.0)}, "betas[1]"), ({"betas": (0.9,)}, "betas")],
    "remaster": [({"betas": (1.0, 0.99)}, "betas[0]"), ({"orthograd_floor": 0.0}, "orthograd_floor")],
    "persona": [({"weight_decay_rate": 1.5}, "weight_decay_rate"), ({"cautious_min": 2.0}, "cautious_min"),
                ({"focus_boost": -1.0}, "focus_boost")],
    "AdamW8bitKahan": [({"amsgrad": True}, "amsgrad"), ({"optim_bits": 8}, "optim_bits"), ({"eps": -1.0}, "eps")],
    "Prodigy": [({"d0": 0.0}, "d0"), ({"betas": (0.9, 1.5)}, "betas[1]"), ({"growth_rate": 0.5}, "growth_rate")],
}


# What the originals accept (they validate little or nothing), the bundled classes accept too: a config that
# runs with the trainer's class must run with the drop-in (checked against the originals in test_differential).
ACCEPTED = {
    "scorn": [{"lr": -1e-4}, {"reset_interval": 100.0}, {"betas": (0.95, 0.99, 0.999)}, {"weight_decay": -0.1},
              {"reset_interval": -5}, {"cautious_min": True}],
    "remaster": [{"reset_increment": 100.0, "reset_interval": 100}, {"betas": [0.95, 0.99, 0.9]}],
    "persona": [{"reset_interval": 1.0}, {"focus_boost": True}, {"amp_factor": -1.0}],
    "adafactor": [{"lr": -1.0, "relative_step": False}, {"beta1": True, "lr": 1e-4, "relative_step": False},
                  {"eps": (1e-30, 1e-3, 0.5), "lr": 1e-4, "relative_step": False}],
}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", sorted(TABLES))
def test_bits_drawn_ahead_change_no_bit(name, dtype, request):
    """Stochastic rounding's bits drawn ahead on a helper thread: the same weights, state and global generator
    as drawing them in turn (fp16 too, where Persona's exact rounding draws floats in between)."""
    options = {"upcast": True} if name == "Prodigy" else None
    table = {**TABLES[name], **({"fp16_rounding": True} if name == "persona" else {})}
    runs = []
    for ahead in (False, True):
        if ahead:
            streams = request.getfixturevalue("bits_ahead_on")
            request.getfixturevalue("monkeypatch").setattr(HelperChoice, "use", lambda self: True)  # every step
        params = model(dtype)
        opt = optinspect.build_optimizer(params, table, options=options)
        torch.manual_seed(11)
        train(opt, params, 4)
        runs.append(outcome(opt, params))
    assert_same(*runs)
    assert bool(streams) == (name != "AdamW8bitKahan" and not (name == "adafactor" and dtype == torch.float16))


# big enough that CPU reductions split their work between two threads (and round differently on one); the fp32
# ones show a reduction's last bit, which stochastic rounding into bf16 would mostly hide
LENT_SHAPES = [(256, 192), (48, 32), (32768 + 128,)]
LENT_FP32 = [(192, 256), (256, 192), (32768 + 128,)]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", sorted(TABLES))
@pytest.mark.parametrize("extra", [{}, {"orthograd": True, "cautious_min": 0.5}], ids=["table", "reducing"])
def test_a_thread_lent_to_the_helper_changes_no_bit(name, dtype, extra, request):
    """With no idle CPU the intra-op pool lends a thread to the helper: elementwise arithmetic runs one thread
    short, reductions at the full count. Forced on every step (an optimizer keeps the faster way): the
    same weights, state and global generator as drawing in turn at the full count."""
    options = {"upcast": True} if name == "Prodigy" else None
    table = {**TABLES[name], **(extra if name in ("persona", "remaster", "scorn") else {})}
    if name == "persona":
        table["fp16_rounding"] = True  # fp16's exact rounding draws floats: the step stops lending mid-way
    if name == "Prodigy":
        table["d0"] = 1e-6  # d then follows d_hat, a quotient of two sums
    g = torch.Generator().manual_seed(3)
    start = [(torch.randn(s, generator=g) * 0.1).to(dtype) for s in LENT_SHAPES]
    start += [torch.randn(s, generator=g) * 0.1 for s in LENT_FP32]
    runs = []
    for lent in (False, True):
        if lent:
            streams = request.getfixturevalue("thread_lent")
        threads = torch.get_num_threads()
        params = [torch.nn.Parameter(t.clone()) for t in start]
        opt = optinspect.build_optimizer(params, table, options=options)
        torch.manual_seed(11)
        for t in range(1, 4):
            for p in params:  # one gradient with an RMS over 1, which SCORN and REMASTER clip by their mean
                p.grad = grad(p, t) * (30 if p.shape == (192, 256) else 1)
            opt._helper = HelperChoice(choice=True)
            opt.step()
            assert torch.get_num_threads() == threads
        runs.append(outcome(opt, params, groups=True))  # Prodigy's d sums
    assert torch.get_num_threads() >= 2  # the in-turn run reduced on two threads too
    assert_same(*runs)
    assert bool(streams) == (name != "AdamW8bitKahan" and not (name == "adafactor" and dtype == torch.float16))


SIDE_EXTRAS = [{}, {"orthograd": True, "cautious_min": 0.5}, {"reset_interval": 2, "fp16_rounding": True}]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("name", ["scorn", "remaster", "persona"])
@pytest.mark.parametrize("extra", SIDE_EXTRAS, ids=["table", "reducing", "resets"])
def test_steps_side_by_side_change_no_bit(name, dtype, extra, monkeypatch, two_threads):
    """Parameters' steps run side by side on two threads, each at a pool of one: the same weights, state (in
    the same order, so the same state_dict), groups and global generator as one after another at the full count.
    Means over the fp32 working copies split among threads at these sizes; the draws are in the parameters' order
    only because each waits for its turn."""
    from optinspect.optimizers import _base
    from optinspect.optimizers._ahead import TimedChoice

    g = torch.Generator().manual_seed(9)
    start = [(torch.randn(s, generator=g) * 0.1).to(dtype) for s in LENT_SHAPES]
    start += [torch.randn(s, generator=g) * 0.1 for s in LENT_FP32]
    calls = []
    real = _base.side_by_side
    monkeypatch.setattr(_base, "side_by_side", lambda steps: calls.append(len(steps)) or real(steps))
    runs = []
    for side in (False, True):
        params = [torch.nn.Parameter(t.clone()) for t in start]
        opt = optinspect.build_optimizer(params, {**TABLES[name], **extra})
        opt._side = TimedChoice(choice=side)
        opt._helper = HelperChoice(choice=False)  # settled: side by side from the first step (the state made there)
        torch.manual_seed(11)
        train(opt, params, 4)
        runs.append((*outcome(opt, params, groups=True), opt.state_dict()))
    assert_same(runs[0][:3], runs[1][:3])
    (a, b) = (r[3] for r in runs)
    assert list(a["state"]) == list(b["state"]) == list(range(len(start)))
    assert all(torch.equal(x, y) if torch.is_tensor(x) else x == y
               for i in a["state"] for x, y in zip(a["state"][i].values(), b["state"][i].values(), strict=True))
    assert calls == [len(start)] * 4


@pytest.mark.parametrize("helper", [False, True], ids=["no-helper", "helper"])
@pytest.mark.parametrize("side_faster", [True, False])
def test_steps_are_tried_side_by_side_and_in_turn_then_the_faster_kept(side_faster, helper, monkeypatch,
                                                                        two_threads):
    """Once the helper's choice is settled (decided, or no step can use it), the next steps alternate between side
    by side and the way it kept (two each way, the second timed), then the faster is kept; a step that cannot run
    side by side (one parameter too large) never does."""
    import time

    from optinspect.optimizers import _ahead, _base

    if helper:  # every step could use the helper (on a lent thread): it is tried first
        monkeypatch.setattr(_ahead, "AHEAD_MIN", 0)
        monkeypatch.setattr(_ahead, "_cores", torch.get_num_threads)
    real = _base.side_by_side
    ways = []

    def slow_side(steps):
        ways.append(True)
        if not side_faster:
            time.sleep(0.05)
        return real(steps)

    monkeypatch.setattr(_base, "side_by_side", slow_side)
    params = [torch.nn.Parameter(torch.randn(s).to(torch.bfloat16)) for s in LENT_SHAPES]
    opt = optinspect.build_optimizer(params, TABLES["remaster"])
    step_group = opt._step_group

    def slow_turn(group, ps):
        ways.append(False)
        if side_faster:
            time.sleep(0.05)
        step_group(group, ps)

    opt._step_group = slow_turn
    for t in range(1, 28 if helper else 17):
        for p in params:
            p.grad = grad(p, t)
        opt.step()
        assert opt.choosing == (t < (26 if helper else 14))  # still trying after this step
    first = [False] * 13 if helper else [False]  # the helper's trials, or the one step that found it unusable
    assert ways == first + [True] + [True, True, False, False] * 3 + [side_faster] * (1 if helper else 2)
    assert (opt._helper.choice is not None) == helper and not opt.choosing
    big = torch.nn.Parameter(torch.zeros(_base.SIDE_BY_SIDE_MAX + 64, dtype=torch.bfloat16))
    opt = optinspect.build_optimizer([*params, big], TABLES["remaster"])
    ways.clear()
    for t in range(1, 4):
        for p in [*params, big]:
            p.grad = grad(p, t)
        opt.step()
    assert ways == [] and opt._side._tried == -1  # never side by side, nothing timed


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name,klass", [("scorn", SCORN), ("remaster", REMASTER), ("persona", PersonaOptimizer)])
def test_orthograd_dot_products_taken_ahead_change_no_bit(name, klass, dtype, monkeypatch, two_threads):
    """orthograd's bf16/fp16 dot products are serial chains in torch at these sizes: taken before the step on the
    pool's threads side by side, they are the ones computed in turn at the full count (as before, checked by
    switching the table off). The fp32 tensors' dot products split among threads and stay in turn."""
    from contextlib import nullcontext

    from optinspect.optimizers import _common, _spread

    table = {**TABLES[name], "orthograd": True}
    g = torch.Generator().manual_seed(5)
    start = [(torch.randn(s, generator=g) * 0.1).to(dtype) for s in LENT_SHAPES]
    start += [torch.randn(s, generator=g) * 0.1 for s in LENT_FP32]
    taken = []

    def spy(tasks):
        taken.append(len(tasks))
        return _spread.spread(tasks)

    monkeypatch.setattr(_common, "spread", spy)
    runs = []
    for ahead in (False, True):
        with monkeypatch.context() as m:
            if not ahead:
                m.setattr(klass, "_ahead_of_step", lambda self, groups: nullcontext())
            params = [torch.nn.Parameter(t.clone()) for t in start]
            opt = optinspect.build_optimizer(params, table)
            assert type(opt) is klass
            torch.manual_seed(11)
            train(opt, params, 3)
        runs.append(outcome(opt, params))
    assert torch.get_num_threads() == 2
    assert_same(*runs)
    low = sum(len(s) >= 2 for s in LENT_SHAPES)
    assert taken == [low] * 3 and low >= 2
    assert _common._DOTS == {}


@pytest.mark.parametrize("fixture", ["thread_lent", "bits_ahead_on"])
@pytest.mark.parametrize("name", sorted(TABLES))
def test_an_optimizer_tries_the_helper_both_ways_then_keeps_one(name, fixture, request):
    """With or without an idle CPU the first steps alternate between the helper and drawing in turn (timed),
    then one way is kept; AdamW8bitKahan draws nothing, so it never uses the helper."""
    streams = request.getfixturevalue(fixture)
    params = [torch.nn.Parameter(torch.randn(s).to(torch.bfloat16)) for s in LENT_SHAPES]
    opt = optinspect.build_optimizer(params, TABLES[name], options={"upcast": True} if name == "Prodigy" else None)
    started = []
    for t in range(1, 17):
        for p in params:
            p.grad = grad(p, t)
        before = len(streams)
        opt.step()
        started.append(len(streams) > before)
    if name == "AdamW8bitKahan":
        assert not any(started)
        return
    assert started[:13] == [True] + [True, True, False, False] * 3
    assert opt._helper.choice is not None and started[13:] == [opt._helper.choice] * 3


def chained_and_not(monkeypatch, cls, make, set_grads) -> list[int]:
    """Seven steps tensor by tensor, then the same with the multi-tensor chains forced on (the path off CPU;
    side by side off, as there): the same weights, state and generator. Returns the chains' lengths."""
    import optinspect.optimizers._common as C

    monkeypatch.setenv("OPTINSPECT_SIDE_BY_SIDE", "0")
    runs, batched = [], []
    static = isinstance(cls.__dict__["_update_multi"], staticmethod)
    real = cls._update_multi  # a plain function either way, taken from the class

    def counted(*args):
        batched.append(len(args[0] if static else args[1]))
        return real(*args)

    monkeypatch.setattr(cls, "_update_multi", staticmethod(counted) if static else counted)
    for multi in (False, True):
        monkeypatch.setattr(C, "MULTI_TENSOR_ON_CPU", multi)
        params, opt = make()
        torch.manual_seed(5)
        for t in range(1, 8):
            set_grads(params, t)
            opt.step()
        runs.append(outcome(opt, params))
    assert_same(*runs)
    return batched


def late_joiner(params, t) -> None:
    """Gradients for all but the 4-D tensor, which starts at step 3 (its k or step count then differs)."""
    for i, p in enumerate(params):
        p.grad = grad(p, t) if i != 2 or t > 2 else None


PERSONA_MULTI = [{}, {"amp_factor": 2.5, "weight_decay": 0.1, "weight_decay_rate": 0.9},
                 {"constrain": True, "orthograd": True}, {"reset_interval": 3, "reset_increment": 1},
                 {"cautious_min": 0.5}, {"cautious_min": 0.0, "focus_boost": 0.1, "focus_eps": 1e-3},
                 {"focus_boost": 0.1}, {"focus_boost": 0.5, "reset_interval": 2}, {"stochastic_fp": False}]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kw", PERSONA_MULTI, ids=lambda k: ",".join(k) or "defaults")
def test_persona_multi_tensor_chain_changes_no_bit(kw, dtype, monkeypatch):
    """Persona's multi-tensor chain (the path off CPU, forced on here): the same weights, state and generator as
    tensor by tensor, in every configuration (the cautious mask's mean is each tensor's own)."""
    def make():
        params = model(dtype)
        return params, PersonaOptimizer(params, lr=1e-3, **kw)

    def set_grads(params, t):
        for p in params:
            p.grad = grad(p, t)
        params[4].grad[::3] = 0  # exact zeros: the cautious mask counts them as agreeing (prod >= 0)

    batched = chained_and_not(monkeypatch, PersonaOptimizer, make, set_grads)
    assert batched and all(n > 1 for n in batched)


EMA_MULTI = {
    SCORN: [{}, {"amp": 2.0, "weight_decay": 0.1, "weight_decay_rate": 0.9, "spectral_update_scale": 0.5},
            {"constrain": True, "weight_decay": 0.1, "orthograd": True}, {"reset_interval": 3, "reset_increment": 1},
            {"cautious_min": 0.5}, {"focus_ratio": 0.1}, {"focus_ratio": 0.1, "reset_interval": 3},
            {"stochastic_fp": False}],
    REMASTER: [{}, {"amp": 2.0, "weight_decay": 0.1, "weight_decay_rate": 0.9}, {"orthograd": False},
               {"reset_interval": 3, "reset_increment": 1}, {"cautious_min": 0.5}, {"stochastic_fp": False}],
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("cls", "kw"), [(c, kw) for c, cases in EMA_MULTI.items() for kw in cases],
                         ids=lambda v: v.__name__ if isinstance(v, type) else ",".join(v) or "defaults")
def test_scorn_and_remaster_multi_tensor_chains_change_no_bit(cls, kw, dtype, monkeypatch):
    """SCORN's and REMASTER's multi-tensor chains (the path off CPU, forced on here, side by side off): the same
    weights, state and generator as tensor by tensor. A parameter that joins late (another k) runs alone, and so
    does bf16 worked on in place."""
    def make():
        params = model(dtype)
        return params, cls(params, lr=1e-3, **kw)

    def set_grads(params, t):
        late_joiner(params, t)
        params[1].grad.mul_(t != 2)  # a zero gradient: REMASTER's norm ratio is 0 (no division)

    batched = chained_and_not(monkeypatch, cls, make, set_grads)
    alone = dtype != torch.float32 and kw.get("stochastic_fp") is False
    assert bool(batched) != alone and all(n > 1 for n in batched)
    if not alone and "reset_interval" not in kw:  # steps 1-2 without the late one, then at its own k it runs
        # apart (with these resets it is at the others' k: all reset at step 3)
        assert batched[0] == len(SHAPES) - 1 and len(SHAPES) not in batched


@pytest.mark.parametrize("shapes", [[(64, 16), (16, 64)] * 3, [(3072, 16)] * 2 + [(16, 3072)] * 2,
                                    [(8, 4, 3, 3)] * 3 + [(8, 36)], [(300,), (48, 32), (48, 32)],
                                    [(4, 4)] * 3 + [(7, 5)] * 2 + [(1, 50)] * 2])
def test_batched_newton_schulz_is_the_per_matrix_one(shapes):
    """SCORN's Newton-Schulz for a chain's matrices of one shape as one batch (the path off CPU, forced on here):
    the per-matrix results in the same layouts; bit for bit at LoRA, kernel and usual sizes, within 1e-5 of the
    largest entry where the batched product takes another CPU kernel (small matrices: the parity gate on CUDA
    allows 5e-4 of a step)."""
    from optinspect.optimizers import scorn

    g = torch.Generator().manual_seed(0)
    gs = [torch.randn(s, generator=g) for s in shapes]
    want = [scorn.lmo_(x.clone()) for x in gs]
    try:
        scorn.BATCHED_NS_ON_CPU = True
        got = scorn.lmo_many_([x.clone() for x in gs])
    finally:
        scorn.BATCHED_NS_ON_CPU = False
    assert [(a.shape, a.stride()) for a in got] == [(b.shape, b.stride()) for b in want]
    small = min(min(x.shape[0], x[0].numel()) for x in gs if x.ndim >= 2) < 8
    for a, b in zip(got, want, strict=True):
        if small:
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5 * float(b.abs().max()))
        else:
            assert torch.equal(a, b)


def test_scorn_chains_with_batched_newton_schulz_change_no_bit_at_lora_shapes(monkeypatch):
    """The whole SCORN step through the chains with its Newton-Schulz batched (the path off CPU) on LoRA-shaped
    tensors: the same weights and state as tensor by tensor, bf16 with stochastic rounding included."""
    from optinspect.optimizers import scorn

    for dtype in (torch.float32, torch.bfloat16):
        def make(dtype=dtype):
            g = torch.Generator().manual_seed(0)
            params = [torch.nn.Parameter((torch.randn(s, generator=g) * 0.1).to(dtype))
                      for s in [(64, 16), (16, 64)] * 3]
            return params, SCORN(params, lr=1e-3, weight_decay=0.01, focus_ratio=0.1)

        def set_grads(params, t):
            for p in params:
                p.grad = grad(p, t)

        monkeypatch.setattr(scorn, "BATCHED_NS_ON_CPU", True)
        assert chained_and_not(monkeypatch, SCORN, make, set_grads)


@pytest.mark.parametrize("name", sorted(TABLES))
def test_empty_tensors_in_a_chain_change_nothing(name, monkeypatch):
    """Empty parameters among full ones (a (0, 8) matrix, a (0,) vector) in the chains, SCORN's Newton-Schulz
    batched: the same weights, state (NaN where an empty tensor's RMS is 0/0, alike) and generator as tensor by
    tensor."""
    import optinspect.optimizers._common as C
    from optinspect.optimizers import scorn

    monkeypatch.setenv("OPTINSPECT_SIDE_BY_SIDE", "0")
    runs = []
    for multi in (False, True):
        monkeypatch.setattr(C, "MULTI_TENSOR_ON_CPU", multi)
        monkeypatch.setattr(scorn, "BATCHED_NS_ON_CPU", multi)
        g = torch.Generator().manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in [(16, 8), (0, 8), (0,), (16, 8), (8,)]]
        opt = optinspect.build_optimizer(params, TABLES[name])
        train(opt, params, 3)
        runs.append(outcome(opt, params))
    (p0, s0, r0), (p1, s1, r1) = runs
    assert all(torch.equal(a, b) for a, b in zip(p0, p1, strict=True)) and torch.equal(r0, r1)
    assert [t.shape for t in s0] == [t.shape for t in s1]
    assert all(torch.allclose(a, b, rtol=0, atol=0, equal_nan=True) for a, b in zip(s0, s1, strict=True))


ADAFACTOR_MULTI = [{}, {"lr": 1e-3, "relative_step": False, "scale_parameter": False},
                   {"lr": 1e-3, "relative_step": False, "beta1": 0.9, "weight_decay": 0.1},
                   {"warmup_init": True, "beta1": 0.5, "clip_threshold": 0.01}]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kw", ADAFACTOR_MULTI, ids=lambda k: ",".join(k) or "defaults")
def test_adafactor_multi_tensor_chains_change_no_bit(kw, dtype, monkeypatch):
    """Adafactor's multi-tensor chains (the path off CPU, forced on here): the same weights, state and generator
    as tensor by tensor, with factored and plain second moments in one chain, learning rates scaled by each
    tensor's RMS or not (a zero-initialised tensor, as a LoRA up-projection), and a parameter that joins late
    (another step count: the chain runs tensor by tensor)."""
    def make():
        params = model(dtype)
        with torch.no_grad():
            params[0].zero_()
        return params, EnhancedAdafactor(params, **kw)

    batched = chained_and_not(monkeypatch, EnhancedAdafactor, make, late_joiner)
    assert batched == [len(SHAPES) - 1] * 2


class _Dispatched:
    """Counts a step's operations (views aside: they launch nothing) and host syncs (a value read into Python)."""

    def __init__(self) -> None:
        from torch.utils._python_dispatch import TorchDispatchMode

        outer = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                if not func.is_view:
                    outer.syncs += func.overloadpacket.__name__ == "_local_scalar_dense"
                    outer.ops += 1
                return func(*args, **(kwargs or {}))

        self.ops = self.syncs = 0
        self.mode = Mode()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", sorted(TABLES))
def test_the_chains_ask_fewer_operations_and_no_more_syncs_of_a_gpu(name, dtype, monkeypatch):
    """What the multi-tensor chains are for, counted on CPU: a step over 16 LoRA-shaped tensors dispatches fewer
    operations (on CUDA each is a kernel launch), and reads no more values back to the host, than tensor by
    tensor, the off-CPU branches taken (no check before a rounding's repair, SCORN's Newton-Schulz batched).
    REMASTER's norm-ratio test is no sync there: only orthograd's projection is, once per matrix. Prodigy in bf16
    (its own dtype) runs tensor by tensor either way."""
    import optinspect.optimizers._common as C
    from optinspect.optimizers import _rounding, scorn

    monkeypatch.setenv("OPTINSPECT_SIDE_BY_SIDE", "0")
    monkeypatch.setenv("OPTINSPECT_BITS_AHEAD", "0")
    monkeypatch.setattr(_rounding, "_may_carry_badly", lambda source: True)
    counts = []
    for multi in (False, True):
        monkeypatch.setattr(C, "MULTI_TENSOR_ON_CPU", multi)
        monkeypatch.setattr(scorn, "BATCHED_NS_ON_CPU", multi)
        g = torch.Generator().manual_seed(0)
        params = [torch.nn.Parameter((torch.randn(s, generator=g) * 0.1).to(dtype))
                  for s in [(256, 16), (16, 256)] * 8]
        opt = optinspect.build_optimizer(params, TABLES[name])
        train(opt, params, 2)
        for p in params:
            p.grad = grad(p, 3)
        seen = _Dispatched()
        with seen.mode:
            opt.step()
        counts.append((seen.ops, seen.syncs))
    (by_tensor, by_tensor_syncs), (chained, chained_syncs) = counts
    if name == "Prodigy" and dtype == torch.bfloat16:
        assert chained == by_tensor
    else:
        assert chained < 0.75 * by_tensor, counts
    assert chained_syncs <= by_tensor_syncs
    if name == "remaster":
        assert (by_tensor_syncs, chained_syncs) == (32, 16)
    elif name != "Prodigy":
        assert chained_syncs == 0


CHAIN_VARIANTS = {
    "adafactor": [{}, {"beta1": None}, {"scale_parameter": True, "relative_step": True, "lr": None},
                  {"clip_threshold": 0.01}],
    "scorn": [{}, {"focus_ratio": 0.0}, {"cautious_min": 0.3}, {"constrain": True}, {"reset_interval": 2},
              {"orthograd": True}, {"stochastic_fp": False}],
    "remaster": [{}, {"cautious_min": 0.0}, {"orthograd": False}, {"reset_interval": 2, "reset_increment": 2},
                 {"stochastic_fp": False}],
    "persona": [{}, {"focus_boost": 0.0}, {"cautious_min": 0.2}, {"orthograd": True}, {"constrain": True},
                {"amp_factor": 3.0}, {"reset_interval": 3}],
    "AdamW8bitKahan": [{}, {"stabilize": True}, {"weight_decay": 0.1}],
    "Prodigy": [{}, {"weight_decay": 0.0}],
}


@pytest.mark.parametrize("seed", range(3))
def test_random_tables_and_shapes_chain_as_tensor_by_tensor(seed, monkeypatch):
    """120 random cases: an optimizer, a variant of its table, a dtype (fp16 included), 2-7 tensors of random
    shapes (LoRA pairs among them), gradients that skip some tensors on some steps. Chained and tensor by tensor
    must leave the same weights, state and generator (NaN where fp16 overflows, alike). SCORN's batched
    Newton-Schulz is not forced here: on CPU small matrices round otherwise batched (its own test)."""
    import random

    import optinspect.optimizers._common as C

    monkeypatch.setenv("OPTINSPECT_SIDE_BY_SIDE", "0")
    rng = random.Random(seed)
    same = dict(rtol=0, atol=0, equal_nan=True)
    for case in range(40):
        name = rng.choice(sorted(TABLES))
        table = {k: v for k, v in {**TABLES[name], **rng.choice(CHAIN_VARIANTS[name])}.items()
                 if v is not None}  # None: the key left out
        dtype = rng.choice([torch.float32, torch.bfloat16, torch.float16])
        shapes = [rng.choice([(rng.randint(1, 40), rng.randint(1, 40)), (rng.randint(1, 300),), (64, 16), (16, 64),
                              (rng.randint(1, 6), rng.randint(1, 4), 3, 3)]) for _ in range(rng.randint(2, 7))]
        runs = []
        for multi in (False, True):
            monkeypatch.setattr(C, "MULTI_TENSOR_ON_CPU", multi)
            g = torch.Generator().manual_seed(case)
            params = [torch.nn.Parameter((torch.randn(s, generator=g) * 0.1).to(dtype)) for s in shapes]
            opt = optinspect.build_optimizer(params, table)
            torch.manual_seed(case)
            for t in range(1, 5):
                for i, p in enumerate(params):
                    p.grad = grad(p, t) if (i + t) % 5 else None
                opt.step()
            runs.append(outcome(opt, params))
        (p0, s0, r0), (p1, s1, r1) = runs
        where = f"case {case}: {name} {dtype} {shapes} {table}"
        assert all(torch.allclose(a.float(), b.float(), **same) for a, b in zip(p0, p1, strict=True)), where
        assert len(s0) == len(s1) and torch.equal(r0, r1), where
        assert all(a.shape == b.shape and torch.allclose(a.float(), b.float(), **same)
                   for a, b in zip(s0, s1, strict=True)), where


KAHAN_MULTI = [{}, {"stabilize": False}, {"fix_stabilize": True}, {"decay_weights": True, "weight_decay": 0.1},
               {"weight_decay": 0.0, "stabilize": False}]
KAHAN_SHAPES = [(48, 32), (64, 64), (300,), (256,), (8,), (32, 48), (512,), (3, 3)]  # 300: a partial block


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kw", KAHAN_MULTI, ids=lambda k: ",".join(k) or "defaults")
def test_adamw8bitkahan_flat_runs_change_no_bit(kw, dtype, monkeypatch):
    """AdamW8bitKahan's flat runs (the path off CPU, forced on here): consecutive 8-bit tensors of whole blocks
    with one step and learning rate updated as one tensor give the same weights, codes, absmax and Kahan buffers
    as tensor by tensor; the others (a partial block, fp32 states, another learning rate) run alone."""
    import optinspect.optimizers._common as C
    from optinspect.optimizers._quant import dynamic_map

    runs, flat = [], []
    real = AdamW8bitKahan._apply_flat
    monkeypatch.setattr(AdamW8bitKahan, "_apply_flat", lambda self, run, group: (flat.append(len(run)),
                                                                                    real(self, run, group)))
    g = torch.Generator().manual_seed(4)
    start = [(torch.randn(s, generator=g) * 0.1).to(dtype) for s in KAHAN_SHAPES]
    for multi in (False, True):
        monkeypatch.setattr(C, "MULTI_TENSOR_ON_CPU", multi)
        params = [torch.nn.Parameter(t.clone()) for t in start]
        opt = AdamW8bitKahan(params, lr=1e-3, min_8bit_size=256, **kw)
        train(opt, params, 2)
        opt.state[params[1]]["qmap1"] = dynamic_map(False)  # another map (as a loaded state may hold)
        train(opt, params, 4, start=3)
        runs.append((*outcome(opt, params), opt.state_dict()))
    assert_same(runs[0][:3], runs[1][:3])
    a, b = runs[0][3]["state"], runs[1][3]["state"]
    assert all(torch.equal(x, y) if torch.is_tensor(x) else x == y
               for i in a for x, y in zip(_leaves(a[i]), _leaves(b[i]), strict=True))
    assert flat and all(n > 1 for n in flat)


def test_an_optimizers_quantization_maps_are_its_own():
    """An optimizer's 8-bit states share its own maps, as bitsandbytes' do (one tensor for all its parameters):
    changing them in place changes no other optimizer's, and no map a later one starts with (they were once the
    module's cached tensor)."""
    from optinspect.optimizers._quant import dynamic_map

    want = dynamic_map(True)
    params = [torch.nn.Parameter(torch.randn(512)) for _ in range(2)]
    opt = AdamW8bitKahan(params, min_8bit_size=256)
    other = [torch.nn.Parameter(torch.randn(512))]
    neighbour = AdamW8bitKahan(other, min_8bit_size=256)
    train(opt, params, 1)
    train(neighbour, other, 1)
    assert opt.state[params[0]]["qmap1"] is opt.state[params[1]]["qmap1"]
    opt.state[params[0]]["qmap1"].zero_()
    assert torch.equal(neighbour.state[other[0]]["qmap1"], want) and torch.equal(dynamic_map(True), want)
    fresh = [torch.nn.Parameter(torch.randn(512))]
    later = AdamW8bitKahan(fresh, min_8bit_size=256)
    train(later, fresh, 1)
    assert torch.equal(later.state[fresh[0]]["qmap1"], want)


def _leaves(d: dict) -> list:
    return [w for v in d.values() for w in (_leaves(v) if isinstance(v, dict) else [v])]


@pytest.mark.parametrize("name", sorted(TABLES))
def test_a_sparse_gradient_is_refused_before_anything_moves(name):
    params = model()
    opt = optinspect.build_optimizer(params, TABLES[name])
    before = [p.detach().clone() for p in params]
    for p in params[:-1]:
        p.grad = grad(p, 1)
    params[-1].grad = grad(params[-1], 1).to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()
    assert all(torch.equal(p, b) for p, b in zip(params, before, strict=True)) and not opt.state


@pytest.mark.parametrize("name,kw", [(n, kw) for n, cases in ACCEPTED.items() for kw in cases])
def test_constructors_accept_what_the_originals_accept(name, kw):
    from optinspect.build import class_for

    params = model()
    opt = class_for(name)(params, **kw)
    for t in range(1, 3):
        for p in params:
            p.grad = grad(p, t)
        opt.step()


@pytest.mark.parametrize("name,kw,needle", [(n, kw, s) for n, cases in BAD_ARGS.items() for kw, s in cases])
def test_constructor_errors_name_the_argument(name, kw, needle):
    from optinspect.build import class_for

    klass = class_for(name.lower())
    with pytest.raises(ValueError, match=None) as e:
        klass(model(), **kw)
    assert needle in str(e.value)


@pytest.mark.parametrize("klass", [SCORN, REMASTER, PersonaOptimizer])
def test_several_param_groups_equal_separate_optimizers(klass):
    a, b = model(), model()
    opt = klass([{"params": a[:2], "lr": 1e-3}, {"params": a[2:], "lr": 3e-3}], weight_decay=0.01)
    o1, o2 = klass(b[:2], lr=1e-3, weight_decay=0.01), klass(b[2:], lr=3e-3, weight_decay=0.01)
    for t in range(1, 8):
        for p, q in zip(a, b, strict=True):
            p.grad = grad(p, t)
            q.grad = grad(q, t)
        opt.step()
        o1.step()
        o2.step()
    for p, q in zip(a, b, strict=True):
        assert torch.equal(p, q)


def test_scorn_rejects_5d_tensors_at_construction():
    with pytest.raises(ValueError, match="4 dimensions"):
        SCORN([torch.nn.Parameter(torch.zeros(2, 2, 2, 2, 2))])


def test_scorn_handles_every_rank_without_special_names():
    ps = [torch.nn.Parameter(torch.randn(s)) for s in [(), (5,), (4, 6), (3, 4, 5), (2, 3, 3, 3)]]
    opt = SCORN(ps, lr=1e-2)
    train(opt, ps, 3)
    assert all(torch.isfinite(p).all() for p in ps)


def _roundtrip(name, dtype, table=None):
    table = table or TABLES[name]
    torch.manual_seed(1)
    a = model(dtype)
    opt = optinspect.build_optimizer(a, table)
    train(opt, a, 6)
    torch.manual_seed(2)
    train(opt, a, 6, start=7)
    torch.manual_seed(1)
    b = model(dtype)
    opt_b = optinspect.build_optimizer(b, table)
    train(opt_b, b, 6)
    buf = io.BytesIO()
    torch.save(opt_b.state_dict(), buf)
    buf.seek(0)
    c = [torch.nn.Parameter(p.detach().clone()) for p in b]
    opt_c = optinspect.build_optimizer(c, table)
    opt_c.load_state_dict(torch.load(buf, weights_only=True))
    torch.manual_seed(2)
    train(opt_c, c, 6, start=7)
    return a, c


@pytest.mark.parametrize("name", sorted(TABLES))
def test_save_load_continue_is_bit_identical_fp32(name):
    a, c = _roundtrip(name, torch.float32)
    assert all(torch.equal(p, q) for p, q in zip(a, c, strict=True))


@pytest.mark.parametrize("name", ["scorn", "remaster", "persona", "Prodigy"])
def test_save_load_continue_is_bit_identical_bf16(name):
    a, c = _roundtrip(name, torch.bfloat16)
    assert all(torch.equal(p, q) for p, q in zip(a, c, strict=True))


@pytest.mark.parametrize("kw", [dict(lr=5e35), dict(lr=5e35, weight_decay=1e-40), dict(lr=5e35, beta1=0.9)])
def test_adafactor_bf16_weights_never_round_into_infinity(kw):
    """The step's own bound on the weights lets the rounding skip its check: weights at bf16's largest, pushed
    past it by a uniform update of lr (~25k fp32 steps there, short of fp32's own largest), must still come back
    as that largest value, never inf; a NaN gradient leaves NaN weights, never numbers."""
    big = torch.finfo(torch.bfloat16).max
    g = torch.Generator().manual_seed(0)
    p = torch.nn.Parameter((torch.randn(64, 32, generator=g).sign() * big).bfloat16())
    opt = EnhancedAdafactor([p], scale_parameter=False, relative_step=False, **kw)
    for _ in range(3):
        p.grad = -p.detach().sign()
        opt.step()
    assert torch.isfinite(p).all()
    assert (p.abs() == big).any()
    p.grad = torch.randn(64, 32, generator=g).bfloat16()
    p.grad[3, 5] = float("nan")
    opt.step()
    assert not torch.isfinite(p[3]).any()


def test_adafactor_bf16_reload_casts_moments_down_unless_fixed():
    a, c = _roundtrip("adafactor", torch.bfloat16)
    assert not all(torch.equal(p, q) for p, q in zip(a, c, strict=True))  # the original's behaviour
    fixed = {**TABLES["adafactor"], "fp32_state_on_load": True}
    a, c = _roundtrip("adafactor", torch.bfloat16, fixed)
    assert all(torch.equal(p, q) for p, q in zip(a, c, strict=True))


def _reset_steps(klass, counter, **kw):
    p = [torch.nn.Parameter(torch.randn(10))]
    opt = klass(p, lr=1e-3, reset_interval=5, reset_increment=3, **kw)
    steps, last = [], 0
    for t in range(1, 31):
        p[0].grad = torch.randn(10)
        opt.step()
        n = opt.state[p[0]][counter]
        if n != last:
            steps.append(t)
            last = n
    return steps


@pytest.mark.parametrize("klass,counter", [(SCORN, "times_zero"), (REMASTER, "times_zero"),
                                           (PersonaOptimizer, "times_reset")])
def test_reset_period_original_and_fixed(klass, counter):
    assert _reset_steps(klass, counter) == [5, 12, 22]  # measured on the originals (spec 4.4)
    assert _reset_steps(klass, counter, exact_reset_period=True) == [5, 13, 24]  # 5, +8, +11 as documented


def test_adamw8bitkahan_weight_decay_fix():
    for decay_weights, expect_shrink in ((False, False), (True, True)):
        p = [torch.nn.Parameter(torch.full((64, 80), 1.0))]
        opt = AdamW8bitKahan(p, lr=0.1, weight_decay=0.5, stabilize=False, decay_weights=decay_weights)
        for _ in range(3):
            p[0].grad = torch.zeros(64, 80)
            opt.step()
        shrunk = float(p[0].detach().mean())
        if expect_shrink:
            assert math.isclose(shrunk, (1 - 0.05) ** 3, rel_tol=1e-6)
        else:
            assert shrunk == 1.0


def test_adamw8bitkahan_stabilize_fix_takes_the_first_step():
    def first_step_moves(**kw):
        p = [torch.nn.Parameter(torch.zeros(64, 80))]
        opt = AdamW8bitKahan(p, lr=1e-3, weight_decay=0.0, min_8bit_size=256, **kw)
        p[0].grad = torch.randn(64, 80) + 3.0  # no zero gradients
        opt.step()
        return bool(p[0].abs().sum() > 0)

    assert not first_step_moves(stabilize=True)  # the original skips it on the 8-bit path
    assert first_step_moves(stabilize=True, fix_stabilize=True)
    assert first_step_moves(stabilize=False)


def test_remaster_orthograd_floor_fix_renormalises_tiny_gradients():
    p = torch.nn.Parameter(torch.randn(4, 32) * 0.05)
    g = torch.randn(4, 32) * 1e-5
    for floor, keeps_norm in ((1e-3, False), (1e-6, True)):
        p.grad = g.clone()
        orthograd_(p, floor)
        assert math.isclose(p.grad.norm().item(), g.norm().item(), rel_tol=1e-4) is keeps_norm


def test_persona_fp16_rounding_fix_uses_fp16_precision():
    torch.manual_seed(0)
    for fix in (False, True):
        p = [torch.nn.Parameter(torch.full((4096,), 1.0, dtype=torch.float16))]
        opt = PersonaOptimizer(p, lr=1e-3, fp16_rounding=fix)
        p[0].grad = torch.full((4096,), -1.0, dtype=torch.float16)
        opt.step()
        on_bf16_grid = torch.equal(p[0].float(), p[0].float().to(torch.bfloat16).float())
        assert on_bf16_grid is (not fix)


def test_build_optimizer_rejects_invalid_tables_with_located_messages():
    with pytest.raises(optinspect.InvalidConfig) as e:
        optinspect.build_optimizer(model(), {"type": "scorn", "lr": "1e-4", "weight_decay_rat": 0.1})
    msg = str(e.value)
    assert "OPT104" in msg and "OPT102" in msg and "weight_decay_rate" in msg
    from optinspect.build import NotBundled

    with pytest.raises(NotBundled, match="adamw_optimi"):
        optinspect.build_optimizer(model(), {"type": "adamw_optimi", "lr": 1e-4})
    opt = optinspect.build_optimizer(model(), {"type": "adamw", "lr": 1e-4})
    assert isinstance(opt, torch.optim.AdamW)


def test_a_trainers_optimizers_folder_first_on_sys_path_changes_nothing(tmp_path, monkeypatch):
    """Run from inside a trainer checkout: its `optimizers` folder is importable, and ours are still the ones built."""
    import sys

    fake = tmp_path / "optimizers"
    fake.mkdir()
    (fake / "scorn.py").write_text("raise RuntimeError('the trainer module was imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "optimizers", raising=False)
    opt = optinspect.build_optimizer(model(), {"type": "scorn", "lr": 1e-4})
    assert type(opt) is SCORN and type(opt).__module__ == "optinspect.optimizers.scorn"


def test_adafactor_is_the_trainer_class_name():
    from optinspect.optimizers import adafactor

    assert adafactor.EnhancedAdafactor is EnhancedAdafactor


def test_trainer_keys_are_not_passed_to_the_constructor():
    opt = optinspect.build_optimizer(model(), {"type": "adamw", "lr": 1e-4, "gradient_release": False,
                                               "betas": [0.9, 0.99], "beta2_half_life": 500.0})
    assert "beta2_half_life" not in opt.defaults and "gradient_release" not in opt.defaults
    # a table the chroma fork would refuse (OPT117) still builds optinspect's class: trainer rules do not apply
    opt = optinspect.build_optimizer(model(), {"type": "scorn", "lr": 1e-4, "beta2_half_life": 500.0})
    assert "beta2_half_life" not in opt.defaults


@pytest.mark.parametrize("klass,extra", [(SCORN, {"exact_reset_period": True, "fp16_rounding": True}),
                                         (REMASTER, {"orthograd_floor": 1e-6}),
                                         (AdamW8bitKahan, {"decay_weights": True, "stabilize": False})])
def test_resuming_from_an_original_checkpoint_keeps_this_instances_options(klass, extra):
    a = model()
    opt = klass(a, **extra)
    train(opt, a, 2)
    sd = opt.state_dict()
    for g in sd["param_groups"]:  # what the original class saves: none of optinspect's extra keys
        for k in extra:
            g.pop(k, None)
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    resumed = klass(b, **extra)
    resumed.load_state_dict(sd)
    for k, v in extra.items():
        assert resumed.param_groups[0][k] == v
    train(resumed, b, 1, start=3)


@pytest.mark.parametrize("name", sorted(TABLES))
def test_step_evaluates_the_closure_with_gradients(name):
    ps = model()
    opt = optinspect.build_optimizer(ps, TABLES[name])

    def closure():
        opt.zero_grad()
        loss = sum((p.float() ** 2).sum() for p in ps)
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert loss is not None and loss.requires_grad and all(p.grad is not None for p in ps)


SLICED = [("adafactor", {}), ("adafactor", {"beta1": None, "weight_decay": 0.0, "scale_parameter": True}),
          ("Prodigy", {}), ("Prodigy", {"weight_decay": 0.1, "fixed_decay": True, "safeguard_warmup": False}),
          ("persona", {}), ("persona", {"amp_factor": 2.5, "focus_boost": 0.1}), ("persona", {"constrain": True}),
          ("persona", {"reset_interval": 3, "reset_increment": 1, "weight_decay_rate": 0.9}),
          ("AdamW8bitKahan", {"weight_decay": 0.01}), ("AdamW8bitKahan", {"stabilize": True, "decay_weights": True}),
          ("AdamW8bitKahan", {"stabilize": True, "fix_stabilize": True})]


@pytest.mark.parametrize("slice_elements", [384, 640])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name,extra", SLICED)
def test_cpu_slices_change_no_bit(name, extra, dtype, slice_elements, monkeypatch):
    """Adafactor's, Prodigy's, Persona's and AdamW8bitKahan's in-cache slices (CPU_SLICE; block-aligned for the 8-bit states) against
    one op per whole tensor, on tensors whose sizes are not multiples of the slice or of the 256-element block."""
    import optinspect.optimizers._common

    table = {k: v for k, v in {**TABLES[name], **extra}.items() if v is not None}  # None: key left out
    runs = []
    for elements in (1 << 30, slice_elements):
        monkeypatch.setattr(optinspect.optimizers._common, "CPU_SLICE", elements)
        torch.manual_seed(0)
        params = model(dtype)
        opt = optinspect.build_optimizer(params, table)
        train(opt, params, 8)
        runs.append((params, opt))
    (whole, opt_w), (sliced, opt_s) = runs
    for a, b in zip(whole, sliced, strict=True):
        assert torch.equal(a, b)
        for key, value in opt_w.state[a].items():
            other = opt_s.state[b][key]
            assert torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other, key


@pytest.mark.parametrize("n", [1000, 70_001, 1 << 20])
def test_addcdiv_with_value_one_rounds_like_div_then_add(n):
    """Persona's g + ema / bc in one addcdiv relies on it: the quotient rounded, then the sum (any vector width,
    scalar tails, both threads)."""
    gen = torch.Generator().manual_seed(n)
    g, ema = torch.randn(n, generator=gen) * 1e-3, torch.randn(n, generator=gen) * 1e-4
    bc = 1 - 0.95**3
    assert torch.equal(torch.addcdiv(g, ema, ema.new_tensor(bc)), torch.div(ema, bc).add_(g))


def test_adamw8bitkahan_slices_skip_non_contiguous_state(monkeypatch):
    """A resumed checkpoint may hold a state tensor with other strides: the sliced path must not be taken."""
    import optinspect.optimizers._common

    monkeypatch.setattr(optinspect.optimizers._common, "CPU_SLICE", 512)
    runs = []
    for transpose in (False, True):
        params = model()
        opt = optinspect.build_optimizer(params, TABLES["AdamW8bitKahan"])
        train(opt, params, 2)
        if transpose:
            st = opt.state[params[0]]
            st["shift"] = st["shift"].t().contiguous().t()  # same values, column-major
        train(opt, params, 3, start=3)
        runs.append(params)
    assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))
