"""The installed package: schemas found from a wheel, and the pre-commit hook run for real."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from .conftest import EXAMPLES, ROOT


def _git_ok() -> bool:
    return shutil.which("git") is not None


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist),
                           str(ROOT)], capture_output=True, text=True)
    if proc.returncode != 0:  # hatchling missing from this environment: build isolated instead
        proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(dist), str(ROOT)],
                              capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (built,) = dist.glob("optinspect-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """The wheel installed into a folder of its own (the checkout is never on the path of what runs from it)."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    return target


@pytest.mark.slow
def test_wheel_installs_one_top_level_name_and_its_licence(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    dist_info = {t for t in tops if t.endswith(".dist-info")}
    assert tops - dist_info == {"optinspect"}, tops
    assert "optinspect/optimizers/scorn.py" in names and "optinspect/_schemas/config.schema.json" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: MIT" in meta


@pytest.mark.slow
def test_wheel_ships_schemas_and_validates_outside_the_checkout(installed, tmp_path):
    work = tmp_path / "elsewhere"
    work.mkdir()
    shutil.copy(EXAMPLES / "broken.toml", work / "c.toml")
    # deps come from this interpreter's site-packages; the checkout itself is not on the path
    env = {**os.environ, "PYTHONPATH": str(installed)}
    code = ("import sys, optinspect.config.schemas as s; print(s.schema_dir());"
            "from optinspect.cli import main; sys.exit(main(['validate', '--format', 'json', 'c.toml']))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=work, env=env)
    assert run.returncode == 1, run.stderr[-2000:]
    assert str(installed) in run.stdout.splitlines()[0]
    assert '"OPT102"' in run.stdout


def _trainer_checkout(root: Path) -> Path:
    """A diffusion-pipe-like checkout: `optimizers/` without __init__.py (a namespace package) holding modules of
    the trainer's own, among them one whose name ours share."""
    (root / "optimizers").mkdir(parents=True)
    for mod in ("automagic", "generic_optim", "gradient_release", "adamw_8bit"):
        (root / "optimizers" / f"{mod}.py").write_text(f"WHO = 'trainer:{mod}'\n")
    return root


@pytest.mark.slow
def test_installed_wheel_leaves_a_trainers_optimizers_alone(installed, tmp_path):
    """With optinspect installed, a trainer run from its checkout imports its own optimizer modules, and
    optinspect (imported in the same process, as a dry-run inside the trainer's venv would) builds its own."""
    trainer = _trainer_checkout(tmp_path / "diffusion-pipe")
    (trainer / "train.py").write_text(
        "from optimizers import adamw_8bit, automagic, generic_optim, gradient_release\n"
        "print(adamw_8bit.WHO, automagic.WHO, generic_optim.WHO, gradient_release.WHO)\n"
        "import torch, optinspect\n"
        "opt = optinspect.build_optimizer([torch.nn.Parameter(torch.ones(3))], {'type': 'AdamW8bitKahan', 'lr': 1e-4})\n"
        "print(type(opt).__module__)\n"
        "from optimizers import adamw_8bit\n"
        "print(adamw_8bit.WHO)\n")
    # PYTHONPATH comes after the script's folder, as site-packages does
    run = subprocess.run([sys.executable, "train.py"], capture_output=True, text=True, cwd=trainer,
                         env={**os.environ, "PYTHONPATH": str(installed)})
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split() == ["trainer:adamw_8bit", "trainer:automagic", "trainer:generic_optim",
                                  "trainer:gradient_release", "optinspect.optimizers.adamw_8bit", "trainer:adamw_8bit"]


def test_repository_optimizers_folder_is_a_drop_in_for_a_trainer(tmp_path):
    """The top-level optimizers/ folder copied over a trainer's files works there under the trainer's import
    paths, and gives the same bits and state_dict as the installed package (checkpoints move both ways)."""
    trainer = _trainer_checkout(tmp_path / "trainer")
    for f in (ROOT / "optimizers").glob("*.py"):
        shutil.copy(f, trainer / "optimizers" / f.name)
    code = """
import io, sys, torch
sys.path.insert(0, sys.argv[1])
from optimizers.scorn import SCORN
from optimizers.prodigy import Prodigy
from optimizers import automagic
import optinspect.optimizers as ours
assert automagic.WHO == "trainer:automagic"
for Drop, Ours in ((SCORN, ours.SCORN), (Prodigy, ours.Prodigy)):
    assert Drop.__module__.startswith("optimizers.") and Drop is not Ours
    torch.manual_seed(0)
    a, b = (torch.nn.Parameter(torch.randn(8, 8)) for _ in range(2))
    b.data.copy_(a.data)
    oa, ob = Drop([a], lr=1e-2), Ours([b], lr=1e-2)
    for _ in range(3):
        g = torch.randn(8, 8)
        a.grad, b.grad = g.clone(), g.clone()
        oa.step(); ob.step()
    assert torch.equal(a, b)
    buf = io.BytesIO(); torch.save(oa.state_dict(), buf); buf.seek(0)
    ob.load_state_dict(torch.load(buf, weights_only=True))
print("ok")
"""
    run = subprocess.run([sys.executable, "-c", code, str(trainer)], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-3000:]


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
