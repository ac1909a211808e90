"""DeepSpeed ZeRO-1/2/3 checkpoints written by DeepSpeed itself on two CPU ranks: every parameter's moments rebuilt
from both ranks' partitions must equal what the unpartitioned (stage 0) run of the same training holds."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest

from optinspect.state.analyse import build_report
from optinspect.state.load import load_state

from ..conftest import ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    pytest.importorskip("deepspeed")
    out = tmp_path_factory.mktemp("zero")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DS_ACCELERATOR": "cpu"}
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "state" / "zero_fixture.py"), str(out), "2"],
                          capture_output=True, text=True, env=env, timeout=600)
    if proc.returncode != 0:
        pytest.fail(proc.stderr[-3000:])
    return out


def _reference(folder) -> dict:
    """The unpartitioned run's moments as DeepSpeed saved them (stage 0 keeps the torch optimizer's own
    state_dict, and the module's weights in parameter order), loaded with torch itself."""
    import torch

    states = next(folder.glob("global_step*/mp_rank_00_model_states.pt"))
    saved = torch.load(states, weights_only=False)
    names = [n for n, t in saved["module"].items() if t.is_floating_point()]
    rms = lambda t: t.double().pow(2).mean().sqrt().item()  # noqa: E731
    return {n: (rms(s["exp_avg"]), rms(s["exp_avg_sq"]), int(s["step"]), list(s["exp_avg"].shape))
            for n, s in zip(names, (saved["optimizer"]["state"][i] for i in range(len(names))), strict=True)}


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_zero_partitions_rebuild_the_unpartitioned_state(checkpoints, stage):
    reference = _reference(checkpoints / "stage0")
    report = build_report(load_state(str(checkpoints / f"stage{stage}")))
    assert f"ZeRO stage {stage}, 2 ranks" in report.layout and report.names_from == "param_shapes"
    got = {r.name: (r.first_rms, r.second_rms, r.step, r.shape) for r in report.params}
    assert list(got) == list(reference) == ["0.weight", "0.bias", "1.weight", "1.bias"]
    for name, (m, v, step, shape) in got.items():
        rm, rv, rstep, rshape = reference[name]
        assert shape == rshape and step == rstep == 3
        assert math.isclose(m, rm, rel_tol=1e-5) and math.isclose(v, rv, rel_tol=1e-5), (stage, name)


def test_stage0_is_named_from_the_module(checkpoints):
    report = build_report(load_state(str(checkpoints / "stage0")))
    assert [r.name for r in report.params] == list(_reference(checkpoints / "stage0"))


def test_one_rank_file_opens_the_whole_folder(checkpoints):
    folder = next((checkpoints / "stage2").glob("global_step*"))
    one = load_state(str(folder / "zero_pp_rank_1_mp_rank_00_optim_states.pt"))
    assert "2 ranks" in one.layout and len(one.params) == 4


def test_zero_checkpoints_in_json_and_diff(checkpoints, run_cli):
    import json

    rc, out, _ = run_cli("inspect", str(checkpoints / "stage3"), "--json")
    doc = json.loads(out)
    assert rc == 0 and [p["name"] for p in doc["params"]] == ["0.weight", "0.bias", "1.weight", "1.bias"]
    rc, out, _ = run_cli("diff", str(checkpoints / "stage1"), str(checkpoints / "stage3"), "--json")
    rows = json.loads(out)["params"]
    # the same training partitioned two ways: the same moments (to float reduction noise)
    assert rc == 0 and len(rows) == 4 and all(d["rel"] < 1e-5 for r in rows for d in r["drifts"])
