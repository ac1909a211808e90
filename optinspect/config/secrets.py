"""Secrets in configs (API keys, tokens, passwords) never reach the output, in any format.

Two nets: the values found under secret-looking keys anywhere in the parsed document (any depth, quoted keys,
inline tables, arrays of tables) are redacted wherever they appear in a message, a hint or an echoed line; and
the echoed line itself is masked key by key, for files that do not parse (a syntax error elsewhere).
"""

from __future__ import annotations

import re
from typing import Any

MASK = "'***'"
# `auth` but not `author`; `key` alone is far too common (the optimizer's own keys) to count
SECRET_KEY = re.compile(r"api[_-]?key|token|secret|passw(?:or)?d|passphrase|credential|auth(?!or)|private[_-]?key",
                        re.I)
_PAIR = re.compile(r"""(?P<key>"(?:[^"\\]|\\.)*"|'[^']*'|[\w.-]+)\s*=\s*"""
                   r"""(?P<value>"(?:[^"\\]|\\.)*"?|'[^']*'?|[^,}\]\s#]+)""")
MIN_SECRET = 4  # shorter values ("", "no") would mask unrelated text


def is_secret_key(key: str) -> bool:
    return bool(SECRET_KEY.search(key))


def mask_line(line: str) -> str:
    """Hide the value of every `key = value` on a line whose key looks like a secret, wherever it stands."""
    def repl(m: re.Match) -> str:
        return f"{m.group('key')}{m.group(0)[len(m.group('key')):m.start('value') - m.start()]}{MASK}" \
            if is_secret_key(m.group("key").strip("\"'")) else m.group(0)

    return _PAIR.sub(repl, line)


def secret_values(data: Any) -> set[str]:
    """String (and number) values under secret-looking keys, at any depth of a parsed document."""
    found: set[str] = set()

    def walk(node: Any, secret: bool, depth: int) -> None:
        if depth > 64:
            return
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, secret or is_secret_key(str(k)), depth + 1)
        elif isinstance(node, list):
            for v in node:
                walk(v, secret, depth + 1)
        elif secret and isinstance(node, (str, int, float)) and not isinstance(node, bool):
            text = str(node)
            if len(text) >= MIN_SECRET:
                found.add(text)

    walk(data, False, 0)
    return found


def redact(text: str, values: set[str]) -> str:
    """Replace every occurrence of a secret value (longest first, so a prefix cannot leave a tail)."""
    for v in sorted(values, key=len, reverse=True):
        if v in text:
            text = text.replace(v, "***")
    return text
