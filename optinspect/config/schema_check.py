"""The JSON Schema of the table's type, judged as the trainer's constructor would: quoted values, "None" and
non-finite numbers (OPT104, OPT105, OPT109), keys the constructor does not take (OPT102, OPT103, OPT111), what
jsonschema finds (OPT106, OPT107, OPT108, OPT110, OPT114), and keys only our optimizers accept (OPT113)."""

from __future__ import annotations

import difflib
import math
import re
from typing import Any

from optinspect import specs
from optinspect.config import catalog, schemas, source
from optinspect.config.context import OPT, RuleContext, diag, key_name, show, toml_kind
from optinspect.diagnostics import Diagnostic, Severity

_NUMBER_STR = re.compile(r"^\s*[+-]?(\d[\d_]*(\.\d*)?([eE][+-]?\d+)?|\.\d+([eE][+-]?\d+)?|inf|nan)\s*$")


_BOOL_STR = re.compile(r"^\s*(true|false|yes|no|on|off)\s*$", re.I)


_NONE_STR = re.compile(r"^\s*(none|null|nil|~)\s*$", re.I)

# keys that belong at the top level of a diffusion-pipe config (trainer settings)
TOP_LEVEL_KEYS = frozenset("""
output_dir dataset eval_datasets epochs micro_batch_size_per_gpu pipeline_stages gradient_accumulation_steps
gradient_clipping warmup_steps blocks_to_swap eval_every_n_epochs eval_before_first_step
eval_micro_batch_size_per_gpu eval_gradient_accumulation_steps save_every_n_epochs checkpoint_every_n_epochs
checkpoint_every_n_minutes activation_checkpointing partition_method save_dtype caching_batch_size
steps_per_print video_clip_mode force_constant_lr lr_scheduler max_steps compile reentrant_activation_checkpointing
map_num_proc x_axis_examples disable_block_swap_for_eval eval_every_n_steps save_every_n_steps
checkpoint_every_n_steps wandb_api_key wandb_tracker_name wandb_run_name enable_wandb logging_steps
""".split())
# -- schema ------------------------------------------------------------------------------------------
_TOML_TYPE = {"number": "a number", "integer": "an integer", "boolean": "a boolean (true or false)",
              "array": "an array", "object": "a table", "string": "a string", "null": "absent"}


def _range_text(s: dict) -> str:
    lo, hi = s.get("minimum"), s.get("maximum")
    lo_x, hi_x = s.get("exclusiveMinimum", False), s.get("exclusiveMaximum", False)
    if lo is not None and hi is not None:
        return f"in {'(' if lo_x else '['}{lo:g}, {hi:g}{')' if hi_x else ']'}"
    if lo is not None:
        return f"{'>' if lo_x else '>='} {lo:g}"
    return f"{'<' if hi_x else '<='} {hi:g}"


def _other_types_with(key: str, own: str) -> list[str]:
    out = []
    for name in schemas.available():
        if name != own and key in schemas.load(name)["properties"]:
            out.append(schemas.meta(name).get("type", name))
    return out


def _schema_errors(schema: dict, table: dict) -> list:
    """jsonschema's errors; skipped (and jsonschema not even imported) when the quick check passes."""
    from optinspect.config import quickcheck

    try:
        if quickcheck.valid(table, schema):
            return []
    except quickcheck.Unsupported:
        pass
    from jsonschema import Draft4Validator

    return list(Draft4Validator(schema).iter_errors(table))


class _Out:
    """Diagnostics of one table, and the keys already explained (a later, more generic finding skips them)."""

    def __init__(self, path: str, smap: source.SourceMap):
        self.path, self.smap = path, smap
        self.items: list[Diagnostic] = []
        self.explained: set[tuple] = set()

    def emit(self, code: str, key: tuple, message: str, hint: str = "", on_value: bool = True,
             severity: Severity | None = None) -> None:
        self.explained.add(key)
        self.items.append(diag(self.path, self.smap.locate(OPT + key, prefer_value=on_value), code, message, hint,
                               severity))

    def covers(self, key: tuple) -> bool:
        return any(key[:n] in self.explained for n in range(1, len(key) + 1))


def schema_diagnostics(path: str, ctx: RuleContext, smap: source.SourceMap) -> list[Diagnostic]:
    """Value-level findings first (they explain the type errors that would follow), then unknown keys, then what
    jsonschema finds on what is left, then keys only optinspect's optimizers accept."""
    out = _Out(path, smap)
    props = schemas.load(ctx.schema)["properties"]
    for k, v in ctx.table.items():
        _values(out, ctx, (k,), v, props.get(k))
    for k in ctx.table:
        if k not in props:
            _unknown_key(out, ctx, k, props)
    # upstream overwrites betas[1] from beta2_half_life: what is written there is never used
    rewritten = {("betas", 1)} if "beta2_half_life" in ctx.table and ctx.trainer != specs.CHROMA else set()
    for err in _schema_errors(schemas.load(ctx.schema), ctx.table):
        key = tuple(err.absolute_path)
        if err.validator != "additionalProperties" and not out.covers(key) and key not in rewritten:
            _schema_error(out, ctx, key, err, props)
    for k in ctx.table:  # (build_optimizer builds optinspect's own classes: there these keys are fine)
        if k in props and props[k].get("x-optinspect-only") and ctx.options.trainer:
            _optinspect_only(out, ctx, k)
    return out.items


def _values(out: _Out, ctx: RuleContext, key: tuple, value: Any, prop: dict | None) -> None:
    """OPT105 ("None" as a string), OPT104 (a quoted number or boolean), OPT109 (nan/inf), element by element."""
    if isinstance(value, list):
        item = (prop or {}).get("items") if isinstance((prop or {}).get("items"), dict) else None
        for i, v in enumerate(value):
            _values(out, ctx, key + (i,), v, item)
        return
    if isinstance(value, str) and prop and prop.get("type") != "string":
        if _NONE_STR.match(value):
            _none_string(out, key, value, prop)
        elif _NUMBER_STR.match(value) or _BOOL_STR.match(value):
            _quoted_value(out, key, value)
    if isinstance(value, float) and not math.isfinite(value):
        allow_inf = prop is not None and prop.get("default") == "inf" and math.isinf(value) and value > 0
        if not allow_inf and not (prop and prop.get("type") == "boolean"):  # a flag: the type check says it
            out.emit("OPT109", key, f"`{key_name(key)} = {show(key, value)}` is not a finite number",
                     "write a finite value")


def _none_string(out: _Out, key: tuple, value: str, prop: dict) -> None:
    out.emit("OPT105", key, f"`{key_name(key)} = {show(key, value)}` is a string, not None (TOML has no null)",
             f"omit `{key_name(key[:1])}` to get the default ({show(key, prop.get('default'))})"
             if "default" in prop else "omit the key")


def _quoted_value(out: _Out, key: tuple, value: str) -> None:
    plain = value.strip().lower()
    if _BOOL_STR.match(value):  # yes/on/no/off are not TOML: the boolean they mean is
        plain = "true" if plain in ("true", "yes", "on", "1") else "false"
    if key[0] in catalog.TRAINER_KEYS:  # the trainer reads it itself, testing it for truth
        said = ("the trainer tests it for truth, so any non-empty string turns it on"
                + (f" ({show(key, value)} included)" if plain == "false" else ""))
    else:
        said = "the trainer passes it to the constructor as text"
    out.emit("OPT104", key, f"`{key_name(key)}` is written as a string ({show(key, value)}); {said}",
             f"remove the quotes: `{key_name(key)} = {plain}`")


def _unknown_key(out: _Out, ctx: RuleContext, k: str, props: dict) -> None:
    """OPT111 (a top-level setting that TOML put into the table), else OPT102 (the constructor raises) or OPT103
    (a **kwargs constructor drops it silently)."""
    kp = (k,)
    if k in TOP_LEVEL_KEYS:
        out.emit("OPT111", kp, f"`{k}` is a top-level trainer setting, but it is written below [optimizer], so "
                 "TOML puts it into the optimizer table", "move it above the first [table] header of the file",
                 on_value=False)
        return
    close = difflib.get_close_matches(k, list(props), n=1, cutoff=0.7)
    others = _other_types_with(k, ctx.schema)
    meta = schemas.meta(ctx.schema)
    label = meta.get("type", ctx.schema)
    hint = f"did you mean `{close[0]}`?" if close else ""
    spec = specs.TYPES.get(ctx.schema)
    if spec and k in spec.misspellings:
        hint = f"{spec.source if spec.source != 'builtin' else label} spells it `{spec.misspellings[k]}`"
    if others and not close:
        hint = f"`{k}` is a key of {', '.join(others[:3])}, not of {label}; remove it"
    if spec and k in spec.our_options:
        where = f"{spec.source}'s {label}" if spec.source != "builtin" else f"the trainer's {label}"
        swallow = meta.get("kwargs") == "swallow"
        out.emit("OPT103" if swallow else "OPT102", kp,
                 f"`{k}` is an option of optinspect's own {label} only ({spec.our_options[k]}); {where}, which the "
                 f"trainer builds, {'silently ignores it' if swallow else 'raises TypeError'}",
                 f"remove it; `optinspect dry-run --{k}` runs ours with it", on_value=False)
    elif meta.get("kwargs") == "swallow":
        out.emit("OPT103", kp, f"`{k}` is not a parameter of {label}: its constructor takes **kwargs and silently "
                 "ignores it", hint or "remove it", on_value=False)
    else:
        out.emit("OPT102", kp, f"unknown key `{k}` for {label}: the constructor raises TypeError",
                 hint or f"known keys: {', '.join(sorted(props))}", on_value=False)


def _schema_error(out: _Out, ctx: RuleContext, key: tuple, err: Any, props: dict) -> None:
    """One jsonschema error as the finding it means: OPT107/OPT114 (type), OPT106 (range, enum), OPT108 (length),
    OPT110 (required)."""
    name = key_name(key)
    s = err.schema if isinstance(err.schema, dict) else {}
    if err.validator == "type":
        _wrong_type(out, ctx, key, err, props)
    elif err.validator in ("minimum", "maximum"):
        spec = specs.TYPES.get(ctx.schema)
        if spec and spec.hard_ranges is not None and key[0] not in spec.hard_ranges:
            out.emit("OPT106", key, f"`{name} = {show(key, err.instance)}` is outside the sensible range "
                     f"({_range_text(s)}); the optimizer does not check it and runs with it", _range_hint(key, s),
                     severity=Severity.WARNING)
        else:
            out.emit("OPT106", key, f"`{name} = {show(key, err.instance)}` is out of range: must be {_range_text(s)}",
                     _range_hint(key, s))
    elif err.validator in ("minItems", "maxItems"):
        n = s.get("minItems")
        example = f"write e.g. `{name} = {show(key, s.get('default'))}`" if "default" in s else ""
        spec = specs.TYPES.get(ctx.schema)
        needed_with = spec.items_needed_with.get(key[0]) if spec else None
        if err.validator == "minItems" and needed_with and not ctx.get(needed_with):
            out.emit("OPT108", key, f"`{name}` has {len(err.instance)} of {n} numbers: it runs while `{needed_with}` "
                     "is off (the missing ones are read only with it), and fails as soon as it is on", example,
                     severity=Severity.WARNING)
        elif err.validator == "maxItems" and spec and spec.extra_items_ignored:
            out.emit("OPT108", key, f"`{name}` has {len(err.instance)} numbers; the optimizer reads the first {n} and "
                     "never the rest", example, severity=Severity.WARNING)
        else:
            out.emit("OPT108", key, f"`{name}` must be an array of {n} numbers, but it has {len(err.instance)}",
                     example)
    elif err.validator == "enum":
        allowed = " or ".join(show(key, v) for v in err.validator_value)
        out.emit("OPT106", key, f"`{name} = {show(key, err.instance)}` is not supported: must be {allowed}",
                 s.get("description", ""))
    elif err.validator == "required":
        missing = err.message.split("'")[1] if "'" in err.message else "?"
        out.emit("OPT110", (), f"[optimizer] of type {ctx.type_name} requires `{missing}`", f"add `{missing} = ...`",
                 on_value=False)
    else:
        out.emit("OPT107", key, f"`{name}`: {err.message}")


def _wrong_type(out: _Out, ctx: RuleContext, key: tuple, err: Any, props: dict) -> None:
    """OPT107, or OPT114 where a number stands for a flag or a flag for a number, or a float for a whole number, on
    an optimizer that uses them as Python does (it runs as meant, or as the number says)."""
    name = key_name(key)
    want = err.validator_value
    wants = want if isinstance(want, list) else [want]
    want = " or ".join(_TOML_TYPE.get(w, w) for w in wants)
    meta = schemas.meta(ctx.schema)
    value = err.instance
    duck = meta.get("truthy_flags") and key[0] not in meta.get("strict_flags", ())
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    prop = props.get(key[0], {}) if len(key) == 1 else {}
    if duck and "boolean" in wants and number:
        word = "true" if value else "false"
        if "enum" in prop and bool(value) not in prop["enum"]:
            out.emit("OPT106", key, f"`{name} = {show(key, value)}` behaves as `{word}`, which is not supported: "
                     f"must be {' or '.join(show(key, v) for v in prop['enum'])}", prop.get("description", ""))
            return
        out.emit("OPT114", key, f"`{name} = {show(key, value)}` is a number where a boolean is meant: the optimizer "
                 f"tests it for truth, so it behaves as `{word}`", f"write `{name} = {word}`")
        return
    spec = specs.TYPES.get(ctx.schema)
    refused = spec.no_boolean.get(key[0]) if spec else None
    as_number = int(value) if isinstance(value, bool) else None
    if as_number is not None and not _fits(as_number, prop) and (spec is None or spec.hard_ranges is None
                                                                  or key[0] in spec.hard_ranges):
        out.emit("OPT106", key, f"`{name} = {show(key, value)}` is {as_number} to the optimizer, out of range: "
                 f"must be {_range_text(prop) if ('minimum' in prop or 'maximum' in prop) else 'another value'}",
                 f"write a number in range, e.g. `{name} = {show(key, prop.get('default'))}`" if "default" in prop
                 else "")
        return
    if duck and isinstance(value, bool) and set(wants) & {"number", "integer"} and not (
            refused == "any" or (refused == "true" and value)) and int(value) in prop.get("enum", [int(value)]):
        out.emit("OPT114", key, f"`{name} = {show(key, value)}` is a boolean where a number is meant: the optimizer "
                 f"computes with it as {int(value)}", f"write the number: `{name} = {int(value)}`")
        return
    if duck and wants == ["integer"] and isinstance(value, float) and math.isfinite(value):
        if "enum" in prop and value not in prop["enum"]:
            out.emit("OPT106", key, f"`{name} = {show(key, value)}` is not supported: must be "
                     f"{' or '.join(show(key, v) for v in prop['enum'])}", prop.get("description", ""))
            return
        what = "the same number" if value.is_integer() else "that number, fraction and all"
        out.emit("OPT114", key, f"`{name} = {show(key, value)}` is a float where a whole number is meant: the "
                 f"optimizer computes with {what}",
                 f"write `{name} = {int(value)}`" if value.is_integer() else "write a whole number")
        return
    hint = ""
    if want == "an array" and key and key[0] in props and "minItems" in props[key[0]]:
        ex = props[key[0]].get("default")
        hint = f"write e.g. `{name} = {show(key, ex)}`" if isinstance(ex, list) else ""
    if want == "an integer" and isinstance(value, float) and value.is_integer():
        hint = f"write `{name} = {int(value)}`"
    if want == _TOML_TYPE["boolean"] and number:
        hint = f"write `{name} = {'true' if value else 'false'}`"
    if set(wants) & {"number", "integer"} and isinstance(value, bool):
        hint = f"write a number, e.g. `{name} = {int(value)}`"
        if refused:
            hint += " (torch refuses a boolean here: RuntimeError at the first step)"
    kind = toml_kind(value)
    out.emit("OPT107", key, f"`{name}` must be {want}, not {'an' if kind[0] in 'aeiou' else 'a'} {kind} "
             f"({show(key, value)})", hint)


def _fits(x: float, prop: dict) -> bool:
    """Whether a number satisfies a property's range and enum."""
    if "enum" in prop and x not in prop["enum"]:
        return False
    lo, hi = prop.get("minimum"), prop.get("maximum")
    if lo is not None and (x <= lo if prop.get("exclusiveMinimum") else x < lo):
        return False
    return not (hi is not None and (x >= hi if prop.get("exclusiveMaximum") else x > hi))


def _optinspect_only(out: _Out, ctx: RuleContext, k: str) -> None:
    out.emit("OPT113", (k,), f"`{k}` exists only in optinspect's bundled {schemas.meta(ctx.schema).get('type')}: "
             "the trainer's own class raises TypeError on it before training",
             "remove it, or (with optinspect's optimizers/ folder in the trainer) add `# optinspect: ignore[OPT113]`",
             on_value=False)


def _range_hint(key: tuple, s: dict) -> str:
    if key and key[0] == "betas":
        return "each beta must be in [0, 1): 1.0 divides by zero or gives NaN weights"
    return s.get("description", "")
