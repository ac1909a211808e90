"""Checkpoint layouts written by the libraries themselves, read back: the optimizer found, its family, its step
and its figures equal to what the library's own optimizer holds."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from optinspect.state.analyse import build_report
from optinspect.state.load import load_state


def _lightning_checkpoint(tmp_path, n_optimizers: int):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        L = pytest.importorskip("lightning")

    class Model(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(8, 4), torch.nn.Linear(8, 4)
            self.automatic_optimization = n_optimizers == 1

        def training_step(self, batch, _):
            loss = (self.a(batch[0]) + self.b(batch[0])).square().mean()
            if n_optimizers == 1:
                return loss
            for opt in self.optimizers():
                opt.zero_grad()
            self.manual_backward(loss)
            for opt in self.optimizers():
                opt.step()
            return None

        def configure_optimizers(self):
            if n_optimizers == 1:
                return torch.optim.AdamW(self.parameters(), lr=1e-3)
            return [torch.optim.AdamW(self.a.parameters(), lr=1e-3), torch.optim.SGD(self.b.parameters(), lr=1e-2,
                                                                                         momentum=0.9)]

    torch.manual_seed(0)
    model = Model()
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(12, 8)), batch_size=4)
    trainer = L.Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, data)
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    opts = trainer.optimizers
    return path, opts


@pytest.mark.parametrize("n", [1, 2])
def test_lightning_checkpoint_opens_its_first_optimizer(n, tmp_path):
    path, opts = _lightning_checkpoint(tmp_path, n)
    ls = load_state(str(path))
    report = build_report(ls)
    assert report.layout.startswith(f"Lightning checkpoint -> optimizer_states[0] of {n}")
    own = opts[0].state_dict()["state"]
    assert report.family == "Adam/AdamW" and report.steps == [int(own[0]["step"])] and report.steps[0] >= 2
    for row in report.params:
        m = own[row.index]["exp_avg"].double()
        assert math.isclose(row.first_rms, m.pow(2).mean().sqrt().item(), rel_tol=1e-5)
    assert any("2 optimizers" in w for w in report.warnings) == (n == 2)
    if n == 2:  # the second is there too, picked by number
        second = build_report(load_state(str(path), optimizer=1))
        assert second.family == "SGD" and "optimizer_states[1] of 2" in second.layout
        from optinspect.state.loaded import StateLoadError

        with pytest.raises(StateLoadError, match="holds 2 optimizers"):
            load_state(str(path), optimizer=2)


def test_accelerate_folder_with_two_optimizers_says_so_and_rng_state_is_named(tmp_path):
    accelerate = pytest.importorskip("accelerate")
    torch.manual_seed(0)
    unet, text = torch.nn.Linear(8, 4), torch.nn.Linear(8, 2)
    acc = accelerate.Accelerator(cpu=True)
    unet, text, o1, o2 = acc.prepare(unet, text, torch.optim.AdamW(unet.parameters(), lr=1e-3),
                                     torch.optim.SGD(text.parameters(), lr=1e-2, momentum=0.9))
    for _ in range(2):
        (unet(torch.randn(2, 8)).sum() + text(torch.randn(2, 8)).sum()).backward()
        o1.step()
        o2.step()
    acc.save_state(str(tmp_path / "state"))
    report = build_report(load_state(str(tmp_path / "state")))
    assert report.source_file.endswith("optimizer.bin") and report.family == "Adam/AdamW"
    assert "optimizer 0 of 2" in report.layout and "optimizer_1.bin" in report.layout
    other = build_report(load_state(str(tmp_path / "state" / "optimizer_1.bin")))
    assert other.family == "SGD"
    assert build_report(load_state(str(tmp_path / "state"), optimizer=1)).family == "SGD"
    from optinspect.state.loaded import StateLoadError

    rng = next((tmp_path / "state").glob("random_states_*.pkl"))
    with pytest.raises(StateLoadError, match="not optimizer state"):
        load_state(str(rng))


def test_run_folder_opens_its_latest_checkpoint_by_number(tmp_path):
    """checkpoint-10 is later than checkpoint-9 (not by name): HF Trainer's output_dir."""
    for n, steps in ((9, 1), (10, 4)):
        p = torch.nn.Parameter(torch.randn(4, 4))
        opt = torch.optim.AdamW([p], lr=1e-3)
        for _ in range(steps):
            p.grad = torch.randn(4, 4)
            opt.step()
        (tmp_path / f"checkpoint-{n}").mkdir()
        torch.save(opt.state_dict(), tmp_path / f"checkpoint-{n}" / "optimizer.pt")
    report = build_report(load_state(str(tmp_path)))
    assert report.steps == [4] and report.layout.startswith("checkpoint-10 (the latest of 2 checkpoint folders)")


def _dcp_save(folder, steps: int):
    dcp = pytest.importorskip("torch.distributed.checkpoint")
    from torch.distributed.checkpoint.state_dict import get_state_dict

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.Linear(8, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(steps):
        model(torch.randn(4, 16)).square().mean().backward()
        opt.step()
        opt.zero_grad()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        msd, osd = get_state_dict(model, opt)
        dcp.save({"model": msd, "optimizer": osd}, checkpoint_id=str(folder))
    return opt


def test_dcp_folder_reads_per_parameter_with_names(tmp_path, run_cli):
    opt = _dcp_save(tmp_path / "a", 3)
    report = build_report(load_state(str(tmp_path / "a")))
    assert report.layout == "torch.distributed.checkpoint folder" and report.steps == [3]
    assert [r.name for r in report.params] == ["0.weight", "0.bias", "1.weight", "1.bias"]
    own = opt.state_dict()["state"]
    for i, row in enumerate(report.params):
        assert math.isclose(row.first_rms, own[i]["exp_avg"].double().pow(2).mean().sqrt().item(), rel_tol=1e-6)
    _dcp_save(tmp_path / "b", 5)
    rc, out, _ = run_cli("diff", str(tmp_path / "a"), str(tmp_path / "b"), "--json")
    import json

    assert rc == 0 and [p["step_b"] for p in json.loads(out)["params"]] == [5, 5, 5, 5]
    assert run_cli("inspect", str(tmp_path / "a" / ".metadata"))[0] == 0  # the metadata file names its folder


def test_dcp_damaged_folders_are_one_line_errors(tmp_path, run_cli):
    _dcp_save(tmp_path / "a", 1)
    data = next((tmp_path / "a").glob("*.distcp"))
    data.write_bytes(data.read_bytes()[:3000])
    rc, _, err = run_cli("inspect", str(tmp_path / "a"))
    assert rc == 2 and "truncated or corrupt" in err and err.count("\n") == 1
    _dcp_save(tmp_path / "b", 1)
    (tmp_path / "b" / ".metadata").write_bytes(b"\x80\x04garbage")
    rc, _, err = run_cli("inspect", str(tmp_path / "b"))
    assert rc == 2 and "not a readable DCP metadata file" in err


def test_dcp_metadata_never_executes_and_items_stay_in_the_folder(tmp_path):
    import pickle

    from optinspect.state.loaded import StateLoadError
    from optinspect.state.mapped import CorruptData

    _dcp_save(tmp_path / "a", 1)

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    import os

    (tmp_path / "a" / ".metadata").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(StateLoadError, match="not part of a checkpoint's metadata"):
        load_state(str(tmp_path / "a"))
    assert not (tmp_path / "pwned").exists()

    _dcp_save(tmp_path / "b", 1)
    meta = (tmp_path / "b" / ".metadata").read_bytes()
    # same length, so the pickle stays valid
    (tmp_path / "b" / ".metadata").write_bytes(meta.replace(b"__0_0.distcp", b"../00.distcp"))
    with pytest.raises((StateLoadError, CorruptData), match="not a .distcp file of the folder"):
        build_report(load_state(str(tmp_path / "b")))


def test_hf_trainer_checkpoint_is_named_by_the_trainers_own_grouping(tmp_path):
    """The Trainer's optimizer holds the decayed parameters, then the others: the names must be the ones its own
    optimizer has at each index (the sorted model.safetensors would give wrong ones)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tf = pytest.importorskip("transformers")
        cfg = tf.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                             num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32,
                             tie_word_embeddings=False)
        torch.manual_seed(0)
        model = tf.LlamaForCausalLM(cfg)
        data = [{"input_ids": torch.randint(0, 64, (8,)), "labels": torch.randint(0, 64, (8,))} for _ in range(4)]
        args = tf.TrainingArguments(output_dir=str(tmp_path / "run"), per_device_train_batch_size=2, max_steps=2,
                                    save_steps=2, report_to=[], use_cpu=True, weight_decay=0.01,
                                    disable_tqdm=True)
        trainer = tf.Trainer(model=model, args=args, train_dataset=data)
        trainer.train()
    by_id = {id(p): n for n, p in model.named_parameters()}
    truth = [by_id[id(p)] for g in trainer.optimizer.param_groups for p in g["params"]]
    report = build_report(load_state(str(tmp_path / "run")))
    assert [r.name for r in report.params] == truth
    assert report.names_from.startswith("HF Trainer rule (LlamaForCausalLM")
    assert truth != sorted(truth)  # the order the safetensors header has would have been wrong
    # --model with the checkpoint's own (sorted) model file: the Trainer's rule still wins
    folder = next((tmp_path / "run").glob("checkpoint-*"))
    with_model = build_report(load_state(str(tmp_path / "run"), model=str(folder / "model.safetensors")))
    assert [r.name for r in with_model.params] == truth


def test_lightning_and_accelerate_in_json_and_diff(tmp_path, run_cli):
    import json

    path, _ = _lightning_checkpoint(tmp_path, 2)
    rc, out, _ = run_cli("inspect", str(path), "--json", "--optimizer", "1")
    assert rc == 0 and json.loads(out)["family"] == "SGD"
    rc, out, _ = run_cli("diff", str(path), str(path), "--json")
    assert rc == 0 and all(d["rel"] == 0 for r in json.loads(out)["params"] for d in r["drifts"])
