"""torchao's low-bit optimizer states (8-bit, 4-bit, fp8) read without torchao: each written by torchao itself,
and every figure checked against torchao's own `dequantize()`."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import warnings

import pytest
import torch

from optinspect.state.analyse import build_report
from optinspect.state.diff import diff_states
from optinspect.state.load import load_state

from ..conftest import ROOT

KINDS = {"8bit": ("AdamW8bit", "8-bit", "uint8"), "4bit": ("AdamW4bit", "4-bit", "uint4"),
         "fp8": ("AdamWFp8", "fp8", "float8_e4m3fn")}


def _ao():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pytest.importorskip("torchao.optim")


def _write(tmp_path, kind: str, steps: int):
    ao = _ao()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(128, 64), torch.nn.Linear(64, 8))
    opt = getattr(ao, KINDS[kind][0])(model.parameters(), lr=1e-3)
    for _ in range(steps):
        model(torch.randn(4, 128)).square().mean().backward()
        opt.step()
        opt.zero_grad()
    path = tmp_path / f"{kind}_{steps}.pt"
    torch.save(opt.state_dict(), path)
    return path, opt.state_dict()


def _rms(t) -> float:
    t = t.dequantize() if hasattr(t, "dequantize") else t
    return t.double().pow(2).mean().sqrt().item()


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_figures_equal_torchaos_own_dequantization(kind, tmp_path):
    path, sd = _write(tmp_path, kind, 3)
    report = build_report(load_state(str(path)))
    big = report.params[0]
    assert big.family == f"torchao AdamW ({KINDS[kind][1]})" and report.steps == [3]
    assert {t.dtype for t in big.tensors if t.key in ("exp_avg", "exp_avg_sq")} == {KINDS[kind][2]}
    for row in report.params:
        own = sd["state"][row.index]
        assert math.isclose(row.first_rms, _rms(own["exp_avg"]), rel_tol=1e-5), (kind, row.name)
        assert math.isclose(row.second_rms, _rms(own["exp_avg_sq"]), rel_tol=1e-5), (kind, row.name)
    assert big.quant_rel_error and big.quant_rel_error > 0
    # bytes as stored: codes (half a byte for 4-bit) and scales, not the float32 they stand for
    first = next(t for t in big.tensors if t.key == "exp_avg")
    assert first.bytes < 64 * 128 * (1.2 if kind != "4bit" else 0.7)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_json_and_diff_work_on_torchao_states(kind, tmp_path, run_cli):
    a, _ = _write(tmp_path, kind, 3)
    b, sd = _write(tmp_path, kind, 5)
    rc, out, _ = run_cli("inspect", str(a), "--json")
    assert rc == 0 and json.loads(out)["family"] == f"Adam/AdamW, torchao AdamW ({KINDS[kind][1]})"
    d = diff_states(load_state(str(a)), load_state(str(b)))
    row = d.params[0]
    assert row.step_a == 3 and row.step_b == 5 and all(math.isfinite(x.rel) for x in row.drifts)


def test_reading_never_imports_torchao(tmp_path):
    path, _ = _write(tmp_path, "8bit", 2)
    code = ("import sys; from optinspect.state.load import load_state; from optinspect.state.analyse import "
            f"build_report; r = build_report(load_state({str(path)!r})); "
            "print(r.params[0].family, 'torchao' in sys.modules)")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "torchao AdamW (8-bit) False"
