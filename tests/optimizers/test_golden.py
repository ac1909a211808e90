"""Replay the originals' recorded gradients through our optimizers: every step must match bit for bit,
the final state too; and a save -> load -> continue in the middle must not change a bit."""

import io

import pytest
import torch

import optinspect

from . import golden as G

pytestmark = G.requires_golden
CASES = G.fp32_cases() or ["none"]


def _state_by_name(opt, params):
    return {n: opt.state[p] for n, p in zip(G.NAMES, params, strict=True) if p in opt.state}


@pytest.fixture(autouse=True)
def _single_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("case", CASES)
def test_trajectory_and_final_state_are_bit_identical(case):
    meta, gold = G.load(case)
    params = G.params_from(gold)
    opt = optinspect.build_optimizer(params, G.table(meta))
    for t in range(1, meta["n_steps"] + 1):
        G.set_grads(params, gold, t)
        opt.step()
        for n, p in zip(G.NAMES, params, strict=True):
            assert torch.equal(p.detach(), gold[f"param.{t}.{n}"]), f"{case}: {n} differs at step {t}"
    state = _state_by_name(opt, params)
    for key, want in gold.items():
        if not key.startswith("state."):
            continue
        rest = key[len("state."):]
        name = next(n for n in sorted(G.NAMES, key=len, reverse=True) if rest.startswith(n + "."))
        got = state[name][rest[len(name) + 1:]]
        if isinstance(got, torch.Tensor):
            assert got.dtype == want.dtype and got.shape == want.shape, key
            assert torch.equal(got, want), key
        else:
            assert float(got) == float(want.reshape(-1)[0]), key
    for key, want in gold.items():
        if key.startswith("group.0."):
            got = opt.param_groups[0][key[len("group.0."):]]
            got = float(got.reshape(-1)[0]) if isinstance(got, torch.Tensor) else float(got)
            assert got == float(want.reshape(-1)[0]), key


@pytest.mark.parametrize("case", CASES)
def test_save_load_continue_is_bit_identical(case):
    meta, gold = G.load(case)
    params = G.params_from(gold)
    opt = optinspect.build_optimizer(params, G.table(meta))
    for t in range(1, 11):
        G.set_grads(params, gold, t)
        opt.step()
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    resumed = [torch.nn.Parameter(p.detach().clone()) for p in params]
    opt2 = optinspect.build_optimizer(resumed, G.table(meta))
    opt2.load_state_dict(torch.load(buf, weights_only=True))
    for t in range(11, meta["n_steps"] + 1):
        G.set_grads(resumed, gold, t)
        opt2.step()
    for n, p in zip(G.NAMES, resumed, strict=True):
        assert torch.equal(p.detach(), gold[f"param.{meta['n_steps']}.{n}"]), f"{case}: {n}"


def test_check_parity_gate_passes():
    """The project gate, run as the checker ships it."""
    import subprocess
    import sys

    from ..conftest import GOLDEN, ROOT

    proc = subprocess.run([sys.executable, str(GOLDEN / "check_parity.py"), "--max-disp-rel", "5e-4", "--strict-state",
                           "--no-bf16"], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert " 0 fp32 cases pass" not in proc.stdout


@pytest.mark.parametrize("case", [c for c in CASES if c.startswith("persona")] or ["none"])
def test_persona_in_cache_slices_is_bit_identical(case, monkeypatch):
    """On CPU Persona runs its elementwise chain in slices (CPU_SLICE elements): with slices far smaller than
    the golden tensors (and ends that are not multiples of the slice) it must still match every bit."""
    import optinspect.optimizers._common

    monkeypatch.setattr(optinspect.optimizers._common, "CPU_SLICE", 64)
    test_trajectory_and_final_state_are_bit_identical(case)
