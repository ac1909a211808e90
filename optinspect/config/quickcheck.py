"""A yes/no check of a table against our schemas, without importing jsonschema (~50 ms at start-up).

Covers exactly the Draft 4 keywords our schemas use. It only answers "valid?": when it says no, or meets
a keyword it does not know, validate.py asks jsonschema, which stays the authority for every diagnostic.
Tests compare the two on random tables.
"""

from __future__ import annotations

import re
from typing import Any

KNOWN = frozenset({"type", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "enum", "items",
                   "minItems", "maxItems", "pattern", "properties", "required", "additionalProperties",
                   "description", "default", "title", "$schema", "id", "x-optinspect", "x-optinspect-only"})


class Unsupported(Exception):
    pass


def _type_ok(value: Any, t: str) -> bool:
    if t == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if t == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if t == "boolean":
        return isinstance(value, bool)
    if t == "string":
        return isinstance(value, str)
    if t == "array":
        return isinstance(value, list)
    if t == "object":
        return isinstance(value, dict)
    if t == "null":
        return value is None
    raise Unsupported(t)


def valid(value: Any, schema: dict) -> bool:
    """True when `value` satisfies `schema`; raises Unsupported for keywords outside the subset."""
    unknown = set(schema) - KNOWN
    if unknown:
        raise Unsupported(", ".join(sorted(unknown)))
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_type_ok(value, t) for t in types):
            return False
    if "enum" in schema and not any(value == e and type(value) is type(e) for e in schema["enum"]):
        return False
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema:
            lo = schema["minimum"]
            if value < lo or (schema.get("exclusiveMinimum") and value == lo):
                return False
        if "maximum" in schema:
            hi = schema["maximum"]
            if value > hi or (schema.get("exclusiveMaximum") and value == hi):
                return False
    if isinstance(value, str) and "pattern" in schema and not re.search(schema["pattern"], value):
        return False
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0) or len(value) > schema.get("maxItems", len(value)):
            return False
        items = schema.get("items")
        if isinstance(items, list):
            raise Unsupported("tuple items")
        if isinstance(items, dict) and not all(valid(v, items) for v in value):
            return False
    if isinstance(value, dict):
        props = schema.get("properties", {})
        if any(k not in value for k in schema.get("required", ())):
            return False
        extra = schema.get("additionalProperties", True)
        for k, v in value.items():
            if k in props:
                if not valid(v, props[k]):
                    return False
            elif extra is False:
                return False
            elif isinstance(extra, dict) and not valid(v, extra):
                return False
    return True
