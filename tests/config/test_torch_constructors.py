"""Rules about torch's own constructors, against those constructors: the rule is an error exactly when building
the optimizer from the table as the trainer does (keys as keyword arguments, arrays as tuples) raises."""

import itertools

import pytest
import torch

from optinspect.build import constructor_kwargs
from optinspect.config.validate import validate_table

SGD = [{"type": "sgd", "lr": 1e-3, **dict(kw)} for kw in itertools.product(
    [("nesterov", True), ("nesterov", False)], [("momentum", 0.0), ("momentum", 0.9), ("momentum", 0)],
    [("dampening", 0.0), ("dampening", 0.1)])] + [{"type": "sgd", "lr": 1e-3, "nesterov": True}]
ADAMW = [{"type": "adamw", "lr": 1e-4, "betas": list(b)} for b in
         [(0, 0), (0.0, 0.0), (1, 0.999), (0.9, 0.999), (0, 0.999), (0.9, 1), (1.0, 0.5)]]


def _raises(table) -> bool:
    klass = {"sgd": torch.optim.SGD, "adamw": torch.optim.AdamW}[table["type"]]
    try:
        klass([torch.nn.Parameter(torch.ones(2))], **constructor_kwargs({k: v for k, v in table.items()
                                                                          if k != "type"}))
    except ValueError:
        return True
    return False


@pytest.mark.parametrize("table", SGD + ADAMW, ids=lambda t: ",".join(f"{k}={v}" for k, v in t.items()))
def test_an_error_exactly_when_torch_refuses_the_arguments(table):
    errors = [d for d in validate_table(dict(table)) if d.severity.value == "error"]
    assert bool(errors) == _raises(table), [d.code for d in errors]


def test_opt115_defaults_are_the_constructors_own():
    """OPT115 reports the lr a table without `lr` gets: the schema default it quotes must be the constructor's."""
    import inspect

    from optinspect.build import class_for
    from optinspect.config import rules, schemas

    bnb = pytest.importorskip("bitsandbytes")
    classes = {"adamw": torch.optim.AdamW, "sgd": torch.optim.SGD, "adamw8bit": bnb.optim.AdamW8bit,
               "adamw8bitkahan": class_for("adamw8bitkahan")}
    assert set(classes) == set(rules.LIBRARY_LR_TYPES)
    for name, klass in classes.items():
        assert schemas.defaults(name)["lr"] == inspect.signature(klass).parameters["lr"].default, name


@pytest.mark.parametrize("eps", [1e-8, 8.0, 15.9, 16.0, 100.0])
@pytest.mark.parametrize("stabilize", [True, False])
def test_opt411_fires_exactly_when_the_8bit_state_overflows(eps, stabilize):
    from optinspect.build import class_for

    table = {"type": "AdamW8bitKahan", "lr": 1e-4, "eps": eps, "stabilize": stabilize}
    fired = any(d.code == "OPT411" for d in validate_table(dict(table)))
    params = [torch.nn.Parameter(torch.randn(64, 64) * 0.1)]
    opt = class_for("adamw8bitkahan")(params, **constructor_kwargs({k: v for k, v in table.items() if k != "type"}))
    try:
        for _ in range(2):
            params[0].grad = torch.randn(64, 64)
            opt.step()
        overflowed = False
    except RuntimeError as e:
        overflowed = "overflow" in str(e)
    assert fired == overflowed
