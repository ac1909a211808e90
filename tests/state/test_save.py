"""Saving a state: never over a user's file unless asked, no temporary left behind, flushed, mode from the
umask, a clean message on a full disk, and .safetensors files that safetensors itself reads (without numpy)."""

import os
import signal
import subprocess
import sys

import pytest
import torch

from optinspect.state import save as S

from ..conftest import EXAMPLES, ROOT


def _state():
    p = torch.nn.Parameter(torch.randn(4, 3))
    opt = torch.optim.AdamW([p])
    p.grad = torch.randn(4, 3)
    opt.step()
    return opt.state_dict()


def _leftovers(folder) -> list[str]:
    return [n for n in os.listdir(folder) if n.startswith(".optinspect-")]


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_a_file_that_appears_meanwhile_is_never_replaced(tmp_path, monkeypatch, suffix):
    """Two saves to one name: the exists check passes for both, the one publishing second loses cleanly."""
    target = tmp_path / f"race{suffix}"
    real = S._publish

    def other_process_wins(tmp, path, force):
        with open(path, "w") as fh:
            fh.write("the other run's file")
        real(tmp, path, force)

    monkeypatch.setattr(S, "_publish", other_process_wins)
    with pytest.raises(S.SaveError, match="exists"):
        S.save(str(target), _state(), ["p"], {}, optimizer_type="adamw")
    assert target.read_text() == "the other run's file" and _leftovers(tmp_path) == []


def test_force_replaces_and_the_mode_follows_the_umask(tmp_path):
    target = tmp_path / "s.pt"
    target.write_text("old")
    old = os.umask(0o027)
    try:
        S.save(str(target), _state(), ["p"], {}, optimizer_type="adamw", force=True)
    finally:
        os.umask(old)
    assert (target.stat().st_mode & 0o777) == 0o640
    assert "state" in torch.load(target, weights_only=True)["optimizer"]


def test_a_full_disk_is_a_clean_error_and_leaves_nothing(tmp_path, monkeypatch):
    def full(obj, fh):
        fh.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    monkeypatch.setattr(S.torch, "save", full)
    with pytest.raises(S.SaveError, match="no space left on the device"):
        S.save(str(tmp_path / "s.pt"), _state(), ["p"], {}, optimizer_type="adamw")
    assert os.listdir(tmp_path) == []


def test_sigterm_while_saving_removes_the_temporary_file(tmp_path):
    code = f"""
import os, signal, sys, time, torch
sys.path.insert(0, {str(ROOT)!r})
from optinspect.state import save as S
def slow(obj, fh):
    fh.write(b"x" * 1000)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(30)
S.torch.save = slow
p = torch.nn.Parameter(torch.ones(2)); opt = torch.optim.SGD([p], lr=1.0)
try:
    S.save(sys.argv[1], opt.state_dict(), ["p"], {{}}, optimizer_type="sgd")
except KeyboardInterrupt:
    sys.exit(143)
"""
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "s.pt")], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 143, proc.stderr[-2000:]
    assert os.listdir(tmp_path) == []
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # this process's handlers were never touched


def test_safetensors_written_here_are_read_by_safetensors_itself(tmp_path):
    from safetensors import safe_open

    sd = _state()
    S.save(str(tmp_path / "s.safetensors"), sd, ["layer.weight"], {"status": "healthy"}, optimizer_type="adamw")
    with safe_open(str(tmp_path / "s.safetensors"), framework="pt") as f:
        keys = set(f.keys())
        assert {"state.layer.weight.exp_avg", "state.layer.weight.exp_avg_sq", "state.layer.weight.step"} <= keys
        assert torch.equal(f.get_tensor("state.layer.weight.exp_avg"), sd["state"][0]["exp_avg"])
        assert f.metadata()["optimizer_type"] == "adamw"


def test_dry_run_saves_safetensors_without_numpy(tmp_path):
    """`.[all]` does not install numpy, which safetensors' own writer needs."""
    code = ("import sys; sys.modules['numpy'] = None; sys.path.insert(0, sys.argv[1]); from optinspect.cli import main;"
            "sys.exit(main(['dry-run', sys.argv[2], '--steps', '2', '--save', sys.argv[3]]))")
    out = tmp_path / "s.safetensors"
    proc = subprocess.run([sys.executable, "-c", code, str(ROOT), str(EXAMPLES / "chroma.toml"), str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    from safetensors.torch import load_file

    assert any(k.endswith(".step") for k in load_file(str(out)))
