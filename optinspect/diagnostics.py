"""The one result type every engine returns and every renderer reads."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum


class Severity(str, Enum):
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"

    @property
    def rank(self) -> int:
        return {"error": 0, "warning": 1, "info": 2}[self.value]


@dataclass(frozen=True)
class Span:
    """A 1-based, end-exclusive region of a source file (end_column points past the last character)."""

    line: int
    column: int
    end_line: int
    end_column: int


@dataclass(frozen=True)
class Diagnostic:
    path: str
    line: int
    column: int
    end_line: int
    end_column: int
    severity: Severity
    code: str
    message: str
    hint: str = ""

    # the stable JSON field order (documented in README.md)
    FIELDS = ("path", "line", "column", "end_line", "end_column", "severity", "code", "message", "hint")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["severity"] = self.severity.value
        return {k: d[k] for k in self.FIELDS}

    @property
    def sort_key(self) -> tuple:
        return (self.path, self.line, self.column, self.severity.rank, self.code)


@dataclass
class FileReport:
    """What validating one file found; `source` keeps the text so renderers can quote lines."""

    path: str
    diagnostics: list[Diagnostic] = field(default_factory=list)
    source: str | None = None
    data: dict | None = None  # the parsed document (plain Python), when it parsed
    optimizer_type: str | None = None
    trainer: str | None = None  # the trainer profile it was judged by (None: either trainer)
    trainer_reason: str = ""  # why that profile: --trainer, or what in the table implies it
    suppressed: int = 0
    unreadable: bool = False
    secrets: set[str] = field(default_factory=set)  # values under secret-looking keys: never shown

    @property
    def errors(self) -> int:
        return sum(1 for d in self.diagnostics if d.severity is Severity.ERROR)

    @property
    def warnings(self) -> int:
        return sum(1 for d in self.diagnostics if d.severity is Severity.WARNING)
