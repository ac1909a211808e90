"""The installed package: schemas found from a wheel, and the pre-commit hook run for real."""

import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from .conftest import EXAMPLES, ROOT


def _git_ok() -> bool:
    return shutil.which("git") is not None


@pytest.mark.slow
def test_wheel_ships_schemas_and_validates_outside_the_checkout(tmp_path):
    dist = tmp_path / "dist"
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist),
                           str(ROOT)], capture_output=True, text=True)
    if proc.returncode != 0:  # hatchling missing from this environment: build isolated instead
        proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(dist), str(ROOT)],
                              capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = dist.glob("optinspect-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "optinspect/_schemas/scorn.schema.json" in names and "optinspect/_schemas/config.schema.json" in names
    assert "optimizers/scorn.py" in names and not any(n.startswith("tests/") for n in names)
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    work = tmp_path / "elsewhere"
    work.mkdir()
    shutil.copy(EXAMPLES / "broken.toml", work / "c.toml")
    # deps come from this interpreter's site-packages; the checkout itself is not on the path
    env = {**os.environ, "PYTHONPATH": str(target)}
    code = ("import sys, optinspect.config.schemas as s; print(s.schema_dir());"
            "from optinspect.cli import main; sys.exit(main(['validate', '--format', 'json', 'c.toml']))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=work, env=env)
    assert run.returncode == 1, run.stderr[-2000:]
    assert str(target) in run.stdout.splitlines()[0]
    assert '"OPT102"' in run.stdout


@pytest.mark.slow
def test_pre_commit_hook_runs_from_this_repository(tmp_path):
    if not _git_ok() or shutil.which("pre-commit", path=os.path.dirname(sys.executable)) is None:
        pytest.skip("git or pre-commit not available")
    repo = tmp_path / "user-repo"
    repo.mkdir()
    env = {**os.environ, "PRE_COMMIT_HOME": str(tmp_path / "cache"), "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    git = ["git", "-c", "init.defaultBranch=main"]
    subprocess.run([*git, "init", "-q"], cwd=repo, check=True, env=env)
    shutil.copy(EXAMPLES / "chroma.toml", repo / "good.toml")
    (repo / "notes.txt").write_text("not toml\n")
    subprocess.run(["git", "add", "."], cwd=repo, check=True, env=env)
    pre_commit = os.path.join(os.path.dirname(sys.executable), "pre-commit")
    ok = subprocess.run([pre_commit, "try-repo", str(ROOT), "optinspect-validate", "--all-files"],
                        cwd=repo, capture_output=True, text=True, env=env, timeout=900)
    assert ok.returncode == 0, ok.stdout[-3000:] + ok.stderr[-3000:]
    assert "optinspect validate" in ok.stdout and "Passed" in ok.stdout
    shutil.copy(EXAMPLES / "broken.toml", repo / "bad.toml")
    subprocess.run(["git", "add", "."], cwd=repo, check=True, env=env)
    ko = subprocess.run([pre_commit, "try-repo", str(ROOT), "optinspect-validate", "--all-files"],
                        cwd=repo, capture_output=True, text=True, env=env, timeout=900)
    assert ko.returncode == 1, ko.stdout[-3000:]
    assert "Failed" in ko.stdout and "OPT102" in ko.stdout


def test_hook_installs_only_the_light_core():
    import tomlkit

    project = tomlkit.parse((ROOT / "pyproject.toml").read_text()).unwrap()["project"]
    core = {d.split(">")[0].split("=")[0].split("<")[0].strip().lower() for d in project["dependencies"]}
    assert core == {"tomlkit", "jsonschema", "rich"}
    text = (ROOT / ".pre-commit-hooks.yaml").read_text()
    assert "id: optinspect-validate" in text and "types: [toml]" in text and "additional_dependencies" not in text
