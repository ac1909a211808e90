"""Read a trainer config, check its [optimizer] table with the schemas and the rules, return diagnostics.

Pipeline: bytes -> text checks -> positions (source.scan) -> tomlkit -> schema -> rules -> suppression.
Nothing here prints or exits; the CLI decides what to do with the FileReport.
"""

from __future__ import annotations

import collections
import difflib
import math
import os
import re
import stat
from dataclasses import dataclass, field, replace
from typing import Any

from optinspect import specs
from optinspect.config import catalog, schemas, source
from optinspect.config.registry import RULES, Finding
from optinspect.diagnostics import Diagnostic, FileReport, Severity, Span

MAX_BYTES = 2 * 1024 * 1024
OPT = ("optimizer",)

SECRET_KEY = re.compile(r"(?i)(api[_-]?key|token|secret|passw(or)?d|credential|auth)")
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
FOREIGN_KEYS = frozenset({"optimizer_type", "optimizer_args", "optimizer_name", "optimizer_kwargs", "name", "params"})


@dataclass
class Options:
    require_optimizer: bool = False
    ignore: frozenset[str] = frozenset()
    world_size: int | None = None
    trainer: bool = True  # also apply rules about the trainer around the optimizer


@dataclass
class RuleContext:
    """What a rule sees: the table, the whole config, and what the table resolves to."""

    table: dict
    config: dict
    type_name: str
    schema: str | None
    options: Options
    _defaults: dict = field(default_factory=dict)

    def has(self, key: str) -> bool:
        return key in self.table

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


def read_file(path: str) -> tuple[str | None, list[Diagnostic], bool]:
    """Return (text, diagnostics, unreadable). Only regular files are read, and never more than the limit:
    a FIFO would block forever and a device (a link to /dev/zero) would never end."""
    def unreadable(message: str, hint: str = "") -> tuple[None, list[Diagnostic], bool]:
        return None, [_diag(path, Span(1, 1, 1, 1), "OPT002", message, hint)], True

    try:
        if os.path.isdir(path):
            return unreadable("a folder without any .toml file",
                              "pass trainer configs (.toml) or a folder holding them")
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        return unreadable("no such file", "check the path")
    except OSError as e:
        return unreadable(f"cannot read: {e.strerror or e}")
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            return unreadable(f"not a regular file ({_file_kind(st.st_mode)}), so it is not read",
                              "pass the TOML config itself")
        if st.st_size > MAX_BYTES:
            return unreadable(f"file is {st.st_size / 1e6:.1f} MB; a trainer config is a few kB (limit "
                              f"{MAX_BYTES // (1024 * 1024)} MiB), so this is not read",
                              "pass the TOML config itself, not a data or model file")
        try:
            raw = fh.read(MAX_BYTES + 1)
        except OSError as e:
            return unreadable(f"cannot read: {e.strerror or e}")
    if len(raw) > MAX_BYTES:  # it grew while we looked
        return unreadable(f"file is over {MAX_BYTES // (1024 * 1024)} MiB, so it is not read")
    return decode(path, raw)


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a plain file"


def decode(path: str, raw: bytes) -> tuple[str | None, list[Diagnostic], bool]:
    diags: list[Diagnostic] = []
    nul = raw.find(b"\x00")
    if nul >= 0:
        line, col = _byte_pos(raw, nul)
        return None, [_diag(path, Span(line, col, line, col + 1), "OPT002",
                            "binary file: contains a NUL byte", "pass the TOML config itself")], True
    if raw.startswith(b"\xef\xbb\xbf"):
        diags.append(_diag(path, Span(1, 1, 1, 2), "OPT003", "file starts with a UTF-8 byte-order mark (BOM)",
                           "save the file as UTF-8 without BOM; the trainer's TOML reader rejects it"))
        raw = raw[3:]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line, col = _byte_pos(raw, e.start)
        return None, diags + [_diag(path, Span(line, col, line, col + 1), "OPT002",
                                    f"not UTF-8 text (byte 0x{raw[e.start]:02x})",
                                    "save the file as UTF-8")], True
    return text, diags, False


def _byte_pos(raw: bytes, offset: int) -> tuple[int, int]:
    line = raw.count(b"\n", 0, offset) + 1
    start = raw.rfind(b"\n", 0, offset) + 1
    return line, len(raw[start:offset].decode("utf-8", "replace")) + 1


def _diag(path: str, span: Span, code: str, message: str, hint: str = "",
          severity: Severity | None = None) -> Diagnostic:
    return Diagnostic(path, span.line, span.column, span.end_line, span.end_column,
                      severity or RULES[code].severity, code, message, hint)


def validate_file(path: str, options: Options | None = None) -> FileReport:
    text, diags, unreadable = read_file(path)
    report = FileReport(path=path, diagnostics=diags, unreadable=unreadable)
    if text is None:
        return report
    return validate_text(path, text, options, report)


def validate_text(path: str, text: str, options: Options | None = None,
                  report: FileReport | None = None) -> FileReport:
    options = options or Options()
    report = report or FileReport(path=path)
    report.source = text
    smap = source.scan(text)
    found: list[Diagnostic] = []
    data = _parse(path, text, smap, found)
    report.data = data
    if data is not None:
        found.extend(_trainer_reader(path, data, smap))
        found.extend(_check_config(path, data, smap, options, report))
    _finish(report, report.diagnostics + found, smap, options)
    return report


def _parse(path: str, text: str, smap: source.SourceMap, out: list[Diagnostic]) -> dict | None:
    import tomlkit
    from tomlkit.exceptions import TOMLKitError

    for dup_path, span in smap.duplicates:
        name = ".".join(str(p) for p in dup_path)
        first = smap.key_span(dup_path)
        where = f" (first defined on line {first.line})" if first else ""
        out.append(_diag(path, span, "OPT001", f"duplicate key `{name}`{where}",
                         "TOML forbids defining a key or table twice; keep one"))
    try:
        doc = tomlkit.parse(text)
    except TOMLKitError as e:
        if out:  # the duplicate we located is what the parser tripped over
            return None
        line = getattr(e, "line", 1) or 1
        col = (getattr(e, "col", 0) or 0) + 1
        msg = str(e).split(" at line ")[0]
        if "\\x00" in msg or "'\x00'" in msg:
            msg = "unexpected end of file (an array, table or string is not closed)"
            lines = text.splitlines() or [""]
            line, col = len(lines), len(lines[-1]) + 1
        out.append(_diag(path, Span(line, col, line, col + 1), "OPT001", f"invalid TOML: {msg}",
                         "fix the syntax here; the trainer cannot read this file"))
        return None
    except Exception as e:  # noqa: BLE001 - tomlkit raises odd types on odd input; never a traceback
        out.append(_diag(path, Span(1, 1, 1, 1), "OPT001", f"invalid TOML: {e}", ""))
        return None
    try:
        return doc.unwrap()
    except Exception as e:  # noqa: BLE001
        out.append(_diag(path, Span(1, 1, 1, 1), "OPT001", f"invalid TOML: {e}", ""))
        return None


def _array_problems(value: Any, depth: int = 0, inline: bool = False, nested: bool = False) -> list[tuple[str, Any]]:
    """How the trainer's reader gets arrays inside `value` wrong. The table holding the array is an inline table
    (`inline`), and one that is a key's value inside another inline table (`nested`), or neither.

    ("mixed", kinds): several kinds of value in one array; it refuses the file. ("dropped", n): the array starts with
    an inline table; it silently keeps only the tables ([{ a = 1 }, 0.5] is read as [{ a = 1 }]). ("inline-nested",
    None): an array of arrays in an inline table, or of several tables in a nested inline table; it refuses the
    file. A table met inside an array is always an inline table."""
    found: list[tuple[str, Any]] = []  # an array must hold one kind in TOML 0.5 (toml 0.10), any mix in TOML 1.0
    if not isinstance(value, list) or depth >= 32:
        return found
    if value and isinstance(value[0], dict):
        tables = [v for v in value if isinstance(v, dict)]
        if len(tables) < len(value):
            found.append(("dropped", len(value) - len(tables)))
        if nested and len(tables) >= 2:
            found.append(("inline-nested", None))
        for t in tables:  # elements of an array in a nested inline table count as nested too
            found += _inline_table_problems(t, depth + 1, nested=nested)
        return found
    kinds = {_toml_kind(v) for v in value}  # TOML 0.5 kinds: integers and floats are two
    if len(kinds) > 1:
        found.append(("mixed", kinds))
    elif inline and _nested_array_then_more(value):
        found.append(("inline-nested", None))
    for v in value:
        if isinstance(v, list):
            found += _array_problems(v, depth + 1, inline, nested)
        elif isinstance(v, dict):
            found += _inline_table_problems(v, depth + 1, nested=nested)
    return found


def _inline_table_problems(table: dict, depth: int, nested: bool) -> list[tuple[str, Any]]:
    """`_array_problems` of the arrays in an inline table (`nested`: it is a key's value in another inline table)."""
    found: list[tuple[str, Any]] = []
    for v in table.values():
        if isinstance(v, dict) and depth < 32:
            found += _inline_table_problems(v, depth + 1, nested=True)
        elif isinstance(v, list):
            found += _array_problems(v, depth + 1, inline=True, nested=nested)
    return found


def _as_floats(value: list) -> str | None:
    """`[0, 0.999]` written as the trainer's reader accepts it, when every element is a number."""
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return None
    return "[" + ", ".join(f"{float(v)!r}" if isinstance(v, int) else repr(v) for v in value) + "]"


def _nested_array_then_more(value: Any, depth: int = 0) -> bool:
    """An array with an array element followed by another element (`[[1], 2]`, `[[1], [2]]`), at any depth."""
    if not isinstance(value, list) or depth > 32:
        return False
    if any(isinstance(v, list) for v in value[:-1]):
        return True
    return any(_nested_array_then_more(v, depth + 1) for v in value)


def _trainer_reader(path: str, data: dict, smap: source.SourceMap) -> list[Diagnostic]:
    """What the trainer's TOML reader (the `toml` package, 0.10) cannot read in a file tomlkit accepts, anywhere
    in the file (the trainer reads it all)."""
    out: list[Diagnostic] = []

    def array(key: str, here: tuple, value: list, problem: tuple[str, Any]) -> None:
        name = ".".join(map(str, here))
        where = smap.locate(here, prefer_value=True)
        what, detail = problem
        if what == "inline-nested":
            out.append(_diag(path, where, "OPT008",
                             f"`{name}`: an array of arrays, or of several tables, inside inline tables ({{ ... }}): "
                             "the trainer's TOML reader (toml 0.10) cannot read the file (\"Invalid inline table\")",
                             "write the inline table as a [table] section of its own"))
            return
        if what == "dropped":
            out.append(_diag(path, where, "OPT007",
                             f"`{name}` starts with an inline table: the trainer's TOML reader (toml 0.10) keeps only "
                             f"the tables of this array and silently drops the other {detail} element"
                             f"{'s' * (detail != 1)}", "put the tables and the other values in separate arrays"))
            return
        fixed = _as_floats(value) if detail == {"integer", "float"} else None
        hint = f"write `{key} = {fixed}`" if fixed else "give every element of the array the same kind"
        if detail == {"integer", "float"} and not fixed:
            hint = "write the integers as floats (0 as 0.0)"
        out.append(_diag(path, where, "OPT007",
                         f"`{name}` mixes {' and '.join(sorted(k + 's' for k in detail))} in one array: the "
                         "trainer's TOML reader (toml 0.10) cannot read the file (\"Not a homogeneous "
                         "array\", or a parse error nearby)", hint))

    def walk(node: dict, prefix: tuple, depth: int, inline: bool, nested: bool) -> None:
        """`inline`: `node` is an inline table; `nested`: one that is a key's value inside another inline table."""
        for key, value in node.items():
            here = prefix + (key,)
            if isinstance(value, dict) and depth < 32:
                child = inline or here in smap.inline_tables
                walk(value, here, depth + 1, child, child and inline)
            elif isinstance(value, list) and all(isinstance(v, dict) for v in value) and value:  # [[tables]]
                if nested and len(value) >= 2:
                    array(str(key), here, value, ("inline-nested", None))
                for i, item in enumerate(value):  # the source map indexes them: datasets.0.x
                    item_path = here + (i,)
                    walk(item, item_path, depth + 1, inline or item_path in smap.inline_tables, nested)
            elif isinstance(value, list):
                problem = next(iter(_array_problems(value, 0, inline, nested)), None)
                if problem:
                    array(str(key), here, value, problem)

    walk(data, (), 0, False, False)
    return out


def _check_config(path: str, data: dict, smap: source.SourceMap, options: Options,
                  report: FileReport) -> list[Diagnostic]:
    out: list[Diagnostic] = []
    if "optimizer" not in data:
        if options.require_optimizer:
            out.append(_diag(path, Span(1, 1, 1, 1), "OPT004", "no [optimizer] table in this file",
                             "add an [optimizer] table, or drop --require-optimizer for non-trainer files"))
        other = sorted(k for k in data if k in OTHER_TRAINER_KEYS)
        if other:  # said, so that "no problems found" is not read as "checked and fine"
            out.append(_diag(path, smap.locate((other[0],)), "OPT010",
                             f"a kohya sd-scripts / musubi-tuner style config ({', '.join(f'`{k}`' for k in other)}): "
                             "optinspect checks diffusion-pipe's [optimizer] table, so nothing in this file was "
                             "checked",
                             "run optinspect on diffusion-pipe configs; this file's optimizer settings are not judged"))
        return out
    table = data["optimizer"]
    span = smap.locate(OPT)
    if not isinstance(table, dict):
        what = "an array of tables ([[optimizer]])" if isinstance(table, list) else f"a {_toml_kind(table)}"
        out.append(_diag(path, span, "OPT005", f"`optimizer` is {what}, not a table",
                         "write one [optimizer] table with `type = '...'` and the constructor's keys"))
        return out
    foreign = sorted(k for k in table if k in FOREIGN_KEYS)
    if foreign and "type" not in table:
        out.append(_diag(path, span, "OPT006",
                         f"not a diffusion-pipe [optimizer] table: it uses {', '.join(f'`{k}`' for k in foreign)} "
                         "(another trainer's layout)",
                         "write `type = '<optimizer>'` and the constructor's keywords as keys of the table"))
        return out
    if "type" not in table:
        out.append(_diag(path, span, "OPT110", "[optimizer] has no `type` key",
                         "add e.g. `type = 'adamw_optimi'`; see `optinspect schema` for the known types"))
        return out
    type_name = table["type"]
    tspan = smap.locate(OPT + ("type",), prefer_value=True)
    if not isinstance(type_name, str):
        out.append(_diag(path, tspan, "OPT107", f"`type` must be a string, not {_toml_kind(type_name)}",
                         "write e.g. `type = 'adamw'`"))
        return out
    res = catalog.resolve_type(type_name)
    report.optimizer_type = type_name
    if res.source == "unknown":
        if res.case_fix:
            msg = (f"`type = '{type_name}'` is not a built-in type, and the pytorch_optimizer fallback is "
                   f"case-sensitive: pytorch_optimizer has `{res.case_fix}`, not `{type_name}`")
            hint = f"write `type = '{res.case_fix}'`"
        else:
            msg = f"unknown optimizer type `{type_name}`"
            hint = (f"did you mean {', '.join(repr(s) for s in res.suggestions)}?" if res.suggestions
                    else "see `optinspect schema` for the known types")
        out.append(_diag(path, tspan, "OPT101", msg, hint))
        return out
    if res.schema is None:
        return out  # a pytorch_optimizer class we have no schema for: nothing more to check
    ctx = RuleContext(table, data, type_name, res.schema, options, schemas.defaults(res.schema))
    from_rules = _rule_diagnostics(path, ctx, smap)
    explained = {(d.line, d.column) for d in from_rules if d.severity is Severity.ERROR}
    # a rule that explains a value says more than the schema's generic type/range message for it
    out.extend(d for d in _schema_diagnostics(path, ctx, smap)
               if not (d.code in ("OPT106", "OPT107") and (d.line, d.column) in explained))
    out.extend(from_rules)
    return out


# -- schema ------------------------------------------------------------------------------------------
_TOML_TYPE = {"number": "a number", "integer": "an integer", "boolean": "a boolean (true or false)",
              "array": "an array", "object": "a table", "string": "a string", "null": "absent"}


def _toml_kind(v: Any) -> str:
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "float"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    if isinstance(v, dict):
        return "table"
    return "date/time" if v is not None else "nothing"


def _key_name(path: tuple) -> str:
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


def _schema_diagnostics(path: str, ctx: RuleContext, smap: source.SourceMap) -> list[Diagnostic]:
    schema = schemas.load(ctx.schema)
    props = schema["properties"]
    swallow = schemas.meta(ctx.schema).get("kwargs") == "swallow"
    out: list[Diagnostic] = []
    seen_keys: set[tuple] = set()

    def emit(code: str, key: tuple, message: str, hint: str = "", on_value: bool = True) -> None:
        seen_keys.add(key)
        out.append(_diag(path, smap.locate(OPT + key, prefer_value=on_value), code, message, hint))

    # value-level checks first: quoted numbers, "None", nan/inf (they explain the type errors that follow)
    def walk(key: tuple, value: Any, prop: dict | None) -> None:
        if isinstance(value, list):
            item = (prop or {}).get("items") if isinstance((prop or {}).get("items"), dict) else None
            for i, v in enumerate(value):
                walk(key + (i,), v, item)
            return
        if isinstance(value, str) and prop and prop.get("type") != "string":
            if _NONE_STR.match(value):
                emit("OPT105", key, f"`{_key_name(key)} = {show(key, value)}` is a string, not None "
                     "(TOML has no null)",
                     f"omit `{_key_name(key[:1])}` to get the default "
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
                emit("OPT104", key, f"`{_key_name(key)}` is written as a string ({show(key, value)}); {said}",
                     f"remove the quotes: `{_key_name(key)} = {plain}`")
        if isinstance(value, float) and not math.isfinite(value):
            allow_inf = prop is not None and prop.get("default") == "inf" and math.isinf(value) and value > 0
            if not allow_inf:
                emit("OPT109", key, f"`{_key_name(key)} = {show(key, value)}` is not a finite number",
                     "write a finite value")

    for k, v in ctx.table.items():
        walk((k,), v, props.get(k))

    extra = [k for k in ctx.table if k not in props]
    for k in extra:
        kp = (k,)
        seen_keys.add(kp)
        span = smap.locate(OPT + kp)
        if k in TOP_LEVEL_KEYS:
            out.append(_diag(path, span, "OPT111",
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
            out.append(_diag(path, span, "OPT103", f"`{k}` is not a parameter of {label}: its constructor "
                             "takes **kwargs and silently ignores it", hint or "remove it"))
        else:
            out.append(_diag(path, span, "OPT102", f"unknown key `{k}` for {label}: the constructor raises "
                             "TypeError", hint or f"known keys: {', '.join(sorted(props))}"))

    truthy_flags = bool(schemas.meta(ctx.schema).get("truthy_flags"))  # written per type in its schema
    strict_flags = set(schemas.meta(ctx.schema).get("strict_flags", ()))
    for err in _schema_errors(schema, ctx.table):
        key = tuple(err.absolute_path)
        if err.validator == "additionalProperties" or any(key[:n] in seen_keys for n in range(1, len(key) + 1)):
            continue
        name = _key_name(key)
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
            emit("OPT107", key, f"`{name}` must be {want}, not a {_toml_kind(err.instance)} "
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
            out.append(_diag(path, smap.locate(OPT + (k,)), "OPT113",
                             f"`{k}` exists only in optinspect's bundled {schemas.meta(ctx.schema).get('type')}; "
                             "the trainer's original class raises TypeError on it",
                             "keep it only if the trainer imports optinspect's `optimizers` package"))
    return out


def _range_hint(key: tuple, s: dict) -> str:
    if key and key[0] == "betas":
        return "each beta must be in [0, 1): 1.0 divides by zero or gives NaN weights"
    return s.get("description", "")


# -- rules -------------------------------------------------------------------------------------------
def _rule_diagnostics(path: str, ctx: RuleContext, smap: source.SourceMap) -> list[Diagnostic]:
    from optinspect.config import rules as _rules  # noqa: F401 - registers the rule functions

    out: list[Diagnostic] = []
    for rule in RULES.values():
        if rule.check is None or (rule.types and ctx.schema not in rule.types):
            continue
        if rule.trainer_only and not ctx.options.trainer:
            continue
        for f in rule.check(ctx):
            where = f.key if f.absolute else OPT + f.key
            span = smap.locate(where, prefer_value=f.on_value) if f.key else smap.locate(OPT)
            out.append(_diag(path, span, rule.code, f.message, f.hint or rule.fix, f.severity))
    return out


# top-level keys of kohya sd-scripts and musubi-tuner configs: another trainer's layout, not checked here
OTHER_TRAINER_KEYS = frozenset({"optimizer_type", "optimizer_args", "learning_rate", "lr_scheduler",
                                "max_train_steps", "pretrained_model_name_or_path", "network_module"})
MAX_FINDINGS = 200  # per file; the rest are counted by one OPT009 finding


def _finish(report: FileReport, diags: list[Diagnostic], smap: source.SourceMap, options: Options) -> None:
    from optinspect.config.secrets import redact, secret_values

    report.secrets = secret_values(report.data) if report.data else set()
    if report.secrets:  # a message or hint may quote a value: redacted here, so every format is covered
        diags = [replace(d, message=redact(d.message, report.secrets), hint=redact(d.hint, report.secrets))
                 for d in diags]
    kept = []
    seen = set()
    for d in diags:
        sup = smap.suppressions.get(d.line, set())
        if d.code in options.ignore or d.code in sup or "*" in sup:
            report.suppressed += 1
            continue
        ident = (d.line, d.column, d.code, d.message)
        if ident in seen:
            continue
        seen.add(ident)
        kept.append(d)
    kept.sort(key=lambda d: d.sort_key)
    if len(kept) > MAX_FINDINGS:
        hidden = kept[MAX_FINDINGS:]
        worst = min((d.severity for d in hidden), key=lambda s: s.rank)
        counts = collections.Counter(d.code for d in hidden)
        what = ", ".join(f"{n:,} {code}" for code, n in counts.most_common(5))
        kept = kept[:MAX_FINDINGS] + [_diag(report.path, Span(hidden[0].line, 1, hidden[0].line, 1), "OPT009",
                                            f"{len(hidden):,} more findings not shown ({what})",
                                            "fix the findings shown and run again", severity=worst)]
    report.diagnostics = kept


__all__ = ["Options", "RuleContext", "Finding", "validate_file", "validate_text", "show"]


def validate_table(table: dict, config: dict | None = None, options: Options | None = None) -> list[Diagnostic]:
    """Check an [optimizer] table given as a dict (no file, so no positions): the API path of build_optimizer."""
    data = dict(config or {})
    data["optimizer"] = table
    report = FileReport(path="<optimizer table>")
    options = options or Options()
    found = _check_config(report.path, data, source.SourceMap(), options, report)
    _finish(report, found, source.SourceMap(), options)
    return report.diagnostics
