"""`optinspect inspect` and `optinspect diff` end to end, including bad input."""

import json

import pytest
import torch

from .test_load import trained


def test_inspect_json_sort_filter_top(run_cli, tmp_path):
    _, opt = trained(lambda p: torch.optim.AdamW(p, lr=1e-3))
    torch.save({"optimizer": opt.state_dict()}, tmp_path / "c.pt")
    rc, out, _ = run_cli("inspect", str(tmp_path / "c.pt"), "--json")
    assert rc == 0 and json.loads(out)["key_used"] == "optimizer"
    rc, out, _ = run_cli("inspect", str(tmp_path / "c.pt"), "--sort", "second", "--top", "2", env={"NO_COLOR": "1"})
    assert rc == 0 and "Adam/AdamW" in out and "training checkpoint" in out
    rc, out, _ = run_cli("inspect", str(tmp_path / "c.pt"), "--filter", "0/*", env={"NO_COLOR": "1"})
    assert rc == 0 and "0/0" in out
    rc, out, _ = run_cli("inspect", str(tmp_path / "c.pt"), "--filter", "nothing*", env={"NO_COLOR": "1"})
    assert rc == 0 and "no parameter selected (of 6)" in out and "0/0" in out  # names shown as a hint
    assert "m RMS" not in out  # no empty table
    for top in ("0", "-1"):  # a slice [:-1] would silently drop the last row
        rc, _, err = run_cli("inspect", str(tmp_path / "c.pt"), "--top", top)
        assert rc == 2 and "argument --top" in err


def test_inspect_dry_run_output_round_trip(run_cli, tmp_path):
    from tests.conftest import EXAMPLES

    for suffix in (".pt", ".safetensors"):
        target = tmp_path / f"s{suffix}"
        assert run_cli("dry-run", str(EXAMPLES / "chroma.toml"), "--steps", "3", "--save", str(target))[0] == 0
        rc, out, _ = run_cli("inspect", str(target), "--json")
        rep = json.loads(out)
        assert rc == 0 and rep["family"] == "SCORN" and rep["steps"] == [3]
        assert all("lora_" in p["name"] for p in rep["params"])


def test_inspect_refuses_bad_files_without_traceback(run_cli, tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"PK\x03\x04garbage")
    rc, _, err = run_cli("inspect", str(tmp_path / "bad.pt"))
    assert rc == 2 and "corrupt" in err
    rc, _, err = run_cli("inspect", str(tmp_path / "missing.pt"))
    assert rc == 2


def test_diff_after_resume(run_cli, tmp_path):
    m, opt = trained(lambda p: torch.optim.AdamW(p, lr=1e-3), steps=2)
    torch.save(opt.state_dict(), tmp_path / "a.pt")
    for _ in range(3):
        m(torch.randn(4, 16)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    for g in opt.param_groups:
        g["lr"] = 5e-4
    torch.save(opt.state_dict(), tmp_path / "b.pt")
    rc, out, _ = run_cli("diff", str(tmp_path / "a.pt"), str(tmp_path / "b.pt"), "--json")
    d = json.loads(out)
    assert rc == 0 and d["params"][0]["step_a"] == 2 and d["params"][0]["step_b"] == 5
    assert any(k["key"] == "exp_avg" and k["rel"] > 0 for k in d["params"][0]["drifts"])
    assert any("lr 0.001 -> 0.0005" in c for c in d["group_changes"])
    rc, out, _ = run_cli("diff", str(tmp_path / "a.pt"), str(tmp_path / "a.pt"), "--json")
    assert all(k["rel"] == 0 for p in json.loads(out)["params"] for k in p["drifts"])


# reset_interval = 3, saved after 4 steps and after 7. SCORN (spec 4.4) resets on steps 3, 5, 7, holds
# state['step'] at 0 and counts steps in the group: diff and inspect must both give the group's count, 4 -> 7
# (diff once said 0 -> 0), with 2 resets between. Persona (spec 6.2) resets on steps 3, 5, 7 too, but its own
# `step` restarts at 1 on each reset: 2 after step 4, 1 after step 7, so no step difference can be given.
@pytest.mark.parametrize("kind, steps, resets, delta, text", [
    ("scorn", (4, 7), 2, 3, "4 -> 7 (+3, 2 resets)"),
    ("persona", (2, 1), 2, None, "2 -> 1 (2 resets)"),
])
def test_diff_and_inspect_count_steps_and_resets(run_cli, tmp_path, kind, steps, resets, delta, text):
    import optinspect

    m, opt = trained(lambda p: optinspect.build_optimizer(p, {"type": kind, "lr": 1e-4, "reset_interval": 3}),
                     steps=4)
    torch.save(opt.state_dict(), tmp_path / "a.pt")
    for _ in range(3):
        m(torch.randn(4, 16)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    torch.save(opt.state_dict(), tmp_path / "b.pt")
    rc, out, _ = run_cli("diff", str(tmp_path / "a.pt"), str(tmp_path / "b.pt"), "--json")
    rows = json.loads(out)["params"]
    assert rc == 0 and {(p["step_a"], p["step_b"], p["resets"], p["step_delta"]) for p in rows} == \
        {(*steps, resets, delta)}
    rc, out, _ = run_cli("diff", str(tmp_path / "a.pt"), str(tmp_path / "b.pt"), env={"NO_COLOR": "1"})
    assert rc == 0 and text in out
    # inspect gives the same step, and says when it is Persona's count since its last reset (3 resets by step 7)
    rep = json.loads(run_cli("inspect", str(tmp_path / "b.pt"), "--json")[1])
    assert {p["step"] for p in rep["params"]} == {steps[1]}
    if kind == "scorn":
        assert opt.state_dict()["state"][0]["step"] == 0
    warnings = rep["warnings"]
    restarts = [w for w in warnings if "starts its step counter again" in w]
    assert restarts == (["PersonaOptimizer starts its step counter again at every reset: `step` counts from the "
                         "last reset (3 so far), not from the start of the run"] if kind == "persona" else [])


def test_inspect_to_a_pipe_keeps_each_row_on_one_line(run_cli, tmp_path):
    """`optinspect inspect state.pt | grep NAME` must find whole rows: no folding at rich's 80 columns and no
    padding blanks at line ends; an explicit COLUMNS still folds."""
    from tests.conftest import EXAMPLES

    target = tmp_path / "s.pt"
    assert run_cli("dry-run", str(EXAMPLES / "chroma.toml"), "--steps", "2", "--save", str(target))[0] == 0
    names = [p["name"] for p in json.loads(run_cli("inspect", str(target), "--json")[1])["params"]]
    longest = max(names, key=len)
    assert len(longest) > 30
    rc, out, _ = run_cli("inspect", str(target), env={"NO_COLOR": "1"})
    lines = out.splitlines()
    assert rc == 0 and all(line == line.rstrip() for line in lines)
    rows = [line for line in lines if line.startswith(longest + " ")]
    assert len(rows) == 1 and rows[0].split()[-1] not in longest  # the figures follow on the same line
    rc, out, _ = run_cli("inspect", str(target), env={"NO_COLOR": "1", "COLUMNS": "60"})
    assert rc == 0 and not any(line.startswith(longest) for line in out.splitlines())


def test_small_tensors_drift_in_batches_as_one_by_one():
    """diff compares small tensors many at a time: each figure equals the one-pair streaming path's (the
    oracle), NaN and inf included, for fp32, bf16 and 0-d entries."""
    import math

    from optinspect.state.diff import _batch_drifts, drift

    g = torch.Generator().manual_seed(0)
    pairs = [(torch.randn(n, generator=g), torch.randn(n, generator=g)) for n in (1, 7, 300, 4096)]
    pairs += [(torch.randn(9, generator=g).bfloat16(), torch.randn(9, generator=g).bfloat16()),
              (torch.tensor(3.0), torch.tensor(5.0)), (torch.zeros(4), torch.zeros(4)), (torch.zeros(3), torch.ones(3)),
              (torch.tensor([1.0, float("nan")]), torch.tensor([1.0, 2.0])),
              (torch.tensor([1.0, 2.0]), torch.tensor([float("inf"), 2.0]))]
    jobs = [(None, i, "exp_avg", x, y) for i, (x, y) in enumerate(pairs)]
    for (_, i, got), (x, y) in zip(_batch_drifts(jobs), pairs, strict=True):
        want = drift({"exp_avg": x}, {"exp_avg": y}, "exp_avg")
        for a, b in ((got.rel, want.rel), (got.max_abs, want.max_abs)):
            assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-12), (i, got, want)


def test_a_large_state_is_printed_as_it_is_computed(run_cli, tmp_path):
    """Past one window of parameters `inspect` prints rows as they are computed and the summary after them: the
    rows must say what the table of the whole report says (a parameter with NaN late in the file flagged too)."""
    from optinspect.render.state import StreamedTable

    n = StreamedTable.STREAM_ABOVE + 300
    g = torch.Generator().manual_seed(0)
    state = {}
    for i in range(n):
        m = torch.randn(4, generator=g)
        state[i] = {"step": torch.tensor(9.0), "exp_avg": m, "exp_avg_sq": m * m}
    state[n - 5]["exp_avg"][0] = float("nan")
    torch.save({"state": state, "param_groups": [{"lr": 1e-3, "params": list(range(n))}]}, tmp_path / "s.pt")
    rc, streamed, _ = run_cli("inspect", str(tmp_path / "s.pt"), env={"NO_COLOR": "1"})
    rc2, whole, _ = run_cli("inspect", str(tmp_path / "s.pt"), "--top", str(n), env={"NO_COLOR": "1"})  # not streamed
    assert rc == rc2 == 0
    rows = lambda text: [" ".join(line.split()) for line in text.splitlines() if line.startswith("0/")]  # noqa: E731
    assert rows(streamed) == rows(whole) and len(rows(streamed)) == n
    assert f"0/{n - 5} 4 float32 9" in rows(streamed)[n - 5] and "nan/inf in exp_avg" in rows(streamed)[n - 5]
    assert streamed.index("\n0/0 ") < streamed.index("\noptimizer") and whole.index("\noptimizer") < whole.index("\n0/0 ")
    assert f"! 0/{n - 5}: nan/inf in exp_avg" in streamed and f"{n:,} parameters" in streamed
