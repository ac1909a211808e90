from __future__ import annotations

import textwrap

from optinspect.config.validate import Options, validate_text


def diags(text: str, **opts):
    return validate_text("cfg.toml", textwrap.dedent(text), Options(**opts)).diagnostics


def codes(text: str, **opts) -> list[str]:
    return [d.code for d in diags(text, **opts)]


def find(text: str, code: str, **opts):
    return [d for d in diags(text, **opts) if d.code == code]
