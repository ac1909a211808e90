"""TOML text with the position of every key and value.

tomlkit parses and reports syntax errors, but it exposes no positions. This scanner walks the same text
and records, for every key path, where the key and its value are, so that each diagnostic can point at
`file:line:col`. It does not judge syntax (tomlkit does); it only has to agree with TOML on where things
are, and it never raises.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from optinspect.diagnostics import Span

Path = tuple  # of str keys and int array indices

_BARE = re.compile(r"[A-Za-z0-9_-]+")
_SUPPRESS = re.compile(r"optinspect:\s*ignore(?:\[([A-Za-z0-9_,\s]*)\])?")
_BLANKS = re.compile(r"[ \t\r]+")
_SCALAR = re.compile(r"[^,\]}\n#\r \t]+")
_BASIC = re.compile(r'"(?:[^"\\\n]|\\.)*"?')  # a one-line "string", escapes included
_LITERAL = re.compile(r"'[^'\n]*'?")


@dataclass
class Entry:
    key: Span
    value: Span | None = None


@dataclass
class SourceMap:
    """Positions of keys/values, duplicate definitions, and per-line suppression comments."""

    entries: dict[Path, Entry] = field(default_factory=dict)
    tables: dict[Path, Span] = field(default_factory=dict)  # header spans of [table] / [[table]]
    duplicates: list[tuple[Path, Span]] = field(default_factory=list)
    suppressions: dict[int, set[str]] = field(default_factory=dict)  # line -> codes ('*' = all)
    inline_tables: set[Path] = field(default_factory=set)  # paths of { ... } values (array items by index)
    lines: list[str] = field(default_factory=list)

    def key_span(self, path: Path) -> Span | None:
        e = self.entries.get(tuple(path))
        return e.key if e else self.tables.get(tuple(path))

    def value_span(self, path: Path) -> Span | None:
        e = self.entries.get(tuple(path))
        return (e.value or e.key) if e else self.tables.get(tuple(path))

    def locate(self, path: Path, prefer_value: bool = False) -> Span:
        """Best span for a path: the value or key itself, else its nearest located ancestor."""
        p = tuple(path)
        while p:
            span = self.value_span(p) if prefer_value else self.key_span(p)
            if span is not None:
                return span
            p = p[:-1]
        return Span(1, 1, 1, 1)


class _Scanner:
    def __init__(self, text: str) -> None:
        self.s = text
        self.n = len(text)
        self.i = 0
        self.line = 1
        self.col = 1
        self.map = SourceMap(lines=text.splitlines())
        self.aot_counts: dict[Path, int] = {}
        self.defined_tables: set[Path] = set()

    # -- low level -------------------------------------------------------------------------------
    def peek(self, k: int = 0) -> str:
        j = self.i + k
        return self.s[j] if j < self.n else ""

    def adv(self, k: int = 1) -> None:
        i = self.i
        end = min(i + k, self.n)
        lines = self.s.count("\n", i, end)
        if lines:
            self.line += lines
            self.col = end - self.s.rfind("\n", i, end)
        else:
            self.col += end - i
        self.i = end

    def pos(self) -> tuple[int, int]:
        return self.line, self.col

    def skip_ws(self, newlines: bool = False) -> None:
        while self.i < self.n:
            c = self.s[self.i]
            if c in " \t\r":  # a run of blanks at once (they never end a line)
                end = (_BLANKS.match(self.s, self.i)).end()
                self.col += end - self.i
                self.i = end
            elif newlines and c == "\n":
                self.adv()
            elif c == "#":
                self.comment()
            else:
                return

    def comment(self) -> None:
        line = self.line
        start = self.i
        end = self.s.find("\n", start)
        end = self.n if end < 0 else end
        self.col += end - start  # a comment never holds a newline: the line stays, the column moves
        self.i = end
        m = _SUPPRESS.search(self.s[start:self.i])
        if m:
            codes = {c.strip().upper() for c in (m.group(1) or "").split(",") if c.strip()} or {"*"}
            self.map.suppressions.setdefault(line, set()).update(codes)

    def skip_line(self) -> None:
        while self.i < self.n and self.s[self.i] != "\n":
            if self.s[self.i] == "#":
                self.comment()
                return
            self.adv()

    # -- keys --------------------------------------------------------------------------------------
    def key_part(self) -> str | None:
        c = self.peek()
        if c in "\"'":
            q = c
            self.adv()
            buf = []
            while self.i < self.n and self.s[self.i] not in (q, "\n"):
                if q == '"' and self.s[self.i] == "\\":
                    buf.append(self.s[self.i:self.i + 2])
                    self.adv(2)
                    continue
                buf.append(self.s[self.i])
                self.adv()
            self.adv()  # closing quote
            raw = "".join(buf)
            if q == '"':
                try:
                    raw = raw.encode("utf-8", "surrogatepass").decode("unicode_escape")
                except Exception:  # noqa: BLE001 - a broken escape: keep the raw text
                    pass
            return raw
        m = _BARE.match(self.s, self.i)
        if not m:
            return None
        self.adv(m.end() - self.i)
        return m.group(0)

    def dotted_key(self) -> tuple[list[str], Span] | None:
        l0, c0 = self.pos()
        parts: list[str] = []
        while True:
            self.skip_ws()
            part = self.key_part()
            if part is None:
                return None if not parts else (parts, Span(l0, c0, *self.pos()))
            parts.append(part)
            end = self.pos()
            self.skip_ws()
            if self.peek() == ".":
                self.adv()
                continue
            return parts, Span(l0, c0, *end)

    # -- values ------------------------------------------------------------------------------------
    def value(self, path: Path) -> Span:
        l0, c0 = self.pos()
        c = self.peek()
        if c == "[":
            self.array(path)
        elif c == "{":
            self.inline_table(path)
        elif c in "\"'":
            self.string()
        else:
            while True:  # a run of the scalar's characters at once; a blank inside only in a date-time
                m = _SCALAR.match(self.s, self.i)
                if m:
                    self.adv(m.end() - self.i)
                if self.i >= self.n or self.s[self.i] not in " \t" or self._scalar_ends_here():
                    break
                self.adv()
        return Span(l0, c0, *self.pos())

    def _scalar_ends_here(self) -> bool:
        # dates may hold one space ("1979-05-27 07:32:00"); anything else ends at whitespace
        j = self.i
        while j < self.n and self.s[j] in " \t":
            j += 1
        return j >= self.n or self.s[j] in ",]}\n#\r" or not self.s[j].isdigit()

    def string(self) -> None:
        q = self.peek()
        if self.s.startswith(q * 3, self.i):
            self.adv(3)
            while self.i < self.n:
                if q == '"' and self.s[self.i] == "\\":
                    self.adv(2)
                    continue
                if self.s.startswith(q * 3, self.i):
                    self.adv(3)
                    while self.peek() == q:  # up to two quotes may close a multi-line string
                        self.adv()
                    return
                self.adv()
            return
        m = (_BASIC if q == '"' else _LITERAL).match(self.s, self.i)  # to the closing quote, or the line's end
        self.adv(m.end() - self.i)

    def array(self, path: Path) -> None:
        self.adv()  # [
        idx = 0
        while self.i < self.n:
            self.skip_ws(newlines=True)
            c = self.peek()
            if c == "]":
                self.adv()
                return
            if c == ",":
                self.adv()
                continue
            if c == "":
                return
            start = self.i
            sub = path + (idx,)
            span = self.value(sub)
            self.map.entries.setdefault(sub, Entry(key=span, value=span))
            idx += 1
            if self.i == start:  # garbage we cannot step over
                self.adv()

    def inline_table(self, path: Path) -> None:
        self.map.inline_tables.add(tuple(path))
        self.adv()  # {
        while self.i < self.n:
            self.skip_ws(newlines=True)
            c = self.peek()
            if c == "}":
                self.adv()
                return
            if c == ",":
                self.adv()
                continue
            if c == "":
                return
            if not self.keyval(path):
                self.adv()

    # -- statements --------------------------------------------------------------------------------
    def keyval(self, table: Path) -> bool:
        dk = self.dotted_key()
        if dk is None:
            return False
        parts, kspan = dk
        self.skip_ws()
        if self.peek() != "=":
            return False
        self.adv()
        self.skip_ws()
        full = table + tuple(parts)
        entry = Entry(key=kspan)
        if full in self.map.entries:
            self.map.duplicates.append((full, kspan))
        else:
            self.map.entries[full] = entry
        entry.value = self.value(full)
        return True

    def header(self) -> Path | None:
        l0, c0 = self.pos()
        aot = self.s.startswith("[[", self.i)
        self.adv(2 if aot else 1)
        dk = self.dotted_key()
        self.skip_ws()
        self.adv(2 if aot else 1)
        if dk is None:
            return None
        path = tuple(dk[0])
        span = Span(l0, c0, *self.pos())
        if aot:
            n = self.aot_counts.get(path, 0)
            self.aot_counts[path] = n + 1
            self.map.tables.setdefault(path, span)
            path = path + (n,)
            self.map.tables[path] = span
        else:
            if path in self.defined_tables:
                self.map.duplicates.append((path, span))
            else:
                self.defined_tables.add(path)
                self.map.tables[path] = span
        return path

    def run(self) -> SourceMap:
        table: Path = ()
        while self.i < self.n:
            self.skip_ws(newlines=True)
            if self.i >= self.n:
                break
            if self.peek() == "[":
                t = self.header()
                table = t if t is not None else table
            elif not self.keyval(table):
                self.skip_line()
                continue
            self.skip_line()
        return self.map


def scan(text: str) -> SourceMap:
    """Map every key path of a TOML document to its position; never raises."""
    try:
        return _Scanner(text).run()
    except Exception:  # noqa: BLE001 - positions are a convenience; validation goes on without them
        return SourceMap(lines=text.splitlines())
