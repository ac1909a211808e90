"""OPT114 (an integer where a boolean is meant) against the optimizers running: for every boolean key of every type
we can build (the trainer's optimizers as bundled, torch's AdamW and SGD), `0`/`1` must train exactly like
`false`/`true`, and validate must say so with a warning, not the error a type mismatch would be; where the integer
fails (torch hands `differentiable` to set_grad_enabled, which takes only a bool) it stays an error."""

import warnings

import pytest
import torch

from optinspect.build import constructor_kwargs, resolve_class
from optinspect.config import schemas
from optinspect.config.validate import validate_table

BASE = {"adafactor": {"lr": 1e-4, "relative_step": False, "scale_parameter": False}, "scorn": {"lr": 1e-4},
        "remaster": {"lr": 1e-4}, "persona": {"lr": 1e-4}, "AdamW8bitKahan": {"lr": 1e-4}, "Prodigy": {"lr": 1.0},
        "adamw": {"lr": 1e-4}, "sgd": {"lr": 1e-3, "momentum": 0.9}}


def _cases():
    for type_name in BASE:
        props = schemas.load(type_name.lower())["properties"]
        for key, prop in props.items():
            if prop.get("type") == "boolean" and key not in ("gradient_release",):
                for as_int, as_bool in ((0, False), (1, True)):
                    yield pytest.param(type_name, key, as_int, as_bool, id=f"{type_name}-{key}={as_int}")


def _train(type_name: str, table: dict):
    klass = resolve_class(type_name)
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(16, 8)), torch.nn.Parameter(torch.randn(8))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt = klass(params, **constructor_kwargs(table))
        for _ in range(3):
            for p in params:
                p.grad = torch.randn_like(p)
            opt.step()
    return [p.detach().clone() for p in params]


@pytest.mark.parametrize("type_name,key,as_int,as_bool", list(_cases()))
def test_integer_flags_train_like_booleans_and_are_a_warning(type_name, key, as_int, as_bool):
    base = BASE[type_name]
    try:
        want = _train(type_name, {**base, key: as_bool})
    except (ValueError, TypeError, RuntimeError, AssertionError):
        pytest.skip(f"{key} = {as_bool} does not train here either (e.g. capturable on CPU)")
    found = validate_table({"type": type_name, **base, key: as_int})
    try:
        got = _train(type_name, {**base, key: as_int})
    except (ValueError, TypeError, RuntimeError, AssertionError):
        assert [d.code for d in found if d.code in ("OPT107", "OPT114")] == ["OPT107"]
        return
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
    assert [d.code for d in found if d.code == "OPT114"] == ["OPT114"]
    errors = {d.code for d in found if d.severity.value == "error"}
    assert errors == {d.code for d in validate_table({"type": type_name, **base, key: as_bool})
                      if d.severity.value == "error"}
