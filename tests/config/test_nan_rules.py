"""OPT408 (zero epsilon) against the optimizers running: on a LoRA pair whose A gradient is exactly zero on the
first step (B starts at zero), the weights turn NaN exactly for the tables the rule flags. The optimizers are the
real ones: torch's AdamW, bitsandbytes' AdamW8bit, and our faithful re-implementations of the trainer's."""

import warnings

import pytest
import torch

import optinspect
from optinspect.config.validate import validate_table

TABLES = [
    {"type": "adamw", "lr": 1e-4, "eps": 0.0}, {"type": "adamw", "lr": 1e-4, "eps": 1e-8},
    {"type": "adamw", "lr": 1e-4, "eps": 0},
    {"type": "adamw8bit", "lr": 1e-4, "eps": 0.0}, {"type": "adamw8bit", "lr": 1e-4},
    {"type": "AdamW8bitKahan", "lr": 1e-4, "eps": 0.0}, {"type": "AdamW8bitKahan", "lr": 1e-4, "eps": 1e-10},
    {"type": "Prodigy", "lr": 1.0, "eps": 0.0}, {"type": "Prodigy", "lr": 1.0},
    {"type": "adafactor", "lr": 1e-4, "relative_step": False, "scale_parameter": False, "eps": [0.0, 1e-3]},
    {"type": "adafactor", "lr": 1e-4, "relative_step": False, "scale_parameter": False, "eps": [1e-30, 0.0]},
    {"type": "adafactor", "lr": 1e-4, "relative_step": False, "scale_parameter": False},
    {"type": "persona", "lr": 1e-4, "focus_eps": 0.0, "focus_boost": 0.05},
    {"type": "persona", "lr": 1e-4, "focus_eps": 0.0},
    {"type": "persona", "lr": 1e-4, "focus_boost": 0.05},
    {"type": "scorn", "lr": 1e-4}, {"type": "sgd", "lr": 1e-4},
]


def _build(table, params):
    if table["type"] == "adamw8bit":
        bnb = pytest.importorskip("bitsandbytes")
        kwargs = {k: v for k, v in table.items() if k != "type"}
        return bnb.optim.AdamW8bit(params, min_8bit_size=0, **kwargs)
    return optinspect.build_optimizer(params, table)


def _goes_nan(table) -> bool:
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(64, 128) * 0.01)  # LoRA A (down)
    b = torch.nn.Parameter(torch.zeros(128, 64))  # LoRA B (up), zero at the start: A's first gradient is 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt = _build(table, [a, b])
        for step in range(3):
            a.grad = torch.zeros_like(a) if step == 0 else torch.randn_like(a) * 1e-3
            b.grad = torch.randn_like(b) * 1e-3
            opt.step()
    return not (torch.isfinite(a).all() and torch.isfinite(b).all())


@pytest.mark.parametrize("table", TABLES, ids=lambda t: ",".join(f"{k}={v}" for k, v in t.items()))
def test_opt408_fires_exactly_when_lora_step_one_goes_nan(table):
    fired = any(d.code == "OPT408" for d in validate_table(dict(table)))
    assert fired == _goes_nan(table)


@pytest.mark.parametrize("clip", [0.0, 0, 1.0, 0.5])
def test_opt210_is_an_error_exactly_when_adafactor_stops_or_goes_nan(clip):
    """clip_threshold = 0: every update is divided by infinity (nothing trains) and a zero gradient gives 0/0."""
    table = {"type": "adafactor", "lr": 1e-3, "relative_step": False, "scale_parameter": False,
             "clip_threshold": clip}
    errors = {d.code for d in validate_table(dict(table)) if d.severity.value == "error"}
    from optinspect.build import class_for

    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(64, 128) * 0.01)
    b = torch.nn.Parameter(torch.zeros(128, 64))
    b0 = b.detach().clone()
    opt = class_for("adafactor")([a, b], **{k: v for k, v in table.items() if k != "type"})
    for step in range(3):
        a.grad = torch.zeros_like(a) if step == 0 else torch.randn_like(a) * 1e-3
        b.grad = torch.randn_like(b) * 1e-3
        opt.step()
    broken = not torch.isfinite(a).all() or torch.equal(b.detach(), b0)
    assert ("OPT210" in errors) == bool(broken)
