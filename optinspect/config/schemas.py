"""Find and load the JSON Schemas shipped in `optinspect/_schemas/` (the repository's `schemas/` links there)."""

from __future__ import annotations

import json
from functools import cache, lru_cache
from pathlib import Path

_HERE = Path(__file__).resolve().parent.parent  # optinspect/
DRAFT4 = "http://json-schema.org/draft-04/schema#"
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
    """The dispatching schema for a whole trainer config, self-contained for editors (taplo, VS Code)."""
    defs: dict[str, dict] = {}
    for name in available():
        s = load(name)
        defs[name] = {k: v for k, v in s.items() if k not in ("$schema", "id")}
    return {
        "$schema": DRAFT4,
        "id": "https://optinspect.dev/schemas/config.schema.json",
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
                "anyOf": [{"$ref": f"#/definitions/{k}"} for k in defs],
            },
            **defs,
        },
    }


def defaults(name: str) -> dict:
    """Schema defaults per key (the constructor's defaults); 'inf' strings become float inf."""
    out = {}
    for key, prop in load(name)["properties"].items():
        if "default" in prop:
            v = prop["default"]
            out[key] = float(v) if v in ("inf", "-inf") else v
    return out


def meta(name: str) -> dict:
    return load(name).get("x-optinspect", {})
