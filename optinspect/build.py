"""[optimizer] table -> validated -> optimizer instance: the only bridge from config/ to optimizers/."""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import Any

from optinspect.config import catalog, schemas
from optinspect.config.validate import Options, validate_table
from optinspect.diagnostics import Diagnostic, Severity

TORCH_CLASSES = {"adamw": ("torch.optim", "AdamW"), "sgd": ("torch.optim", "SGD")}


class InvalidConfig(ValueError):
    """The table would not build: carries every error diagnostic."""

    def __init__(self, diagnostics: list[Diagnostic]):
        self.diagnostics = diagnostics
        lines = [f"{d.path}:{d.line}:{d.column}: {d.code} {d.message}" + (f" (hint: {d.hint})" if d.hint else "")
                 for d in diagnostics]
        super().__init__("invalid [optimizer] table:\n  " + "\n  ".join(lines))


class NotBundled(LookupError):
    """A valid type that optinspect does not ship an implementation of."""


def resolve_class(type_name: str) -> type:
    res = catalog.resolve_type(type_name)
    key = (res.schema or "").lower()
    if res.source != "unknown":
        from optinspect import optimizers

        if key in optimizers.CLASSES:
            return optimizers.load_class(key)
        if key in TORCH_CLASSES:
            module, cls = TORCH_CLASSES[key]
            return getattr(importlib.import_module(module), cls)
    bundled = ", ".join(schemas.meta(n).get("type", n) for n in schemas.available() if schemas.meta(n).get("bundled"))
    raise NotBundled(f"optimizer type {type_name!r} is not bundled with optinspect (bundled: {bundled}; "
                     "torch: adamw, sgd)")


def constructor_kwargs(table: dict) -> dict[str, Any]:
    """What the trainer passes: every key but the trainer's own; arrays become tuples."""
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in table.items() if k not in catalog.TRAINER_KEYS}


def build_optimizer(params: Iterable, table: dict, config: dict | None = None, *,
                    strict: bool = False) -> Any:
    """Validate `table` with the schemas and rules, then construct the optimizer as the trainer would.

    Raises InvalidConfig listing every error (and every warning with strict=True), NotBundled for valid
    types without an implementation here.
    """
    if not isinstance(table, dict):
        raise TypeError(f"table must be a dict (the [optimizer] table), got {type(table).__name__}")
    diags = validate_table(dict(table), config, Options(trainer=False))
    failing = {Severity.ERROR, Severity.WARNING} if strict else {Severity.ERROR}
    bad = [d for d in diags if d.severity in failing]
    if bad:
        raise InvalidConfig(bad)
    klass = resolve_class(table["type"])
    return klass(list(params), **constructor_kwargs(table))
