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
from optinspect.diagnostics import Diagnostic

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


def schema_diagnostics(path: str, ctx: RuleContext, smap: source.SourceMap) -> list[Diagnostic]:
    schema = schemas.load(ctx.schema)
    props = schema["properties"]
    swallow = schemas.meta(ctx.schema).get("kwargs") == "swallow"
    out: list[Diagnostic] = []
    seen_keys: set[tuple] = set()

    def emit(code: str, key: tuple, message: str, hint: str = "", on_value: bool = True) -> None:
        seen_keys.add(key)
        out.append(diag(path, smap.locate(OPT + key, prefer_value=on_value), code, message, hint))

    # value-level checks first: quoted numbers, "None", nan/inf (they explain the type errors that follow)
    def walk(key: tuple, value: Any, prop: dict | None) -> None:
        if isinstance(value, list):
            item = (prop or {}).get("items") if isinstance((prop or {}).get("items"), dict) else None
            for i, v in enumerate(value):
                walk(key + (i,), v, item)
            return
        if isinstance(value, str) and prop and prop.get("type") != "string":
            if _NONE_STR.match(value):
                emit("OPT105", key, f"`{key_name(key)} = {show(key, value)}` is a string, not None "
                     "(TOML has no null)",
                     f"omit `{key_name(key[:1])}` to get the default "
                     f"({show(key, prop.get('default'))})" if "default" in prop else "omit the key")
            elif _NUMBER_STR.match(value) or _BOOL_STR.match(value):
                plain = value.strip().lower()
                if _BOOL_STR.match(value):  # yes/on/no/off are not TOML: the boolean they mean is
                    plain = "true" if plain in ("true", "yes", "on", "1") else "false"
                if key[0] in catalog.TRAINER_KEYS:  # the trainer reads it itself, testing it for truth
                    said = ("the trainer tests it for truth, so any non-empty string turns it on"
                            + (f" ({show(key, value)} included)" if plain == "false" else ""))
                else:
                    said = "the trainer passes it to the constructor as text"
                emit("OPT104", key, f"`{key_name(key)}` is written as a string ({show(key, value)}); {said}",
                     f"remove the quotes: `{key_name(key)} = {plain}`")
        if isinstance(value, float) and not math.isfinite(value):
            allow_inf = prop is not None and prop.get("default") == "inf" and math.isinf(value) and value > 0
            if not allow_inf:
                emit("OPT109", key, f"`{key_name(key)} = {show(key, value)}` is not a finite number",
                     "write a finite value")

    for k, v in ctx.table.items():
        walk((k,), v, props.get(k))

    extra = [k for k in ctx.table if k not in props]
    for k in extra:
        kp = (k,)
        seen_keys.add(kp)
        span = smap.locate(OPT + kp)
        if k in TOP_LEVEL_KEYS:
            out.append(diag(path, span, "OPT111",
                             f"`{k}` is a top-level trainer setting, but it is written below [optimizer], so "
                             "TOML puts it into the optimizer table",
                             "move it above the first [table] header of the file"))
            continue
        close = difflib.get_close_matches(k, list(props), n=1, cutoff=0.7)
        others = _other_types_with(k, ctx.schema)
        label = schemas.meta(ctx.schema).get("type", ctx.schema)
        hint = f"did you mean `{close[0]}`?" if close else ""
        spec = specs.TYPES.get(ctx.schema)
        if spec and k in spec.misspellings:
            hint = f"{spec.source if spec.source != 'builtin' else label} spells it `{spec.misspellings[k]}`"
        if others and not close:
            hint = f"`{k}` is a key of {', '.join(others[:3])}, not of {label}; remove it"
        if swallow:
            out.append(diag(path, span, "OPT103", f"`{k}` is not a parameter of {label}: its constructor "
                             "takes **kwargs and silently ignores it", hint or "remove it"))
        else:
            out.append(diag(path, span, "OPT102", f"unknown key `{k}` for {label}: the constructor raises "
                             "TypeError", hint or f"known keys: {', '.join(sorted(props))}"))

    truthy_flags = bool(schemas.meta(ctx.schema).get("truthy_flags"))  # written per type in its schema
    strict_flags = set(schemas.meta(ctx.schema).get("strict_flags", ()))
    for err in _schema_errors(schema, ctx.table):
        key = tuple(err.absolute_path)
        if err.validator == "additionalProperties" or any(key[:n] in seen_keys for n in range(1, len(key) + 1)):
            continue
        name = key_name(key)
        s = err.schema if isinstance(err.schema, dict) else {}
        if err.validator == "type":
            want = err.validator_value
            want = " or ".join(_TOML_TYPE.get(w, w) for w in (want if isinstance(want, list) else [want]))
            hint = ""
            if want == "an array" and key and key[0] in props and "minItems" in props[key[0]]:
                ex = props[key[0]].get("default")
                hint = f"write e.g. `{name} = {show(key, ex)}`" if isinstance(ex, list) else ""
            if want == "an integer" and isinstance(err.instance, float) and err.instance.is_integer():
                hint = f"write `{name} = {int(err.instance)}`"
            if want == _TOML_TYPE["boolean"] and type(err.instance) is int and truthy_flags \
                    and key[0] not in strict_flags:  # the optimizer tests the flag for truth: runs as intended
                word = "true" if err.instance else "false"
                emit("OPT114", key, f"`{name} = {err.instance}` is an integer where a boolean is meant: the optimizer "
                     f"tests it for truth, so it behaves as `{word}`", f"write `{name} = {word}`")
                continue
            emit("OPT107", key, f"`{name}` must be {want}, not a {toml_kind(err.instance)} "
                 f"({show(key, err.instance)})", hint)
        elif err.validator in ("minimum", "maximum"):
            emit("OPT106", key, f"`{name} = {show(key, err.instance)}` is out of range: must be {_range_text(s)}",
                 _range_hint(key, s))
        elif err.validator in ("minItems", "maxItems"):
            n = s.get("minItems")
            emit("OPT108", key, f"`{name}` must be an array of {n} numbers, but it has {len(err.instance)}",
                 f"write e.g. `{name} = {show(key, s.get('default'))}`" if "default" in s else "")
        elif err.validator == "enum":
            allowed = " or ".join(show(key, v) for v in err.validator_value)
            emit("OPT106", key, f"`{name} = {show(key, err.instance)}` is not supported: must be {allowed}",
                 s.get("description", ""))
        elif err.validator == "required":
            missing = err.message.split("'")[1] if "'" in err.message else "?"
            emit("OPT110", (), f"[optimizer] of type {ctx.type_name} requires `{missing}`",
                 f"add `{missing} = ...`", on_value=False)
        else:
            emit("OPT107", key, f"`{name}`: {err.message}")
    for k in ctx.table:
        if k in props and props[k].get("x-optinspect-only"):
            out.append(diag(path, smap.locate(OPT + (k,)), "OPT113",
                             f"`{k}` exists only in optinspect's bundled {schemas.meta(ctx.schema).get('type')}; "
                             "the trainer's original class raises TypeError on it",
                             "keep it only if the trainer imports optinspect's `optimizers` package"))
    return out


def _range_hint(key: tuple, s: dict) -> str:
    if key and key[0] == "betas":
        return "each beta must be in [0, 1): 1.0 divides by zero or gives NaN weights"
    return s.get("description", "")
