"""`optinspect resume` against real resumes: a state saved by each optimizer, the config changed, and the resume done
the way the trainers do it (the optimizer built from the new config, the saved state loaded into it, the param
groups put back for --reset_optimizer_params, force_constant_lr applied, then steps). What `resume` predicted (the
lr of the first step, whether and how it fails, the step of the next reset) must be what happened."""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch

from optinspect.resume import plan

from . import trainer_oracle as oracle

SHAPES = [(8, 16), (8,)]


def _params(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g) * 0.1) for s in SHAPES]


def _step(opt, params, g) -> None:
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)
    opt.step()


def _build(text: str, params, trainer: str = "chroma"):
    import toml

    config = json.loads(json.dumps(toml.loads(text)))
    table = config["optimizer"]
    kwargs = {k: v for k, v in table.items() if k not in ("type", "gradient_release", "beta2_half_life")}
    return config, oracle._klass(table["type"], trainer)(params, **kwargs)


def _save(tmp_path, text: str, steps: int):
    params = _params()
    _, opt = _build(text, params)
    g = torch.Generator().manual_seed(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(steps):
            _step(opt, params, g)
    path = tmp_path / "optimizer.pt"
    torch.save(opt.state_dict(), path)
    return path


def _resets(opt) -> int:
    st = opt.state[opt.param_groups[0]["params"][0]]
    return int(st.get("times_zero", st.get("times_reset", 0)))


def trainer_resume(text: str, state_path, *, saved_steps: int, reset_params: bool = False, horizon: int = 0) -> dict:
    """The resume as the trainers do it; returns the lr of the first step, the error, the step of the next reset."""
    params = _params(seed=5)
    config, opt = _build(text, params)
    groups = [{k: copy.deepcopy(v) for k, v in g.items() if k != "params"} for g in opt.param_groups]
    out = {"lr": None, "error": None, "reset_at": None}
    try:
        opt.load_state_dict(torch.load(state_path, weights_only=True))
    except (ValueError, KeyError, RuntimeError) as e:
        out["error"] = type(e).__name__
        return out
    if reset_params:  # upstream: optimizer.param_groups = the config's (the state stays)
        for g, mine in zip(opt.param_groups, groups, strict=True):
            g.update(mine)
    if "force_constant_lr" in config:
        for g in opt.param_groups:
            g["lr"] = config["force_constant_lr"]
    torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0)
    out["lr"] = opt.param_groups[0]["lr"]
    g = torch.Generator().manual_seed(2)
    before = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for k in range(1, max(horizon, 1) + 1):
            try:
                before = _resets(opt) if before is None else before
                _step(opt, params, g)
            except (KeyError, RuntimeError, ValueError, TypeError) as e:
                out["error"] = type(e).__name__
                return out
            if horizon and _resets(opt) > before:
                out["reset_at"] = saved_steps + k
                break
    return out


def _codes(file_report) -> dict[str, str]:
    return {d.code: d.severity.value for d in file_report.diagnostics}


def _write(tmp_path, name: str, text: str):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


TABLES = {
    "scorn": "[optimizer]\ntype = 'scorn'\nlr = 1e-4\nreset_interval = 40\nreset_increment = 10\n",
    "remaster": "[optimizer]\ntype = 'remaster'\nlr = 1e-4\nreset_interval = 25\n",
    "persona": "[optimizer]\ntype = 'persona'\nlr = 1e-4\nreset_interval = 30\n",
    "adafactor": "[optimizer]\ntype = 'adafactor'\nlr = 1e-4\nrelative_step = false\nscale_parameter = false\n",
    "Prodigy": "[optimizer]\ntype = 'Prodigy'\nlr = 1.0\nsafeguard_warmup = true\nbias_correction = true\n",
    "adamw": "[optimizer]\ntype = 'adamw'\nlr = 1e-4\nweight_decay = 0.01\n",
    "sgd": "[optimizer]\ntype = 'sgd'\nlr = 1e-3\nmomentum = 0.9\n",
    "adamw8bit": "[optimizer]\ntype = 'adamw8bit'\nlr = 1e-4\nmin_8bit_size = 16\n",
    "AdamW8bitKahan": "[optimizer]\ntype = 'AdamW8bitKahan'\nlr = 1e-4\nstabilize = false\nmin_8bit_size = 16\n",
}


@pytest.mark.parametrize("name", sorted(TABLES))
def test_unchanged_config_resumes_without_alarm(name, tmp_path):
    text = TABLES[name]
    state = _save(tmp_path, text, 12)
    config = _write(tmp_path, "c.toml", text)
    file_report, report = plan(config, str(state))
    assert not [d for d in file_report.diagnostics if d.severity.value != "info"], file_report.diagnostics
    real = trainer_resume(text, state, saved_steps=12)
    assert real["error"] is None and report.outcome == "loads"
    assert report.lr_first_step == real["lr"]
    # SGD keeps no step, Persona's starts again at each reset: where the run is comes from the trainer then
    assert report.resumes_at_step == (None if name in ("sgd", "persona") else 13)


@pytest.mark.parametrize("name", ["scorn", "remaster", "persona"])
def test_next_reset_is_when_the_resumed_run_resets(name, tmp_path):
    text = TABLES[name]
    state = _save(tmp_path, text, 57)  # past the first reset, inside the second period
    # the config's changed schedule is ignored: the saved groups win
    changed = text.replace("reset_interval = ", "reset_interval = 1")
    file_report, report = plan(_write(tmp_path, "c.toml", changed), str(state))
    real = trainer_resume(changed, state, saved_steps=57, horizon=200)
    assert real["reset_at"] is not None and report.reset_in == real["reset_at"] - 57
    assert report.next_reset == (None if name == "persona" else real["reset_at"])
    assert _codes(file_report).get("OPT611") == "error"  # reset_interval ignored


def test_a_lowered_lr_is_ignored_unless_forced_or_reset(tmp_path):
    text = TABLES["adamw"]
    state = _save(tmp_path, text, 5)
    lowered = text.replace("lr = 1e-4", "lr = 2e-5")
    file_report, report = plan(_write(tmp_path, "a.toml", lowered), str(state))
    real = trainer_resume(lowered, state, saved_steps=5)
    assert report.lr_first_step == real["lr"] == pytest.approx(1e-4) and _codes(file_report)["OPT611"] == "error"

    forced = "force_constant_lr = 3e-5\n" + lowered
    file_report, report = plan(_write(tmp_path, "b.toml", forced), str(state))
    real = trainer_resume(forced, state, saved_steps=5)
    assert report.lr_first_step == real["lr"] == pytest.approx(3e-5) and "OPT611" not in _codes(file_report)

    file_report, report = plan(_write(tmp_path, "c.toml", lowered), str(state), trainer="upstream",
                               reset_optimizer_params=True)
    real = trainer_resume(lowered, state, saved_steps=5, reset_params=True)
    assert report.lr_first_step == real["lr"] == pytest.approx(2e-5) and "OPT611" not in _codes(file_report)


def test_prodigy_keeps_its_saved_settings(tmp_path):
    text = TABLES["Prodigy"]
    state = _save(tmp_path, text, 4)
    changed = text + "d0 = 1e-5\n"
    file_report, _ = plan(_write(tmp_path, "c.toml", changed), str(state))
    assert _codes(file_report).get("OPT611") == "error"
    params = _params()
    _, opt = _build(changed, params)
    opt.load_state_dict(torch.load(state, weights_only=True))
    assert opt.param_groups[0]["d0"] == 1e-6  # what the resumed run uses: the saved value, as predicted


@pytest.mark.parametrize("saved,resumed", [("adamw", "scorn"), ("scorn", "adamw"), ("sgd", "adamw"),
                                           ("adafactor", "persona")])
def test_a_state_of_another_optimizer_fails_as_predicted(saved, resumed, tmp_path):
    state = _save(tmp_path, TABLES[saved], 3)
    file_report, report = plan(_write(tmp_path, "c.toml", TABLES[resumed]), str(state))
    real = trainer_resume(TABLES[resumed], state, saved_steps=3)
    assert _codes(file_report).get("OPT610") == "error"
    assert real["error"] == "KeyError" and report.outcome == "fails at the first step"


def test_cli_exit_codes_and_json(run_cli, tmp_path):
    state = _save(tmp_path, TABLES["scorn"], 3)
    same = _write(tmp_path, "same.toml", TABLES["scorn"])
    assert run_cli("resume", same, str(state))[0] == 0
    changed = _write(tmp_path, "changed.toml", TABLES["scorn"].replace("lr = 1e-4", "lr = 1e-5"))
    rc, out, _ = run_cli("resume", changed, str(state), "--format", "json")
    doc = json.loads(out)
    assert rc == 1 and doc["schema"] == "optinspect-resume/1" and doc["lr_first_step"] == pytest.approx(1e-4)
    assert [f["code"] for f in doc["findings"] if f["severity"] == "error"] == ["OPT611"]
    rc, _, err = run_cli("resume", changed, str(tmp_path / "missing.pt"))
    assert rc == 2 and "no such file" in err
    rc, _, err = run_cli("resume", same, str(state), "--reset-optimizer", "--trainer", "chroma")
    assert rc == 2 and "upstream" in err


@pytest.mark.parametrize("shapes,error", [([(8, 16), (8,), (4,)], "ValueError"), ([(8, 32), (8,)], "RuntimeError")])
def test_a_changed_model_fails_where_predicted(shapes, error, tmp_path):
    """A LoRA rank or target change: another number of tensors fails in load_state_dict, other shapes at the first
    step."""
    from safetensors.torch import save_file

    state = _save(tmp_path, TABLES["adamw"], 3)
    model = tmp_path / "model.safetensors"
    save_file({f"t{i}": torch.zeros(s) for i, s in enumerate(shapes)}, str(model))
    file_report, report = plan(_write(tmp_path, "c.toml", TABLES["adamw"]), str(state), model=str(model))
    assert _codes(file_report).get("OPT613") == "error"
    params = [torch.nn.Parameter(torch.randn(s) * 0.1) for s in shapes]
    _, opt = _build(TABLES["adamw"], params)
    with pytest.raises((ValueError, RuntimeError)) as e:
        opt.load_state_dict(torch.load(state, weights_only=True))
        _step(opt, params, torch.Generator().manual_seed(0))
    assert type(e.value).__name__ == error
    assert report.outcome == ("fails at load" if error == "ValueError" else "fails at the first step")
