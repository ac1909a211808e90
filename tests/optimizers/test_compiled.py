"""Persona's opt-in compiled step (`compiled=True`, `optimizers/_compiled.py`): within a couple of ulps of the exact
step, one compiled graph for every mix of shapes and padding, and the exact step wherever it does not apply or
compiling is impossible."""

import warnings

import pytest
import torch

from optinspect.optimizers import _compiled
from optinspect.optimizers import persona as P
from optinspect.optimizers.persona import PersonaOptimizer

SHAPES = [(64, 16), (16, 64), (300,), (1,), (7, 3), (8, 4, 3, 3)]  # (1,): too small for the chain, run eagerly
EPS = torch.finfo(torch.float32).eps


def run(compiled: bool, dtype=torch.float32, steps: int = 3, **kw):
    g0 = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter((torch.randn(s, generator=g0) * 0.1).to(dtype)) for s in SHAPES]
    opt = PersonaOptimizer(params, lr=1e-3, compiled=compiled, **kw)
    torch.manual_seed(3)
    for t in range(steps):
        g = torch.Generator().manual_seed(t)
        for p in params:
            p.grad = (torch.randn(p.shape, generator=g) * 1e-2).to(dtype)
        opt.step()
    return params, opt


def tensors(params, opt) -> list[torch.Tensor]:
    return [p.detach() for p in params] + [v for p in params for v in opt.state[p].values()
                                           if isinstance(v, torch.Tensor) and v.dim()]


def compiler_or_skip() -> None:
    if P._CHAIN.unavailable is not None:
        pytest.skip(f"no compiled chain here: {P._CHAIN.unavailable}")


def within(a: list[torch.Tensor], b: list[torch.Tensor], eps_of_largest: float) -> None:
    """Each tensor within `eps_of_largest` float32 ulps of its largest entry (a relative count per element would
    blow up where a moment cancels to nearly zero)."""
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.shape == y.shape and x.dtype == y.dtype
        scale = float(y.float().abs().max()) or 1.0
        assert float((x.float() - y.float()).abs().max()) <= eps_of_largest * EPS * scale


def test_compiled_step_is_within_two_ulps_of_the_exact_one():
    exact = run(False, weight_decay=0.01)
    compiled = run(True, weight_decay=0.01)
    compiler_or_skip()
    within(tensors(*compiled), tensors(*exact), 2)
    assert not all(torch.equal(a, b) for a, b in zip(tensors(*compiled), tensors(*exact), strict=True))


@pytest.mark.slow
@pytest.mark.parametrize("kw", [{"focus_boost": 0.1, "amp_factor": 2.0, "constrain": True},
                                {"reset_interval": 2, "orthograd": True, "weight_decay": 0.1}],
                         ids=["focus,amp,constrain", "resets,orthograd"])
def test_compiled_step_in_other_configurations(kw):
    exact = run(False, steps=5, **kw)
    compiled = run(True, steps=5, **kw)
    compiler_or_skip()
    within(tensors(*compiled), tensors(*exact), 4)


@pytest.mark.slow
def test_compiled_step_of_bf16_weights_draws_as_the_exact_one():
    """bf16 weights: the chain works on fp32 copies, and the write-back draws the same random bits in the same
    order; the few values the chain moved by an ulp may round to the other bf16 neighbour."""
    exact, compiled = run(False, torch.bfloat16, weight_decay=0.01), run(True, torch.bfloat16, weight_decay=0.01)
    compiler_or_skip()
    rng = torch.get_rng_state()
    run(False, torch.bfloat16, weight_decay=0.01)
    assert torch.equal(torch.get_rng_state(), rng)
    for a, b in zip(tensors(*compiled), tensors(*exact), strict=True):
        assert (a != b).float().mean() < 0.01
        within([a], [b], 2 ** 16)  # one bf16 ulp of the largest entry


def test_one_graph_for_every_mix_of_shapes_and_padding():
    """Lengths, ranks, the number of padding tensors and every number (decays, learning rate, weight decay)
    vary call by call: no recompilation."""
    from torch._dynamo.utils import counters

    run(True, steps=1, weight_decay=0.01)
    compiler_or_skip()
    before = counters["stats"]["unique_graphs"]
    g = torch.Generator().manual_seed(1)
    for k, sizes in enumerate(([2], [5, 7], [49152] * 16, [3] * 9 + [100_000], [1000, 2, 17])):
        lists = [[torch.randn(n, generator=g).abs() for n in sizes] for _ in range(4)] + [None]
        b1, b2, lr = 0.9 - k / 100, 0.99 - k / 1000, 1e-3 / (k + 1)
        numbers = P._chain_numbers(torch.device("cpu"), (b1, 1 - b1, b2, 1 - b2, 0.1 * (k + 1), 1e-8 * (k + 1), 1.0,
                                                         lr, 0.01 * k, 0.0, 1e-7, 1 - lr))
        assert P._CHAIN(lists, numbers, False, True, False)
    assert counters["stats"]["unique_graphs"] == before


def test_where_the_chain_does_not_apply_the_step_is_exact():
    """The cautious mask (a mean per tensor) runs the exact step: bit for bit the step without `compiled`."""
    a, b = run(False, cautious_min=0.5), run(True, cautious_min=0.5)
    assert all(torch.equal(x, y) for x, y in zip(tensors(*a), tensors(*b), strict=True))


def test_without_a_compiler_it_says_so_once_and_runs_the_exact_step(monkeypatch):
    from torch._inductor.exc import CppCompileError

    def no_compiler(fn, **kw):
        def fail(*args):
            raise CppCompileError(["c++"], "c++: command not found")
        return fail

    chain = _compiled.CompiledChain(P._persona_chain)
    monkeypatch.setattr(P, "_CHAIN", chain)
    monkeypatch.setattr(torch, "compile", no_compiler)
    exact = run(False, weight_decay=0.01)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fallback = run(True, weight_decay=0.01)
    assert [str(w.message) for w in caught if "compiled chain unavailable" in str(w.message)] == [
        f"optinspect: compiled chain unavailable, running eager ({chain.unavailable})"]
    assert chain.unavailable.startswith("CppCompileError")
    assert all(torch.equal(x, y) for x, y in zip(tensors(*fallback), tensors(*exact), strict=True))


def test_runs_are_written_back_one_at_a_time(monkeypatch):
    """The fp32 working copies of bf16 weights live for one run of CHUNK parameters, not for the whole group: each
    run is written back before the next is prepared, in parameter order. (The chain is recorded, not compiled:
    each run then takes the exact step, which also checks the order against the step without `compiled`.)"""
    events = []
    monkeypatch.setattr(PersonaOptimizer, "_compiled_update",
                        staticmethod(lambda tensors, group, scalars: events.append(("run", len(tensors))) and False))
    real = PersonaOptimizer._write_back
    monkeypatch.setattr(PersonaOptimizer, "_write_back",
                        lambda self, p, *a: (events.append(("back", p.shape)), real(self, p, *a))[1])
    n = _compiled.CHUNK + 5
    g0 = torch.Generator().manual_seed(0)
    start = [(torch.randn(32, 8, generator=g0) * 0.1).bfloat16() for _ in range(n)]
    outs = []
    for compiled in (False, True):
        params = [torch.nn.Parameter(t.clone()) for t in start]
        opt = PersonaOptimizer(params, lr=1e-3, compiled=compiled)
        torch.manual_seed(1)
        for t in range(2):
            for p in params:
                p.grad = (torch.randn(p.shape, generator=torch.Generator().manual_seed(t)) * 1e-2).bfloat16()
            events.clear()
            opt.step()
        outs.append(([p.detach().clone() for p in params], torch.get_rng_state()))
    assert [e[0] for e in events] == ["run"] + ["back"] * _compiled.CHUNK + ["run"] + ["back"] * 5
    assert events[0] == ("run", _compiled.CHUNK) and events[_compiled.CHUNK + 1] == ("run", 5)
    assert all(torch.equal(a, b) for a, b in zip(outs[0][0], outs[1][0], strict=True))
    assert torch.equal(outs[0][1], outs[1][1])
