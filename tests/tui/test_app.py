"""The TUI driven by Textual's Pilot on real state files made in the test."""

import asyncio
import time

import pytest

from optinspect.tui.app import make_app
from optinspect.tui.widgets.detail import DetailPane
from optinspect.tui.widgets.table import ParamTable

from .conftest import make_state, screen_text


async def _settle(app, pilot):
    await app.workers.wait_for_complete()
    await pilot.pause()


async def _until(pilot, condition, tries: int = 100) -> None:
    """Let the app run until `condition()` holds (or the tries run out)."""
    for _ in range(tries):
        await pilot.pause(0.02)
        if condition():
            return


@pytest.mark.parametrize("size", [(80, 24), (160, 50)])
def test_open_sort_filter_select_detail_quit(state_dir, size):
    async def run():
        app = make_app("state.pt")
        async with app.run_test(size=size) as pilot:
            await _settle(app, pilot)
            table = app.query_one(ParamTable)
            assert len(table.view) == 3 and app.report.family == "AdamW8bitKahan"
            assert [r.name for r in table.rows] == ["0/0", "0/1", "0/2"]
            titles = [c.title for c in table.columns]  # the columns that apply to an AdamW8bitKahan state
            assert "resets" not in titles and "quant" in titles and titles[:2] == ["name", "shape"]
            if size[0] >= 160:  # the last column takes the room the short names leave: the flag reads whole
                assert "nan/inf in state1" in screen_text(app)
            await pilot.press("s", "s")  # sort by shape (size)
            assert table.sort_column == 1
            assert [table.rows[i].name for i in table.view] == ["0/1", "0/2", "0/0"]  # 32 < 288 < 2048 elements
            await pilot.press("r")
            assert [table.rows[i].name for i in table.view] == ["0/0", "0/2", "0/1"]
            await pilot.press("slash", "0", "/", "2", "enter")
            await pilot.pause()
            assert [table.rows[i].name for i in table.view] == ["0/2"]
            await pilot.press("escape")
            await pilot.pause()
            assert len(table.view) == 3
            await pilot.press("home", "enter")
            await pilot.pause()
            pane = app.query_one(DetailPane)
            assert pane.has_class("open")
            text = screen_text(app)
            assert "state1" in text and "8-bit" in text and "dequantized" in text
            await pilot.press("n")  # jump to the flagged tensor (nan in 0/1's state1)
            assert table.current_row.name == "0/1" and any("nan" in f for f in table.current_row.flags)
            await pilot.press("question_mark")
            await pilot.pause()
            assert app.screen.__class__.__name__ == "HelpScreen"
            await pilot.press("escape")
            await pilot.press("t")
            await pilot.pause()
            assert not app.current_theme.dark
            await pilot.press("q")
        assert app.return_code in (0, None)

    asyncio.run(run())


def test_ui_answers_keys_while_statistics_are_loading(tmp_path, monkeypatch):
    import optinspect.state.analyse as report_mod

    monkeypatch.chdir(tmp_path)
    make_state(str(tmp_path), n_extra=40)
    real = report_mod._param

    def slow(*a, **k):  # statistics that take a while: the UI must not wait for them
        time.sleep(0.05)
        return real(*a, **k)

    monkeypatch.setattr(report_mod, "_param", slow)

    async def run():
        app = make_app("state.pt")
        async with app.run_test(size=(100, 30)) as pilot:
            await _until(pilot, lambda: app.query_one(ParamTable).rows, tries=50)
            assert not app.loading_done
            before = app.keys_seen
            await pilot.press("down", "down")
            assert app.keys_seen == before + 2 and app.query_one(ParamTable).cursor == 2
            assert not app.loading_done  # handled while the worker is still computing
            await _settle(app, pilot)
            assert app.loading_done and all(r.family == "AdamW8bitKahan" for r in app.query_one(ParamTable).rows)
            await pilot.press("q")

    asyncio.run(run())


def test_compare_mode_shows_deltas(tmp_path, monkeypatch):
    import torch

    monkeypatch.chdir(tmp_path)
    a = torch.load(make_state(str(tmp_path)), weights_only=True)
    b = {"optimizer": a["optimizer"], "step": 5}
    b["optimizer"]["state"][0]["shift"] = b["optimizer"]["state"][0]["shift"] + 1.0
    torch.save(b, tmp_path / "b.pt")

    async def run():
        app = make_app("state.pt", "b.pt")
        async with app.run_test(size=(100, 30)) as pilot:
            await _settle(app, pilot)
            rows = app.query_one(ParamTable).rows
            assert rows[0].name == "0/0" and any(d.key == "shift" and d.rel > 0 for d in rows[0].drifts)
            assert all(d.rel == 0 for d in rows[1].drifts)
            await pilot.press("enter")
            await pilot.pause()
            assert "shift" in screen_text(app) and "step 4" in screen_text(app)
            await pilot.press("q")

    asyncio.run(run())


def test_unreadable_state_exits_2(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.pt").write_bytes(b"PK\x03\x04junk")

    async def run():
        app = make_app("bad.pt")
        async with app.run_test() as pilot:
            for _ in range(200):
                await pilot.pause(0.02)
                if app.return_code is not None:
                    break
        return app.return_code

    assert asyncio.run(run()) == 2


def _stepped_state(path: str, table: dict, steps: int) -> None:
    """The state of a bundled optimizer built from `table` after `steps` steps on a matrix and a vector."""
    import torch

    import optinspect

    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(16, 8) * 0.1), torch.nn.Parameter(torch.randn(8) * 0.1)]
    opt = optinspect.build_optimizer(params, table)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape)
        opt.step()
    torch.save(opt.state_dict(), path)


def test_summary_and_rows_of_a_scorn_state_with_resets(tmp_path, monkeypatch):
    """The summary shows hyper-parameters as written (beta2 = 0.9999 once read "1"), the table the reset
    counters as "resets +since" and the group's step count (SCORN holds state['step'] at 0 under resets)."""
    monkeypatch.chdir(tmp_path)
    # resets on steps 3, 5 and 7 (spec 4.4); the saved counter is the next step's value, 2
    _stepped_state("scorn.pt", {"type": "scorn", "lr": 1e-4, "reset_interval": 3}, steps=7)

    async def run():
        app = make_app("scorn.pt")
        async with app.run_test(size=(120, 24)) as pilot:
            await _settle(app, pilot)
            text = screen_text(app)
            assert "betas=(0.95, 0.9999)" in text and "lr=0.0001" in text
            rows = [line.split() for line in text.splitlines() if line.strip().startswith("0/")]
            assert len(rows) == 2 and all(r[3:6] == ["7", "3", "+2"] for r in rows), rows
            titles = [c.title for c in app.query_one(ParamTable).columns]
            assert "resets" in titles and "quant" not in titles  # fp32 SCORN: no quantized state
            await pilot.press("q")

    asyncio.run(run())


def test_report_notes_reach_the_summary(tmp_path, monkeypatch):
    """What inspect prints as notes shows in the summary too: here Persona's step counter restarting at resets
    (reset_interval = 3: resets on steps 3 and 5, so 2 after 5 steps, spec 6.2)."""
    monkeypatch.chdir(tmp_path)
    _stepped_state("persona.pt", {"type": "persona", "lr": 1e-4, "reset_interval": 3}, steps=5)

    async def run():
        app = make_app("persona.pt")
        async with app.run_test(size=(160, 30)) as pilot:
            await _settle(app, pilot)
            text = " ".join(screen_text(app).split())
            assert "notes PersonaOptimizer starts its step counter again" in text and "(2 so far)" in text
            await pilot.press("q")

    asyncio.run(run())


def test_failing_statistics_end_with_the_error_not_an_endless_computing(tmp_path, monkeypatch):
    import optinspect.state.analyse as report_mod

    monkeypatch.chdir(tmp_path)
    make_state(str(tmp_path), n_extra=2)

    def broken(*a, **k):
        raise ValueError("a state this engine cannot read")

    monkeypatch.setattr(report_mod, "_param", broken)

    async def run():
        app = make_app("state.pt")
        async with app.run_test(size=(100, 30)) as pilot:
            await _until(pilot, lambda: app.loading_done)
            assert app.loading_done
        assert app.return_code == 2

    asyncio.run(run())


@pytest.mark.parametrize("layout", ["dcp", "torchao"])
def test_tui_opens_the_layouts_libraries_write(layout, tmp_path):
    """A DCP folder and a torchao 8-bit state open with every row filled in (the statistics engine reads them)."""
    import warnings

    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(128, 64), torch.nn.Linear(64, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if layout == "torchao":
            ao = pytest.importorskip("torchao.optim")
            opt = ao.AdamW8bit(model.parameters(), lr=1e-3)
        else:
            opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        for _ in range(2):
            model(torch.randn(4, 128)).square().mean().backward()
            opt.step()
            opt.zero_grad()
        if layout == "torchao":
            target = tmp_path / "optimizer.pt"
            torch.save(opt.state_dict(), target)
            family = "torchao AdamW (8-bit)"
        else:
            dcp = pytest.importorskip("torch.distributed.checkpoint")
            from torch.distributed.checkpoint.state_dict import get_state_dict

            msd, osd = get_state_dict(model, opt)
            target = tmp_path / "dcp"
            dcp.save({"model": msd, "optimizer": osd}, checkpoint_id=str(target))
            family = "Adam/AdamW"

    async def run():
        app = make_app(str(target))
        async with app.run_test(size=(120, 30)) as pilot:
            await _settle(app, pilot)
            rows = app.query_one(ParamTable).rows
            assert app.loading_done and len(rows) == 4 and rows[0].family == family
            assert all(r.first_rms is not None for r in rows)
            await pilot.press("q")
        assert app.return_code in (0, None)

    asyncio.run(run())


def test_rows_show_before_a_damaged_archive_fails_its_check(tmp_path, monkeypatch):
    """The TUI shows names and shapes before it reads where the bytes lie; an archive whose tensors are not
    there then ends with the error, exit 2, and no statistics."""
    import torch

    from ..archives import repack

    monkeypatch.chdir(tmp_path)
    make_state(str(tmp_path), n_extra=2)
    repack(tmp_path / "state.pt", tmp_path / "bad.pt", drop=["/data/1"])
    torch.load(tmp_path / "state.pt", weights_only=True)  # the intact one is a real checkpoint
    shown = []

    from optinspect.tui.app import StateApp

    set_rows, failed = ParamTable.set_rows, StateApp._failed  # patched before the app starts: loading is quick
    monkeypatch.setattr(ParamTable, "set_rows", lambda self, rows: (shown.append(len(rows)), set_rows(self, rows)))
    monkeypatch.setattr(StateApp, "_failed", lambda self, message: (shown.append(message), failed(self, message)))

    async def run():
        app = make_app("bad.pt")
        async with app.run_test(size=(100, 30)) as pilot:
            await _until(pilot, lambda: app.return_code is not None, tries=300)
            assert app.report is None
        return app.return_code

    assert asyncio.run(run()) == 2
    assert shown == [5, "bad.pt: a tensor's data (1) is missing from the file"]
