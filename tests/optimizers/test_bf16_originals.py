"""bf16 parameters, stochastic rounding included: ours against the trainer's own classes' results, recorded by
`record_bf16.py` from a diffusion-chroma checkout. Same start, gradients and seed: every weight and every state
tensor must be equal bit for bit (the random bits are drawn in the same order)."""

import json

import pytest
import torch

import optinspect
from optinspect.optimizers._ahead import HelperChoice

from .record_bf16 import CASES, OUT, SHAPES, flat, run, start


@pytest.fixture(scope="module")
def recorded():
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(OUT), "pt") as f:
        meta = f.metadata()
    assert json.loads(meta["cases"]) == {k: [t, kw] for k, (t, kw) in CASES.items()}, "re-record: cases changed"
    return load_file(str(OUT))


@pytest.mark.parametrize("ahead", [False, True], ids=["bits-in-turn", "bits-ahead"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_bf16_steps_equal_the_trainers_own_class(name, ahead, recorded, request):
    """Also with the random bits drawn ahead on a helper thread (chunks smaller than a tensor): the same bits."""
    streams = request.getfixturevalue("bits_ahead_on") if ahead else None
    if ahead:  # on every step, not only those an optimizer's first steps try it on
        request.getfixturevalue("monkeypatch").setattr(HelperChoice, "use", lambda self: True)
    key, kw = CASES[name]
    params = start()
    ours = flat(name, params, run(lambda ps: optinspect.build_optimizer(ps, {"type": key, **kw}), params))
    theirs = {k: v for k, v in recorded.items() if k.startswith(f"{name}/")}
    assert set(ours) >= set(theirs) and any(k.endswith("/param") for k in theirs)
    for k, want in theirs.items():
        got = ours[k]
        assert got.dtype == want.dtype, k
        assert torch.equal(got, want), f"{k}: max diff {(got.float() - want.float()).abs().max().item():.3g}"
    assert len(SHAPES) == sum(k.endswith("/param") for k in theirs)
    if ahead:  # every step that rounds drew its bits ahead, and no stream was started in vain
        assert bool(streams) == (key != "adamw8bitkahan")
        assert all(s._chunk is not None for s in streams)
