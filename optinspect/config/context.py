"""What every check sees: the options, the rule context (the table, the config, what the type resolves to), and
the helpers that turn a finding into a located diagnostic and a value into the TOML it was written as."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from optinspect.config.registry import RULES
from optinspect.diagnostics import Diagnostic, Severity, Span

OPT = ("optimizer",)


SECRET_KEY = re.compile(r"(?i)(api[_-]?key|token|secret|passw(or)?d|credential|auth)")


@dataclass
class Options:
    require_optimizer: bool = False
    ignore: frozenset[str] = frozenset()
    world_size: int | None = None
    trainer: bool = True  # also apply rules about the trainer around the optimizer
    trainer_profile: str | None = None  # "upstream" | "chroma"; None: inferred from the table where it can be
    versions: dict[str, str] | None = None  # library versions to judge by instead of what is installed here


@dataclass
class RuleContext:
    """What a rule sees: the table, the whole config, and what the table resolves to."""

    table: dict
    config: dict
    type_name: str
    schema: str | None
    options: Options
    _defaults: dict = field(default_factory=dict)
    trainer: str | None = None  # the trainer profile the table is judged by; None: it could be either

    def has(self, key: str) -> bool:
        return key in self.table

    def version(self, distribution: str) -> tuple[int, ...] | None:
        """The version of a library the trainer imports: as given in the options, else as installed here."""
        from optinspect.config import environment

        given = (self.options.versions or {}).get(distribution)
        return environment.parse(given) if given else environment.installed_version(distribution)

    def get(self, key: str, default: Any = None) -> Any:
        """The value the constructor will see: the table's, else the schema default."""
        if key in self.table:
            return self.table[key]
        return self._defaults.get(key, default)

    def num(self, key: str) -> float | None:
        v = self.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            return float(v)
        return None

    def top(self, key: str, default: Any = None) -> Any:
        return self.config.get(key, default)

    @property
    def trained_dtype(self) -> str | None:
        """dtype of the weights being trained: [adapter] dtype for LoRA, else [model] dtype."""
        for table in ("adapter", "model"):
            t = self.config.get(table)
            if isinstance(t, dict) and isinstance(t.get("dtype"), str):
                return t["dtype"].lower()
        return None


def diag(path: str, span: Span, code: str, message: str, hint: str = "",
          severity: Severity | None = None) -> Diagnostic:
    return Diagnostic(path, span.line, span.column, span.end_line, span.end_column,
                      severity or RULES[code].severity, code, message, hint)


# TOML's kinds of value, as Python holds them (bool before int: True is an int too)
_KINDS = ((bool, "boolean"), (int, "integer"), (float, "float"), (str, "string"), (list, "array"), (dict, "table"))


def toml_kind(v: Any) -> str:
    return next((name for t, name in _KINDS if isinstance(v, t)), "date/time" if v is not None else "nothing")


def key_name(path: tuple) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (("." if out else "") + str(p))
    return out


def show(key: tuple | str, value: Any) -> str:
    """Value as written in TOML, masked when the key looks like a secret."""
    name = key if isinstance(key, str) else ".".join(str(k) for k in key if isinstance(k, str))
    if SECRET_KEY.search(name):
        return "'***'"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return str(value)
