"""Find and load the JSON Schemas shipped in `optinspect/_schemas/` (the repository's `schemas/` links there)."""

from __future__ import annotations

import json
from functools import cache, lru_cache
from pathlib import Path

_HERE = Path(__file__).resolve().parent.parent  # optinspect/
DRAFT4 = "http://json-schema.org/draft-04/schema#"
DRAFT7 = "http://json-schema.org/draft-07/schema#"
BUNDLE = "config"


class SchemaNotFound(LookupError):
    pass


@lru_cache(maxsize=1)
def schema_dir() -> Path:
    """The one place schemas live, in a checkout, an editable install and a wheel alike."""
    cand = _HERE / "_schemas"
    if (cand / f"{BUNDLE}.schema.json").is_file():
        return cand
    raise SchemaNotFound(f"no schemas found in {cand}: the installation is incomplete")


def schema_path(name: str) -> Path:
    return schema_dir() / f"{name.lower()}.schema.json"


def available() -> list[str]:
    return sorted(p.name[: -len(".schema.json")] for p in schema_dir().glob("*.schema.json")
                  if p.name != f"{BUNDLE}.schema.json")


@cache
def load(name: str) -> dict:
    path = schema_path(name)
    if not path.is_file():
        raise SchemaNotFound(f"no schema named {name!r}; available: {', '.join(available())}")
    with path.open(encoding="utf-8") as fh:
        return json.load(fh)


def bundle() -> dict:
    """The whole-config schema for editors (taplo / Even Better TOML, VS Code), self-contained.

    Draft-07, unlike the per-type schemas (Draft 4, what the validator runs): each type's branch is an `if` on the
    `type` key with its schema as `then`, so an editor reports a mistake at its own key ("None" is not a number
    at `beta1`) instead of one "not valid under any of the schemas in anyOf" over the whole table."""
    defs = {name: _draft7({k: v for k, v in load(name).items() if k not in ("$schema", "id")}) for name in available()}
    types = ", ".join(meta(name).get("type", name) for name in defs)
    return {
        "$schema": DRAFT7,
        "$id": "https://optinspect.dev/schemas/config.schema.json",
        "title": "diffusion-pipe trainer config ([optimizer] table checked)",
        "description": "Checks the [optimizer] table of a diffusion-pipe family config; other tables are "
        "accepted as they are. Generated from the per-type schemas beside it (tests keep it in sync).",
        "type": "object",
        "properties": {"optimizer": {"$ref": "#/definitions/optimizer"}},
        "definitions": {
            "optimizer": {
                "type": "object",
                "description": "The [optimizer] table, passed to the optimizer constructor.",
                "required": ["type"],
                "properties": {"type": {"type": "string", "description": f"Optimizer type: {types}, or any "
                                        "pytorch_optimizer class name (the trainer's fallback)."}},
                "allOf": [{"if": {"properties": {"type": _selector(d["properties"]["type"])}, "required": ["type"]},
                           "then": {"$ref": f"#/definitions/{name}"}} for name, d in defs.items()],
            },
            **defs,
        },
    }


def _selector(type_schema: dict) -> dict:
    """The part of a type's `type` property that decides whether a table is of that type."""
    return {k: v for k, v in type_schema.items() if k in ("enum", "pattern")}


def _draft7(node):
    """A Draft 4 schema rewritten as Draft-07: boolean exclusive bounds become the numbers they qualify."""
    if isinstance(node, list):
        return [_draft7(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _draft7(v) for k, v in node.items()}
    for bound, flag in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
        if isinstance(out.get(flag), bool):
            if out.pop(flag) and bound in out:
                out[flag] = out.pop(bound)
    return out


def defaults(name: str) -> dict:
    """Schema defaults per key (the constructor's defaults); 'inf' strings become float inf."""
    out = {}
    for key, prop in load(name)["properties"].items():
        if "default" in prop:
            v = prop["default"]
            out[key] = float(v) if v in ("inf", "-inf") else v
    return out


def meta(name: str) -> dict:
    """A type's `x-optinspect` facts, from the registry (its schema file carries a copy for editors and tools;
    a test keeps the two equal)."""
    from optinspect import specs

    spec = specs.TYPES.get(name)
    return spec.schema_meta() if spec else load(name).get("x-optinspect", {})
