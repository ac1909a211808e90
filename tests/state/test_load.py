"""Loading real optimizer states in every supported layout, safely."""

import argparse
import json
import os
import pickle
import re
import sys
import types

import pytest
import torch

from optinspect.state.analyse import build_report
from optinspect.state.load import StateLoadError, load_state

from ..archives import repack


def model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.LayerNorm(32), torch.nn.Linear(32, 8))


def trained(opt_factory, steps=3):
    m = model()
    opt = opt_factory(m.parameters())
    for _ in range(steps):
        loss = m(torch.randn(4, 16)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m, opt


NAMES = ["0.weight", "0.bias", "1.weight", "1.bias", "2.weight", "2.bias"]


def test_plain_torch_adamw_state(tmp_path):
    m, opt = trained(lambda p: torch.optim.AdamW(p, lr=1e-2))
    path = tmp_path / "opt.pt"
    torch.save(opt.state_dict(), path)
    ls = load_state(str(path))
    assert ls.layout == "torch optimizer.state_dict()" and len(ls.params) == 6
    r = build_report(ls)
    assert r.family == "Adam/AdamW" and r.steps == [3]
    p0 = list(m.parameters())[0]
    want = opt.state[p0]["exp_avg_sq"]
    got = r.params[0]
    assert got.shape == [32, 16]
    assert got.second_rms == pytest.approx(float(want.pow(2).mean().sqrt()), rel=1e-6)
    ratio = (opt.state[p0]["exp_avg"].abs() / opt.state[p0]["exp_avg_sq"].sqrt())
    assert got.update_scale_mean == pytest.approx(float(ratio.mean()), rel=1e-5)


@pytest.mark.parametrize("key", ["optimizer", "optimizer_state_dict", "optim"])
def test_training_checkpoint_nests_the_state(tmp_path, key):
    _, opt = trained(lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9))
    path = tmp_path / "ckpt.pt"
    torch.save({"model": {}, key: opt.state_dict(), "epoch": 3, "args": argparse.Namespace(lr=1e-2)}, path)
    ls = load_state(str(path))
    assert ls.key_used == key and "training checkpoint" in ls.layout
    assert ls.skipped == ["argparse.Namespace"] and any("skipped" in w for w in ls.warnings)
    assert build_report(ls).family == "SGD"


def _fake_deepspeed_module(monkeypatch):
    """A stand-in for DeepSpeed's loss scaler module while torch.save pickles one (monkeypatch takes it out again;
    a real DeepSpeed another test imported is left whole)."""
    mod = types.ModuleType("deepspeed.runtime.fp16.loss_scaler")

    class LossScaler:
        def __init__(self):
            self.cur_scale = 1.0

    LossScaler.__module__ = mod.__name__
    LossScaler.__qualname__ = "LossScaler"
    mod.LossScaler = LossScaler
    for name in ("deepspeed", "deepspeed.runtime", "deepspeed.runtime.fp16"):
        if name not in sys.modules:
            monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    return mod


def test_deepspeed_folder_with_latest_tag_param_shapes_and_loss_scaler(tmp_path):
    _, opt = trained(lambda p: torch.optim.AdamW(p, lr=1e-3))
    step_dir = tmp_path / "global_step7"
    step_dir.mkdir()
    shapes = [{n: torch.Size(s) for n, s in zip(NAMES, [(32, 16), (32,), (32,), (32,), (8, 32), (8,)], strict=True)}]
    with pytest.MonkeyPatch.context() as m:
        ds = _fake_deepspeed_module(m)
        torch.save({"module": None, "optimizer": opt.state_dict(), "param_shapes": shapes, "ds_version": "0.16.0",
                    "global_steps": 7, "loss_scaler": ds.LossScaler(), "sparse_tensor_module_names": set(),
                    "dp_world_size": 1}, step_dir / "mp_rank_00_model_states.pt")
    (tmp_path / "latest").write_text("global_step7")
    ls = load_state(str(tmp_path))
    assert "DeepSpeed" in ls.layout and "latest" in ls.layout and ls.key_used == "optimizer"
    assert [p.name for p in ls.params] == NAMES and ls.names_from == "param_shapes"
    assert "deepspeed.runtime.fp16.loss_scaler.LossScaler" in ls.skipped
    assert ls.extra["global_steps"] == 7


def test_deepspeed_zero_optim_states(tmp_path):
    _, opt = trained(lambda p: torch.optim.AdamW(p, lr=1e-3))
    torch.save({"optimizer_state_dict": {"zero_stage": 2, "partition_count": 1,
                                         "optimizer_state_dict": opt.state_dict(),
                                         "single_partition_of_fp32_groups": [torch.zeros(10)]}},
               tmp_path / "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt")
    ls = load_state(str(tmp_path))
    assert "ZeRO stage 2" in ls.layout and ls.key_used == "optimizer_state_dict.optimizer_state_dict"


@pytest.mark.parametrize("fname", ["optimizer.pt", "optimizer.bin"])
def test_hf_trainer_and_accelerate_folders(tmp_path, fname):
    _, opt = trained(lambda p: torch.optim.AdamW(p, lr=1e-3))
    torch.save(opt.state_dict(), tmp_path / fname)
    (tmp_path / "trainer_state.json").write_text("{}")
    ls = load_state(str(tmp_path))
    assert ls.source_file.endswith(fname) and len(ls.params) == 6


def test_gradient_release_wrapper(tmp_path):
    m = model()
    opts = {i: torch.optim.AdamW([p], lr=1e-3) for i, p in enumerate(m.parameters())}
    for p in m.parameters():
        p.grad = torch.randn_like(p)
    for o in opts.values():
        o.step()
    torch.save({i: o.state_dict() for i, o in opts.items()}, tmp_path / "gr.pt")
    ls = load_state(str(tmp_path / "gr.pt"))
    assert "gradient-release" in ls.layout and len(ls.params) == 6 and len(ls.groups) == 6


def test_flattened_safetensors_state(tmp_path):
    from safetensors.torch import save_file

    _, opt = trained(lambda p: torch.optim.AdamW(p, lr=1e-3))
    flat = {}
    for i, st in opt.state_dict()["state"].items():
        for k, v in st.items():
            flat[f"state.{NAMES[i]}.{k}"] = v if v.ndim else v.reshape(())
    save_file(flat, str(tmp_path / "s.safetensors"))
    ls = load_state(str(tmp_path / "s.safetensors"))
    assert ls.layout.startswith("flattened") and {p.name for p in ls.params} == set(NAMES)
    assert build_report(ls).family == "Adam/AdamW"


def test_hostile_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    torch.save({"optimizer": Evil()}, path)
    with pytest.raises(StateLoadError, match="refused.*(posix|os)\\.system"):
        load_state(str(path))
    assert not marker.exists()
    raw = tmp_path / "raw.pt"  # a legacy raw pickle, not a zip: torch would call it corrupt after running it
    raw.write_bytes(pickle.dumps(Evil(), protocol=2))
    with pytest.raises(StateLoadError):
        load_state(str(raw))
    assert not marker.exists()


def test_truncated_corrupt_and_empty_files(tmp_path):
    _, opt = trained(lambda p: torch.optim.AdamW(p, lr=1e-3))
    good = tmp_path / "good.pt"
    torch.save(opt.state_dict(), good)
    data = good.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "noise.pt").write_bytes(os.urandom(4096))
    for name in ("trunc.pt", "empty.pt", "noise.pt"):
        with pytest.raises(StateLoadError):
            load_state(str(tmp_path / name))


def test_files_that_are_not_checkpoints_are_named_as_such(tmp_path):
    """A config or a log handed to inspect by mistake: say what the file is not, not a pickle opcode."""
    (tmp_path / "config.toml").write_text("[optimizer]\ntype = 'adamw'\n")
    with pytest.raises(StateLoadError, match="not a PyTorch checkpoint.*starts with b'\\[opt'"):
        load_state(str(tmp_path / "config.toml"))
    _, opt = trained(lambda p: torch.optim.AdamW(p, lr=1e-3))
    torch.save(opt.state_dict(), tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    assert load_state(str(tmp_path / "legacy.pt")).layout == "torch optimizer.state_dict()"


def test_safetensors_under_another_name_is_read_as_safetensors(tmp_path):
    from safetensors.torch import save_file

    _, opt = trained(lambda p: torch.optim.AdamW(p, lr=1e-3))
    flat = {f"state.{NAMES[i]}.{k}": v.reshape(v.shape or ()) for i, st in opt.state_dict()["state"].items()
            for k, v in st.items()}
    save_file(flat, str(tmp_path / "optimizer.bin"))
    ls = load_state(str(tmp_path / "optimizer.bin"))
    assert ls.layout.startswith("flattened") and {p.name for p in ls.params} == set(NAMES)


def test_safetensors_header_claiming_a_terabyte(tmp_path):
    import struct

    header = json.dumps({"state.w.exp_avg": {"dtype": "F32", "shape": [2**38], "data_offsets": [0, 2**40]}}).encode()
    p = tmp_path / "huge.safetensors"
    p.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 64)
    with pytest.raises(StateLoadError, match="past the end of the file"):
        load_state(str(p))
    p.write_bytes(struct.pack("<Q", 2**50) + b"{}")
    with pytest.raises(StateLoadError, match="header claims"):
        load_state(str(p))


def test_model_file_names_parameters_by_order_and_shape(tmp_path):
    from safetensors.torch import save_file

    m, opt = trained(lambda p: torch.optim.AdamW(p, lr=1e-3))
    torch.save(opt.state_dict(), tmp_path / "o.pt")
    tensors = {"frozen.embed": torch.zeros(5, 5)}  # not trained: skipped by shape
    tensors.update({f"net.{n}": t.detach().contiguous() for n, t in zip(NAMES, m.parameters(), strict=True)})
    save_file(tensors, str(tmp_path / "model.safetensors"))
    ls = load_state(str(tmp_path / "o.pt"), model=str(tmp_path / "model.safetensors"))
    got = [p.name for p in ls.params]
    assert got[0] == "net.0.weight" and got[4] == "net.2.weight" and got[5] == "net.2.bias"  # unique shapes
    assert sorted(got[1:4]) == ["net.0.bias", "net.1.bias", "net.1.weight"]  # three (32,) tensors
    assert any("may be swapped" in w for w in ls.warnings)
    assert [p.name_certain for p in ls.params] == [True, False, False, False, True, True]  # said per tensor
    save_file({"other": torch.zeros(3)}, str(tmp_path / "wrong.safetensors"))
    ls = load_state(str(tmp_path / "o.pt"), model=str(tmp_path / "wrong.safetensors"))
    assert ls.warnings and "found no tensor" in ls.warnings[0]


def test_missing_paths_and_empty_folders(tmp_path):
    with pytest.raises(StateLoadError, match="no such"):
        load_state(str(tmp_path / "nope"))
    with pytest.raises(StateLoadError, match="no optimizer file"):
        load_state(str(tmp_path))
    torch.save({"weights": torch.zeros(3)}, tmp_path / "w.pt")
    with pytest.raises(StateLoadError, match="no optimizer state found"):
        load_state(str(tmp_path / "w.pt"))


def test_fast_reader_matches_torch_load_and_checks_bounds(tmp_path):
    from optinspect.state.mapped import CorruptData, MappedFile, MappedTensor
    from optinspect.state.ptindex import load_index
    from optinspect.state.unpickle import HARMLESS_GLOBALS

    g = torch.Generator().manual_seed(0)
    base = torch.randn(10, 6, generator=g)
    obj = {"a": base, "view": base[2:5], "t": base.t(), "half": torch.randn(7, generator=g).half(),
           "i": torch.tensor(3), "nested": [torch.arange(4)], "ns": argparse.Namespace(x=1)}
    torch.save(obj, tmp_path / "x.pt")
    fast, skipped = load_index(str(tmp_path / "x.pt"), HARMLESS_GLOBALS)
    with torch.serialization.safe_globals([argparse.Namespace]):
        ref = torch.load(tmp_path / "x.pt", weights_only=True)
    for k in ("a", "view", "t", "half", "i"):
        assert isinstance(fast[k], MappedTensor) and torch.equal(fast[k].load(), ref[k]), k
    assert torch.equal(fast["nested"][0].load(), ref["nested"][0]) and skipped == ["argparse.Namespace"]
    assert not fast["t"].contiguous and fast["view"].contiguous
    bogus = MappedTensor(MappedFile(str(tmp_path / "x.pt")), 0, torch.float32, (10**9,), None, 10**9)
    with pytest.raises(CorruptData):
        bogus.view(0, 10**9)


def test_other_torchao_objects_are_refused_by_name(tmp_path, monkeypatch):
    """Not a tensor subclass rebuilt the way torchao saves its optimizer states (those are read, test_torchao.py):
    refused, never constructed."""
    mod = types.ModuleType("torchao.prototype.low_bit_optim.subclass_8bit")

    class OptimState8bit:
        pass

    OptimState8bit.__module__ = mod.__name__
    OptimState8bit.__qualname__ = "OptimState8bit"
    mod.OptimState8bit = OptimState8bit
    # stand-in modules only where torchao is not imported, and taken out again (a real torchao, imported by
    # another test, stays whole: popping it broke every later import of its submodules)
    for n in ["torchao", "torchao.prototype", "torchao.prototype.low_bit_optim"]:
        if n not in sys.modules:
            monkeypatch.setitem(sys.modules, n, types.ModuleType(n))
    with monkeypatch.context() as m:
        m.setitem(sys.modules, mod.__name__, mod)
        torch.save({"state": {0: {"exp_avg": OptimState8bit()}}, "param_groups": [{"params": [0]}]},
                   tmp_path / "ao.pt")
    with pytest.raises(StateLoadError, match="torchao objects optinspect does not read"):
        load_state(str(tmp_path / "ao.pt"))


def test_deepspeed_pipeline_names_come_from_layer_files(tmp_path):
    m, opt = trained(lambda p: torch.optim.AdamW(p, lr=1e-3))
    step = tmp_path / "global_step3"
    step.mkdir()
    torch.save({"module": None, "optimizer": opt.state_dict(), "ds_version": "0.16", "global_steps": 3},
               step / "mp_rank_00_model_states.pt")
    layers = [m[0], m[1], m[2]]
    for i, layer in enumerate(layers):
        torch.save(layer.state_dict(), step / f"layer_{i:02d}-model_states.pt")
    ls = load_state(str(step))
    assert ls.names_from.startswith("DeepSpeed layer files")
    names = [p.name for p in ls.params]
    assert names[0] == "layer_00.weight" and names[4] == "layer_02.weight" and names[5] == "layer_02.bias"
    assert set(names[1:4]) == {"layer_00.bias", "layer_01.weight", "layer_01.bias"}


def _figures(report):
    return [(p.name, p.shape, p.step, p.first_rms, p.second_rms, p.update_scale_max) for p in report.params]


def test_names_first_gives_the_same_report_once_settled(tmp_path):
    """The TUI's load (names and shapes first, where the bytes lie found later) ends in the same figures as the
    whole load, for torch's own archive and for one whose pickle is not the first member."""
    from optinspect.state.mapped import MappedTensor

    _, opt = trained(lambda p: torch.optim.AdamW(p, lr=1e-2))
    torch.save(opt.state_dict(), tmp_path / "opt.pt")
    repack(tmp_path / "opt.pt", tmp_path / "pickle_last.pt", last=["/data.pkl"])
    want = _figures(build_report(load_state(str(tmp_path / "opt.pt"))))
    for name, deferred in (("opt.pt", True), ("pickle_last.pt", True)):
        ls = load_state(str(tmp_path / name), names_first=True)
        assert [p.shape for p in ls.params] == [w[1] and tuple(w[1]) for w in want]
        assert (len(ls.placements) == 1) == deferred
        t = ls.params[0].entries["exp_avg"]
        assert isinstance(t, MappedTensor) and t._start == -1  # nothing placed yet
        assert _figures(build_report(ls)) == want and ls.placements == [] and t._start > 0, name
    # a tensor read before settling is placed on demand
    ls = load_state(str(tmp_path / "opt.pt"), names_first=True)
    p0 = ls.params[0].entries["exp_avg"].load()
    assert torch.equal(p0, opt.state_dict()["state"][0]["exp_avg"])


@pytest.mark.parametrize("damage,message", [
    ({"drop": ["/data/1"]}, "tensor's data (1) is missing"),
    ({"cut": ["/data/2"]}, "storage 2 claims"),
    ({"twice": ["/data.pkl"]}, "disagree on where its pickle is"),
])
def test_names_first_checks_every_storage_before_any_figure(tmp_path, damage, message):
    """An archive whose pickle is whole but whose tensors are not where it says: refused by the whole load, and
    by the TUI's load once it settles, before any statistics, with the file named."""
    from optinspect.state.mapped import CorruptData

    _, opt = trained(lambda p: torch.optim.AdamW(p, lr=1e-2))
    torch.save(opt.state_dict(), tmp_path / "opt.pt")
    bad = tmp_path / "bad.pt"
    repack(tmp_path / "opt.pt", bad, **damage)
    with pytest.raises(StateLoadError, match=re.escape(message)):
        load_state(str(bad))
    ls = load_state(str(bad), names_first=True)
    assert len(ls.params) == 6
    rows = []
    with pytest.raises(CorruptData, match=f"^{re.escape(str(bad))}: .*{re.escape(message)}"):
        build_report(ls, on_param=rows.append)
    assert rows == []


def test_names_first_on_mutated_archives_ends_cleanly(tmp_path):
    """Bytes flipped in the directory, the local headers and the pickle: loading names first, then settling and
    computing, ends in a located error or a report; never another exception."""
    import random

    from optinspect.state.header import HeaderError
    from optinspect.state.mapped import CorruptData

    _, opt = trained(lambda p: torch.optim.AdamW(p, lr=1e-2))
    torch.save(opt.state_dict(), tmp_path / "opt.pt")
    data = (tmp_path / "opt.pt").read_bytes()
    directory = data.rfind(b"PK\x01\x02", 0, data.rfind(b"PK\x05\x06"))
    rnd = random.Random(7)
    outcomes = set()
    for case in range(150):
        b = bytearray(data)
        where = rnd.choice([(0, 200), (directory - 2000, len(b)), (0, len(b))])
        for _ in range(rnd.randint(1, 4)):
            b[rnd.randrange(max(0, where[0]), where[1])] = rnd.randrange(256)
        path = tmp_path / f"m{case}.pt"
        path.write_bytes(bytes(b))
        try:
            ls = load_state(str(path), names_first=True)
        except (StateLoadError, CorruptData, HeaderError):
            outcomes.add("refused at load")
            continue
        try:
            build_report(ls)
            outcomes.add("read")
        except CorruptData as e:
            assert str(e).startswith(f"{path}: ")
            outcomes.add("refused once settled")
    assert outcomes == {"read", "refused at load", "refused once settled"}


INDEX_WITHOUT_TORCH = r"""
import json, sys
sys.modules["torch"] = None  # any import of torch fails
from optinspect.state.collector import long_lived
from optinspect.state.load import load_state
with long_lived():
    ls = load_state(sys.argv[1], names_first=True)
print(json.dumps({"params": [[p.name, list(p.shape or ()), {k: [v.dtype_name, v.nbytes, list(v.shape)]
                                                             for k, v in p.entries.items()}] for p in ls.params],
                  "bytes": ls.tensor_bytes, "layout": ls.layout}))
"""


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_index_is_read_without_importing_torch(tmp_path, dtype):
    """The TUI shows names and shapes before torch is imported (most of a second): the index of a torch zip
    checkpoint, with its dtypes and sizes, is read with torch unimportable, and agrees with torch's own tensors."""
    import subprocess

    g = torch.Generator().manual_seed(0)
    state = {i: {"step": torch.tensor(3.0), "exp_avg": torch.randn(4, i + 1, generator=g).to(dtype),
                 "exp_avg_sq": torch.rand(4, i + 1, generator=g).to(dtype), "count": torch.tensor([i], dtype=torch.int64)}
             for i in range(5)}
    torch.save({"state": state, "param_groups": [{"lr": 1e-3, "params": list(range(5))}]}, tmp_path / "s.pt")
    proc = subprocess.run([sys.executable, "-c", INDEX_WITHOUT_TORCH, str(tmp_path / "s.pt")], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout)
    want = [[f"0/{i}", [4, i + 1], {k: [str(v.dtype).replace("torch.", ""), v.numel() * v.element_size(),
                                       list(v.shape)] for k, v in st.items()}] for i, st in state.items()]
    assert got["params"] == want
    assert got["bytes"] == sum(v.numel() * v.element_size() for st in state.values() for v in st.values())


FRESH_INDEX = r"""
import json, sys
from optinspect.state.load import load_state
assert "torch" not in sys.modules
ls = load_state(sys.argv[1])
t = ls.params[0].entries["exp_avg"]
print(json.dumps([t.dtype_name, list(t.shape), t.load().float().tolist()]))
"""


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_dtypes_without_a_typed_storage_in_a_fresh_process(tmp_path, dtype):
    """float8 tensors are saved with untyped storages and their dtype as a pickled global: the index imports torch
    for those on first need, in a process where nothing imported it before."""
    import subprocess

    exp_avg = torch.tensor([[0.5, -1.0, 2.0], [0.25, 0.0, -3.0]]).to(dtype)
    torch.save({"state": {0: {"step": torch.tensor(1.0), "exp_avg": exp_avg,
                              "exp_avg_sq": torch.ones(2, 3)}},
                "param_groups": [{"lr": 1e-3, "params": [0]}]}, tmp_path / "f8.pt")
    proc = subprocess.run([sys.executable, "-c", FRESH_INDEX, str(tmp_path / "f8.pt")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout) == [str(dtype).replace("torch.", ""), [2, 3], exp_avg.float().tolist()]
