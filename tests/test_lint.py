"""The code base stays ruff-clean (ruff is a test dependency)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT


def test_ruff_clean():
    exe = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if exe is None:
        pytest.skip("ruff not installed")
    proc = subprocess.run([exe, "check", "--output-format", "concise", "."], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:]


def test_the_suite_reads_nothing_outside_the_repository():
    """A clone has no ../shared: no test may need it (the golden data travels in tests/optimizers/golden_data)."""
    offenders = []
    for path in (ROOT / "tests").rglob("*.py"):
        if path.name == "golden_pack.py" or path == Path(__file__).resolve():  # the packer reads the handed-out copy
            continue
        text = path.read_text()
        if '"shared"' in text or "'shared'" in text or "../shared" in text or "parent.parent.parent" in text:
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_readme_speaks_to_users_not_to_the_tracker():
    """Issue numbers mean nothing to a user reading the README."""
    import re

    text = (ROOT / "README.md").read_text()
    assert not re.findall(r"\bissues? #?\d+|#\d{1,3}\b", text, flags=re.I)


def test_readme_states_the_severity_contract_of_the_registry():
    from optinspect.config.registry import SEVERITY_CONTRACT

    readme = (ROOT / "README.md").read_text()
    for severity, text in SEVERITY_CONTRACT.items():
        assert f"* **{severity.value}**: {text}" in readme, severity
