"""dry-run end to end: every bundled optimizer, both dtypes, shapes from a checkpoint header, saving, exits."""

import json
import math

import pytest
import torch

from .conftest import EXAMPLES

TABLES = {
    "adafactor": "type = 'adafactor'\nlr = 1e-3\nscale_parameter = false\nrelative_step = false\nbeta1 = 0.9",
    "scorn": "type = 'scorn'\nlr = 1e-3\nweight_decay = 0.01\nfocus_ratio = 0.1",
    "remaster": "type = 'remaster'\nlr = 1e-3\nweight_decay = 0.01",
    "persona": "type = 'persona'\nlr = 1e-3\nfocus_boost = 0.05",
    "AdamW8bitKahan": "type = 'AdamW8bitKahan'\nlr = 1e-3\nweight_decay = 0.0\nstabilize = false",
    "Prodigy": "type = 'Prodigy'\nsafeguard_warmup = true\nbias_correction = true",
    "adamw": "type = 'adamw'\nlr = 1e-3",
}


def write(tmp_path, body, dtype="float32", adapter=False, extra=""):
    adapter_table = f"[adapter]\ntype = 'lora'\nrank = 4\ndtype = '{dtype}'\n" if adapter else ""
    p = tmp_path / "cfg.toml"
    p.write_text(f"{extra}[model]\ndtype = '{dtype}'\n{adapter_table}[optimizer]\n{body}\n")
    return str(p)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("name", sorted(TABLES))
def test_every_optimizer_steps_and_state_matches_its_layout(run_cli, tmp_path, name, dtype):
    rc, out, err = run_cli("dry-run", write(tmp_path, TABLES[name], dtype), "--steps", "4", "--json")
    assert rc == 0, err
    rep = json.loads(out)
    assert rep["status"] == "healthy" and rep["dtype"] == dtype and len(rep["steps"]) == 4
    assert all(s["nonfinite"] == 0 and s["update_rms"] > 0 for s in rep["steps"])
    assert rep["state_bytes_measured"] == rep["state_bytes_predicted"] > 0
    assert rep["optimizer_file"].endswith((".py",)) and ("optimizers" in rep["optimizer_file"] or name == "adamw")
    kinds = {len(t["shape"]) for t in rep["tensors"]}
    assert {1, 2, 4} <= kinds  # vectors, matrices, a conv kernel


def test_lora_config_steps_only_the_adapter(run_cli, tmp_path):
    rc, out, _ = run_cli("dry-run", write(tmp_path, TABLES["scorn"], "bfloat16", adapter=True), "--steps", "2", "--json")
    rep = json.loads(out)
    assert rc == 0 and all("lora_" in t["name"] for t in rep["tensors"])
    assert rep["dtype"] == "bfloat16"


def test_bytes_per_parameter_reflect_the_state_layout(run_cli, tmp_path):
    per = {}
    for name in ("adamw", "Prodigy", "AdamW8bitKahan"):
        rc, out, _ = run_cli("dry-run", write(tmp_path, TABLES[name]), "--steps", "1", "--json")
        per[name] = json.loads(out)["bytes_per_param"]
    assert per["adamw"] == pytest.approx(8.0, abs=0.01)  # two fp32 moments (+ scalar steps)
    assert per["Prodigy"] == pytest.approx(16.0, abs=0.01)  # s, p0, exp_avg, exp_avg_sq
    assert 6.0 < per["AdamW8bitKahan"] < 6.2  # 2 uint8 moments + fp32 Kahan buffer + per-block absmax


def test_shapes_from_reads_only_the_header(run_cli, tmp_path):
    from safetensors.torch import save_file

    model = tmp_path / "model.safetensors"
    save_file({"blocks.0.attn.qkv.weight": torch.zeros(3072, 1024, dtype=torch.bfloat16),
               "blocks.0.norm.scale": torch.zeros(1024, dtype=torch.bfloat16),
               "patch.weight": torch.zeros(64, 16, 2, 2, dtype=torch.bfloat16)}, str(model))
    cfg = write(tmp_path, TABLES["AdamW8bitKahan"], "bfloat16", adapter=False)
    rc, out, err = run_cli("dry-run", cfg, "--shapes-from", str(model), "--max-params", "200000", "--steps", "2",
                           "--json")
    assert rc == 0, err
    rep = json.loads(out)
    fm = rep["full_model"]
    n = 3072 * 1024 + 1024 + 64 * 16 * 4
    assert fm["parameters"] == n and fm["trained_parameters"] == n
    # hand-derived: 8-bit moments (2 B) + bf16 Kahan buffer (2 B) + absmax per 256 elements; small tensors fp32
    qkv = 2 * 3072 * 1024 + 8 * math.ceil(3072 * 1024 / 256) + 2 * 3072 * 1024
    norm = 8 * 1024 + 2 * 1024
    patch = 8 * 4096 // 256 + 2 * 4096 + 2 * 4096
    assert fm["predicted_gib"] == pytest.approx((qkv + norm + patch) / 2**30)
    assert fm["adamw_fp32_gib"] == pytest.approx(8 * n / 2**30)
    assert sum(math.prod(t["shape"]) for t in rep["tensors"]) <= 200_000
    assert any("scaled from" in t["note"] for t in rep["tensors"])


def test_shapes_from_lora_counts_adapter_parameters(run_cli, tmp_path):
    from safetensors.torch import save_file

    model = tmp_path / "model.safetensors"
    save_file({"a.weight": torch.zeros(512, 256), "b.bias": torch.zeros(512)}, str(model))
    rc, out, _ = run_cli("dry-run", write(tmp_path, TABLES["adamw"], adapter=True), "--shapes-from", str(model),
                         "--steps", "1", "--json")
    fm = json.loads(out)["full_model"]
    assert fm["lora_rank"] == 4 and fm["trained_parameters"] == 4 * 256 + 512 * 4


def test_compare_fp32_reports_drift_for_bf16_and_none_for_fp32(run_cli, tmp_path):
    rc, out, _ = run_cli("dry-run", write(tmp_path, TABLES["persona"], "bfloat16"), "--steps", "5", "--compare-fp32",
                         "--json")
    drift = json.loads(out)["drift"]
    assert rc == 0 and drift and any(d["drift_rel"] > 0 for d in drift)
    rc, out, _ = run_cli("dry-run", write(tmp_path, TABLES["persona"], "float32"), "--steps", "5", "--compare-fp32",
                         "--json")
    assert all(d["drift_rel"] == 0 for d in json.loads(out)["drift"])  # same math, same numbers
    rc, out, _ = run_cli("dry-run", write(tmp_path, TABLES["AdamW8bitKahan"].replace("\n", "\nmin_8bit_size = 256\n", 1)),
                         "--steps", "5", "--compare-fp32", "--json")
    assert any(d["drift_rel"] > 0 for d in json.loads(out)["drift"])  # the measured cost of 8-bit moments


def test_compare_fp32_says_when_low_precision_loses_the_updates(run_cli, tmp_path):
    """SGD at lr 1e-4 moves each weight by lr * grad, far below half a float16 ulp of weights of size ~0.02-1
    (7.6e-6 at 0.02): in float16 nothing moves, so each tensor's drift is exactly its float32 movement (1.0)."""
    rc, out, _ = run_cli("dry-run", write(tmp_path, "type = 'sgd'\nlr = 1e-4", "float16"), "--steps", "3",
                         "--compare-fp32", "--json")
    rep = json.loads(out)
    n = len(rep["drift"])
    assert rc == 0 and rep["status"] == "healthy" and all(d["drift_rel"] == 1.0 for d in rep["drift"])
    assert len(rep["notes"]) == 1 and rep["notes"][0].startswith(f"{n} of {n} tensors strayed")
    assert f"{n} did not move at all" in rep["notes"][0] and "float16" in rep["notes"][0]
    rc, out, _ = run_cli("dry-run", write(tmp_path, "type = 'sgd'\nlr = 1e-4", "float16"), "--steps", "3",
                         "--compare-fp32", env={"NO_COLOR": "1"})
    assert rc == 0 and f"note: {n} of {n} tensors strayed" in out
    rc, out, _ = run_cli("dry-run", write(tmp_path, "type = 'sgd'\nlr = 1e-4", "float32"), "--steps", "3",
                         "--compare-fp32", "--json")
    assert json.loads(out)["notes"] == []  # same math in float32: no drift, nothing to say


def test_prodigy_upcast_is_a_dry_run_option_not_a_config_key(run_cli, tmp_path):
    """Prodigy on bf16 weights computes in bf16 as the trainer's class does: its first updates (d0 = 1e-6) are
    below bf16's resolution and nearly all lost; --upcast runs ours in fp32 with stochastic rounding, which keeps
    them on average: the weights move two orders of magnitude more."""
    cfg = write(tmp_path, TABLES["Prodigy"], "bfloat16")
    moved = {}
    for flag in ((), ("--upcast",)):
        rc, out, _ = run_cli("dry-run", cfg, "--steps", "3", "--json", *flag)
        rep = json.loads(out)
        assert rc == 0 and rep["optimizer_class"].endswith("prodigy.Prodigy")
        moved[flag] = rep["steps"][0]["update_rms"]
    assert moved[("--upcast",)] > 20 * moved[()]
    rc, _, err = run_cli("dry-run", write(tmp_path, TABLES["scorn"]), "--upcast")
    assert rc == 2 and "not an option of optinspect's scorn" in err and "Prodigy (upcast)" in err


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_save_round_trip_and_no_overwrite(run_cli, tmp_path, suffix):
    target = tmp_path / f"state{suffix}"
    cfg = write(tmp_path, TABLES["scorn"])
    rc, _, err = run_cli("dry-run", cfg, "--steps", "3", "--save", str(target))
    assert rc == 0 and target.exists(), err
    if suffix == ".pt":
        blob = torch.load(target, weights_only=True)
        assert blob["format"] == "optinspect-state/1" and len(blob["param_names"]) == len(blob["optimizer"]["state"])
        assert json.loads(blob["report"])["status"] == "healthy"
    else:
        from safetensors import safe_open

        with safe_open(str(target), "pt") as f:
            keys = list(f.keys())
            meta = f.metadata()
        assert meta["format"] == "optinspect-state/1" and any(k.endswith(".ema_squared") for k in keys)
    before = target.read_bytes()
    rc, _, err = run_cli("dry-run", cfg, "--steps", "3", "--save", str(target))
    assert rc == 2 and "--force" in err and target.read_bytes() == before
    rc, _, _ = run_cli("dry-run", cfg, "--steps", "2", "--save", str(target), "--force")
    assert rc == 0 and target.read_bytes() != before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".optinspect-")] == []


def test_exit_status_non_finite_and_diverged(run_cli, tmp_path):
    rc, out, _ = run_cli("dry-run", write(tmp_path, "type = 'adamw'\nlr = 1e35"), "--steps", "10", "--json")
    rep = json.loads(out)
    assert rc == 1 and rep["status"] == "non-finite"
    rc, out, err = run_cli("dry-run", write(tmp_path, "type = 'adamw'\nlr = 1e38"), "--steps", "10", "--json")
    rep = json.loads(out)
    assert rc == 1 and rep["status"] == "crashed" and "overflow" in rep["message"]
    rc, out, _ = run_cli("dry-run", write(tmp_path, "type = 'sgd'\nlr = 3e4"), "--steps", "10", "--json")
    rep = json.loads(out)
    assert rc == 1 and rep["status"] == "non-finite"  # x1e4 per step: past float32 by step 10
    rc, out, _ = run_cli("dry-run", write(tmp_path, "type = 'sgd'\nlr = 30"), "--steps", "5", "--json")
    rep = json.loads(out)
    assert rc == 1 and rep["status"] == "diverged" and "loss rose from" in rep["message"]


def test_config_and_input_errors_exit_2(run_cli, tmp_path):
    rc, _, err = run_cli("dry-run", str(EXAMPLES / "broken.toml"))
    assert rc == 2 and "OPT102" in err
    rc, _, err = run_cli("dry-run", write(tmp_path, "type = 'adamw_optimi'\nlr = 1e-4"))
    assert rc == 2 and "not bundled" in err
    rc, _, err = run_cli("dry-run", write(tmp_path, TABLES["adamw"]), "--device", "nosuchdevice")
    assert rc == 2 and "device" in err
    rc, _, err = run_cli("dry-run", write(tmp_path, TABLES["adamw"]), "--shapes-from", str(tmp_path / "missing"))
    assert rc == 2 and "cannot read --shapes-from" in err and "No such file" in err and "Errno" not in err
    for flag, value in (("--steps", "0"), ("--steps", "-3"), ("--max-params", "0"), ("--steps", "ten")):
        rc, _, err = run_cli("dry-run", write(tmp_path, TABLES["adamw"]), flag, value)
        assert rc == 2 and f"argument {flag}" in err
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\xff" * 8 + b"{}")
    rc, _, err = run_cli("dry-run", write(tmp_path, TABLES["adamw"]), "--shapes-from", str(junk))
    assert rc == 2 and "header" in err
    no_opt = tmp_path / "no.toml"
    no_opt.write_text("epochs = 1\n")
    rc, _, err = run_cli("dry-run", str(no_opt))
    assert rc == 2 and "OPT004" in err


def test_validator_warnings_are_shown_and_the_run_goes_ahead(run_cli, tmp_path):
    # AdamW8bitKahan's class defaults: stabilize = true (OPT403) and weight decay on the Kahan buffer (OPT404)
    cfg = write(tmp_path, "type = 'AdamW8bitKahan'\nlr = 1e-4")
    rc, out, err = run_cli("dry-run", cfg, "--steps", "2", env={"NO_COLOR": "1"})
    assert rc == 0 and "healthy" in out
    assert "OPT403 [warning]" in err and "OPT404 [warning]" in err and "2 warnings" in err
    rc, out, _ = run_cli("dry-run", cfg, "--steps", "2", "--json")
    codes = [d["code"] for d in json.loads(out)["validate"]]
    # OPT409 (the trainer's own AdamW8bitKahan fails with bitsandbytes >= 0.50) depends on what is installed: it is
    # shown, and the run of optinspect's class goes ahead
    from optinspect.config.environment import installed_version

    bnb = installed_version("bitsandbytes")
    expected = ["OPT403", "OPT404"] + (["OPT409"] if bnb is None or bnb >= (0, 50) else [])
    assert rc == 0 and codes == expected
    rc, out, err = run_cli("dry-run", write(tmp_path, TABLES["adamw"]), "--steps", "1", "--json")
    assert json.loads(out)["validate"] == [] and "warning" not in err


def test_text_report(run_cli):
    rc, out, _ = run_cli("dry-run", str(EXAMPLES / "chroma.toml"), "--steps", "2", env={"NO_COLOR": "1"})
    assert rc == 0 and "optimizers.scorn.SCORN" in out and "healthy" in out and "bytes" in out and "per parameter" in out
