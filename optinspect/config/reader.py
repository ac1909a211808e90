"""Reading a config as the trainer does: only a small regular file, UTF-8 without BOM (OPT002, OPT003), parsed as
TOML (OPT001), then what the trainer's own reader (the `toml` package, 0.10) cannot read in a file newer readers
accept (OPT007, OPT008)."""

from __future__ import annotations

import os
import stat
from typing import Any

from optinspect.config import source
from optinspect.config.context import diag, toml_kind
from optinspect.diagnostics import Diagnostic, Span

MAX_BYTES = 2 * 1024 * 1024


def read_file(path: str) -> tuple[str | None, list[Diagnostic], bool]:
    """Return (text, diagnostics, unreadable). Only regular files are read, and never more than the limit:
    a FIFO would block forever and a device (a link to /dev/zero) would never end."""
    def unreadable(message: str, hint: str = "") -> tuple[None, list[Diagnostic], bool]:
        return None, [diag(path, Span(1, 1, 1, 1), "OPT002", message, hint)], True

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
        return None, [diag(path, Span(line, col, line, col + 1), "OPT002",
                            "binary file: contains a NUL byte", "pass the TOML config itself")], True
    if raw.startswith(b"\xef\xbb\xbf"):
        diags.append(diag(path, Span(1, 1, 1, 2), "OPT003", "file starts with a UTF-8 byte-order mark (BOM)",
                           "save the file as UTF-8 without BOM; the trainer's TOML reader rejects it"))
        raw = raw[3:]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line, col = _byte_pos(raw, e.start)
        return None, diags + [diag(path, Span(line, col, line, col + 1), "OPT002",
                                    f"not UTF-8 text (byte 0x{raw[e.start]:02x})",
                                    "save the file as UTF-8")], True
    return text, diags, False


def _byte_pos(raw: bytes, offset: int) -> tuple[int, int]:
    line = raw.count(b"\n", 0, offset) + 1
    start = raw.rfind(b"\n", 0, offset) + 1
    return line, len(raw[start:offset].decode("utf-8", "replace")) + 1


def parse(path: str, text: str, smap: source.SourceMap, out: list[Diagnostic]) -> dict | None:
    for dup_path, span in smap.duplicates:
        name = ".".join(str(p) for p in dup_path)
        first = smap.key_span(dup_path)
        where = f" (first defined on line {first.line})" if first else ""
        out.append(diag(path, span, "OPT001", f"duplicate key `{name}`{where}",
                         "TOML forbids defining a key or table twice; keep one"))
    if not out:
        try:  # the standard library's reader is ten times faster; tomlkit below says where a broken file breaks
            import tomllib

            return tomllib.loads(text)
        except ImportError:  # Python 3.10
            pass
        except Exception:  # noqa: BLE001 - any refusal: tomlkit's message is the one shown
            pass
    import tomlkit
    from tomlkit.exceptions import TOMLKitError

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
        out.append(diag(path, Span(line, col, line, col + 1), "OPT001", f"invalid TOML: {msg}",
                         "fix the syntax here; the trainer cannot read this file"))
        return None
    except Exception as e:  # noqa: BLE001 - tomlkit raises odd types on odd input; never a traceback
        out.append(diag(path, Span(1, 1, 1, 1), "OPT001", f"invalid TOML: {e}", ""))
        return None
    try:
        return doc.unwrap()
    except Exception as e:  # noqa: BLE001
        out.append(diag(path, Span(1, 1, 1, 1), "OPT001", f"invalid TOML: {e}", ""))
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
    kinds = {toml_kind(v) for v in value}  # TOML 0.5 kinds: integers and floats are two
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


def trainer_reader(path: str, data: dict, smap: source.SourceMap) -> list[Diagnostic]:
    """What the trainer's TOML reader (the `toml` package, 0.10) cannot read in a file tomlkit accepts, anywhere
    in the file (the trainer reads it all)."""
    out: list[Diagnostic] = []

    def array(key: str, here: tuple, value: list, problem: tuple[str, Any]) -> None:
        name = ".".join(map(str, here))
        where = smap.locate(here, prefer_value=True)
        what, detail = problem
        if what == "inline-nested":
            out.append(diag(path, where, "OPT008",
                             f"`{name}`: an array of arrays, or of several tables, inside inline tables ({{ ... }}): "
                             "the trainer's TOML reader (toml 0.10) cannot read the file (\"Invalid inline table\")",
                             "write the inline table as a [table] section of its own"))
            return
        if what == "dropped":
            out.append(diag(path, where, "OPT007",
                             f"`{name}` starts with an inline table: the trainer's TOML reader (toml 0.10) keeps only "
                             f"the tables of this array and silently drops the other {detail} element"
                             f"{'s' * (detail != 1)}", "put the tables and the other values in separate arrays"))
            return
        fixed = _as_floats(value) if detail == {"integer", "float"} else None
        hint = f"write `{key} = {fixed}`" if fixed else "give every element of the array the same kind"
        if detail == {"integer", "float"} and not fixed:
            hint = "write the integers as floats (0 as 0.0)"
        out.append(diag(path, where, "OPT007",
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
