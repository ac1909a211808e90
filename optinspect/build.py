"""[optimizer] table -> validated -> optimizer instance: the only bridge from config/ to optimizers/."""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from typing import Any

from optinspect import specs
from optinspect.config import catalog
from optinspect.config.validate import Options, validate_table
from optinspect.diagnostics import Diagnostic, Severity


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
    """The class optinspect builds for a `type` as written in a config: our implementation, or torch's own."""
    res = catalog.resolve_type(type_name)
    return class_for(res.schema if res.source != "unknown" and res.schema else "", type_name)


def class_for(type_key: str, written: str | None = None) -> type:
    """The class optinspect builds for a registry entry (`specs.TYPES` key)."""
    spec = specs.TYPES.get(type_key)
    if spec and spec.ours:
        from optinspect import optimizers

        return getattr(optimizers, spec.ours)
    if spec and spec.torch_class:
        module, cls = spec.torch_class.split(":")
        return getattr(importlib.import_module(module), cls)
    type_name = written or type_key
    bundled = ", ".join(t.written for t in specs.TYPES.values() if t.bundled)
    torch_built = ", ".join(t.written for t in specs.TYPES.values() if t.torch_class)
    raise NotBundled(f"optimizer type {type_name!r} is not bundled with optinspect (bundled: {bundled}; "
                     f"torch: {torch_built})")


def constructor_kwargs(table: dict) -> dict[str, Any]:
    """What the trainer passes: every key but the trainer's own; arrays become tuples."""
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in table.items() if k not in specs.TRAINER_KEYS}


def build_optimizer(params: Iterable, table: dict, config: dict | None = None, *,
                    strict: bool = False, options: Mapping[str, Any] | None = None) -> Any:
    """Validate `table` with the schemas and rules, then construct the optimizer as the trainer would.
    `options`: options of our implementation alone (the registry's `our_options`, such as Prodigy's `upcast`),
    given here rather than in the table, which stays what the trainer reads.

    Raises InvalidConfig listing every error (and every warning with strict=True), NotBundled for valid
    types without an implementation here, ValueError for an option the type does not have.
    """
    if not isinstance(table, dict):
        raise TypeError(f"table must be a dict (the [optimizer] table), got {type(table).__name__}")
    diags = validate_table(dict(table), config, Options(trainer=False))
    failing = {Severity.ERROR, Severity.WARNING} if strict else {Severity.ERROR}
    bad = [d for d in diags if d.severity in failing]
    if bad:
        raise InvalidConfig(bad)
    klass = resolve_class(table["type"])
    kwargs = constructor_kwargs(table)
    if options:
        spec = specs.TYPES.get(catalog.resolve_type(table["type"]).schema or "")
        unknown = [k for k in options if not spec or k not in spec.our_options]
        if unknown:
            having = [f"{t.written} ({', '.join(t.our_options)})" for t in specs.TYPES.values() if t.our_options]
            raise ValueError(f"{', '.join(unknown)}: not an option of optinspect's {table['type']} (options of ours: "
                             f"{'; '.join(having)})")
        kwargs.update(options)
    return klass(list(params), **kwargs)
