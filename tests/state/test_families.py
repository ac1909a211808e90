"""Every state family in the registry, recognised on state saved by the library that writes it.

Each case trains a small model for three steps with the library's own optimizer, saves `state_dict()` with
`torch.save`, and checks what `optinspect` reads back: the family, the step, and the first moment's RMS against
the figure computed from the library's own tensors (dequantized by bitsandbytes where the state is 8-bit).
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from optinspect import specs
from optinspect.state.analyse import build_report
from optinspect.state.load import load_state


def _lib(name: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pytest.importorskip(name)


def _ours(key: str, **kw):
    from optinspect.build import class_for

    return lambda ps: class_for(key)(ps, **kw)


# family name -> how to build the optimizer that writes it (params -> optimizer)
WRITERS = {
    "AdamW8bitKahan": lambda ps: _ours("adamw8bitkahan", lr=1e-3, min_8bit_size=16)(ps),
    "bitsandbytes 8-bit Lion": lambda ps: _lib("bitsandbytes").optim.Lion8bit(ps, lr=1e-3, min_8bit_size=16),
    "bitsandbytes 8-bit Adam(W)": lambda ps: _lib("bitsandbytes").optim.AdamW8bit(ps, lr=1e-3, min_8bit_size=16),
    "Adafactor": lambda ps: _lib("transformers.optimization").Adafactor(ps, lr=1e-3, relative_step=False,
                                                                        scale_parameter=False, beta1=0.9),
    "CAME": lambda ps: _lib("pytorch_optimizer").CAME(ps, lr=1e-3),
    "Prodigy": lambda ps: _lib("pytorch_optimizer").Prodigy(ps, lr=1.0),
    "PersonaOptimizer": lambda ps: _ours("persona", lr=1e-3)(ps),
    "SCORN": lambda ps: _ours("scorn", lr=1e-3, reset_interval=2)(ps),
    "REMASTER": lambda ps: _ours("remaster", lr=1e-3, reset_interval=2)(ps),
    "SCORN/REMASTER": lambda ps: _ours("remaster", lr=1e-3, reset_interval=0)(ps),
    "optimi AdamW": lambda ps: _lib("optimi").AdamW(ps, lr=1e-3),
    "Schedule-free AdamW": lambda ps: _lib("schedulefree").AdamWScheduleFree(ps, lr=1e-3),
    "Adan": lambda ps: _lib("pytorch_optimizer").Adan(ps, lr=1e-3),
    "Adam/AdamW": lambda ps: torch.optim.AdamW(ps, lr=1e-3),
    "Lion": lambda ps: _lib("optimi").Lion(ps, lr=1e-3),
    "SGD": lambda ps: torch.optim.SGD(ps, lr=1e-3, momentum=0.9),
}
# more libraries writing a family already listed
ALSO = [("Lion", lambda ps: _lib("lion_pytorch").Lion(ps, lr=1e-4)),
        ("Schedule-free AdamW", lambda ps: _lib("pytorch_optimizer").ScheduleFreeAdamW(ps, lr=1e-3)),
        ("optimi AdamW", lambda ps: _lib("optimi").StableAdamW(ps, lr=1e-3)),
        ("CAME", lambda ps: _lib("came_pytorch").CAME(ps, lr=1e-4, betas=(0.9, 0.999, 0.9999), eps=(1e-30, 1e-16)))]
# families told apart by their group's hyper-parameters only: saved here without them
STRIP_GROUPS = {"SCORN/REMASTER"}
# families we recognise but cannot write here (Automagic needs optimum.quanto and the trainer's checkout)
NOT_WRITTEN = {"Automagic"} | {f"torchao AdamW ({k})" for k in ("8-bit", "4-bit", "fp8")}  # test_torchao.py


def test_every_family_has_a_writer():
    names = [f.name for f in specs.FAMILIES]
    assert len(names) == len(set(names)), "two registry entries share a name"
    assert set(names) == set(WRITERS) | NOT_WRITTEN


def _first_rms(entries: dict) -> float:
    """The first moment's RMS as the library's own tensors give it (bnb dequantizes its 8-bit codes; bnb 0.48+
    nests them in `__bnb_optimizer_quant_state__`, which its load_state_dict unpacks)."""
    entries = {**entries, **entries.get("__bnb_optimizer_quant_state__", {})}
    if "state1" in entries and entries["state1"].dtype == torch.uint8:
        F = _lib("bitsandbytes").functional
        m = F.dequantize_blockwise(entries["state1"], absmax=entries["absmax1"], code=entries["qmap1"],
                                   blocksize=256)
    else:
        m = next(entries[k] for k in specs.FIRST if k in entries)
    return m.double().pow(2).mean().sqrt().item()


@pytest.mark.parametrize("family,writer", [(f, WRITERS[f]) for f in sorted(WRITERS)] + ALSO,
                         ids=[*sorted(WRITERS), *(f"{f}-{i}" for i, (f, _) in enumerate(ALSO))])
def test_family_recognised_on_the_librarys_own_file(family, writer, tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.Linear(32, 8))
    opt = writer(list(model.parameters()))
    if hasattr(opt, "train"):  # schedule-free optimizers step only in train mode
        opt.train()
    for _ in range(3):
        model(torch.randn(4, 64)).square().mean().backward()
        opt.step()
        opt.zero_grad()
    sd = opt.state_dict()
    if family in STRIP_GROUPS:  # what is left when the hyper-parameters are lost (a bare state dict)
        sd["param_groups"] = [{"params": g["params"]} for g in sd["param_groups"]]
    path = tmp_path / "optimizer.pt"
    torch.save(sd, path)

    report = build_report(load_state(str(path)))
    assert report.family == family
    # the step as the library keeps it (per parameter, or in the group as `step` or schedulefree's `k`): 3 steps
    # were taken wherever it keeps one; with none, none is shown; Persona's restarts at each reset
    kept = any("step" in e for e in sd["state"].values()) or any(k in sd["param_groups"][0] for k in ("step", "k"))
    if not kept:
        assert report.steps == []
    elif family == "PersonaOptimizer":
        assert report.steps and max(report.steps) <= 3
    else:
        assert report.steps == [3]
    for row in report.params:
        entries = sd["state"][row.index]
        if not any(k in entries or k in entries.get("__bnb_optimizer_quant_state__", {}) for k in specs.FIRST):
            own = entries["exp_avg_sq"].double().pow(2).mean().sqrt().item()  # schedule-free: no first moment
            assert row.first_rms is None and math.isclose(row.second_rms, own, rel_tol=1e-5), (row.name, own)
            continue
        own = _first_rms(entries)
        assert math.isclose(row.first_rms, own, rel_tol=1e-5, abs_tol=1e-12), (row.name, row.first_rms, own)
