"""Replay the originals' recorded gradients through our optimizers (the parity gate, carried in the repository):
every parameter after every step and every scalar counter must match bit for bit, the final state and param-group
values too; a save -> load -> continue in the middle must not change a bit; and the gate must catch an lr that
is off by one part in a million."""

import io
import math

import pytest
import torch

import optinspect

from . import golden as G

CASES = G.fp32_cases()


def _scalar(v) -> float:
    return float(v.reshape(-1)[0]) if isinstance(v, torch.Tensor) else float(v)


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


@pytest.fixture(autouse=True)
def _single_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def replay(case: str, lr_scale: float = 1.0) -> list[str]:
    """Every difference from the recording, in words (empty: bit-identical)."""
    meta, gold = G.load(case)
    params = G.params_from(gold)
    table = G.table(meta)
    if lr_scale != 1.0:
        table["lr"] = (table.get("lr") or 1.0) * lr_scale
    opt = optinspect.build_optimizer(params, table)
    by_name = dict(zip(G.NAMES, params, strict=True))
    traces = {k: v for k, v in gold.items() if k.startswith("trace.")}
    diffs: list[str] = []
    for t in range(1, meta["n_steps"] + 1):
        G.set_grads(params, gold, t)
        opt.step()
        for i, n in enumerate(G.NAMES):
            if G.digest(params[i]) != meta["digests"][t - 1][i]:
                diffs.append(f"step {t}: {n}")
        for key, values in traces.items():
            where, rest = key[len("trace."):].split(".", 1)
            if where == "group":
                label, name = rest.split(".", 1)
                holder = opt.param_groups[int(label)]
            else:
                param = next(n for n in sorted(G.NAMES, key=len, reverse=True) if rest.startswith(n + "."))
                holder, name = opt.state[by_name[param]], rest[len(param) + 1:]
            if name not in holder:
                diffs.append(f"step {t}: {key} missing")
            elif not _same(_scalar(holder[name]), float(values[t - 1])):
                diffs.append(f"step {t}: {key} = {_scalar(holder[name])!r}, recorded {float(values[t - 1])!r}")
        if diffs:
            break
    n = meta["n_steps"]
    for name, p in by_name.items():
        want = gold[f"param.{n}.{name}"]
        if not torch.equal(p.detach(), want):
            diffs.append(f"final {name}: max |diff| {(p.detach() - want).abs().max().item():.3g}")
    for key, want in gold.items():
        if key.startswith("state."):
            rest = key[len("state."):]
            name = next(n for n in sorted(G.NAMES, key=len, reverse=True) if rest.startswith(n + "."))
            got = opt.state[by_name[name]].get(rest[len(name) + 1:])
            if got is None:
                diffs.append(f"{key} missing")
            elif isinstance(got, torch.Tensor) and want.dim() and (got.dtype, got.shape) != (want.dtype, want.shape):
                diffs.append(f"{key}: {got.dtype}{list(got.shape)}, recorded {want.dtype}{list(want.shape)}")
            elif isinstance(got, torch.Tensor) and want.dim() and not torch.equal(got, want):
                diffs.append(f"{key} differs")
            elif not (isinstance(got, torch.Tensor) and want.dim()) and not _same(_scalar(got), _scalar(want)):
                diffs.append(f"{key} = {got!r}, recorded {_scalar(want)!r}")
        elif key.startswith("group.0."):
            got = opt.param_groups[0].get(key[len("group.0."):])
            if got is None or not _same(_scalar(got), _scalar(want)):
                diffs.append(f"{key} = {got!r}, recorded {_scalar(want)!r}")
    return diffs


@pytest.mark.parametrize("case", CASES)
def test_trajectory_counters_and_final_state_are_bit_identical(case):
    assert replay(case) == []


def test_the_gate_catches_an_lr_off_by_one_part_in_a_million():
    diffs = replay("scorn_readme_full", lr_scale=1 + 1e-6)
    assert diffs and diffs[0].startswith("step ")


def test_the_archive_holds_every_case_of_every_bundled_optimizer():
    assert len(CASES) == 18
    assert {G.index()[c]["type"].lower() for c in CASES} == {"adafactor", "scorn", "remaster", "persona",
                                                              "adamw8bitkahan", "prodigy"}
    assert all(G.index()[c]["n_steps"] == 25 for c in CASES)


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


@pytest.mark.parametrize("case", [c for c in CASES if c.startswith("persona")])
def test_persona_in_cache_slices_is_bit_identical(case, monkeypatch):
    """On CPU Persona runs its elementwise chain in slices (CPU_SLICE elements): with slices far smaller than
    the golden tensors (and ends that are not multiples of the slice) it must still match every bit."""
    import optinspect.optimizers._common

    monkeypatch.setattr(optinspect.optimizers._common, "CPU_SLICE", 64)
    assert replay(case) == []


@pytest.mark.parametrize("case", CASES)
def test_multi_tensor_chains_replay_the_originals_bit_for_bit(case, monkeypatch):
    """The multi-tensor chains (the path off CPU, forced on here) of all six replay the recordings too."""
    import optinspect.optimizers._common

    monkeypatch.setattr(optinspect.optimizers._common, "MULTI_TENSOR_ON_CPU", True)
    assert replay(case) == []
