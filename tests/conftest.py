from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture
def run_cli(capsys):
    """Run the CLI in-process; returns (exit code, stdout, stderr). In-process, an exception would never print a
    traceback: the CLI's last resort turns it into one "unexpected" line, so that line fails the test here (every
    error a test provokes must be one the code names)."""
    from optinspect.cli import main

    def _run(*args: str, env: dict | None = None):
        old = {k: os.environ.get(k) for k in (env or {})}
        os.environ.update(env or {})
        try:
            rc = main(list(args))
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        out, err = capsys.readouterr()
        assert "optinspect: error: unexpected " not in err, err
        return rc, out, err

    return _run
