"""SVG snapshots of the main screens (pytest-textual-snapshot); review changes with `--snapshot-update`."""

import pytest

from optinspect.tui.app import make_app

pytest.importorskip("pytest_textual_snapshot")


async def settled(pilot):
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


def _run_before(*keys):
    async def run(pilot):
        await settled(pilot)
        if keys:
            await pilot.press(*keys)
            await pilot.pause()

    return run


@pytest.mark.parametrize("size", [(80, 24), (140, 40)], ids=["80x24", "140x40"])
def test_main_view(snap_compare, state_dir, size):
    assert snap_compare(make_app("state.pt"), terminal_size=size, run_before=_run_before())


def test_detail_pane(snap_compare, state_dir):
    assert snap_compare(make_app("state.pt"), terminal_size=(140, 40), run_before=_run_before("n", "enter"))


def test_help_screen(snap_compare, state_dir):
    assert snap_compare(make_app("state.pt"), terminal_size=(100, 30), run_before=_run_before("question_mark"))


def test_light_theme_sorted(snap_compare, state_dir):
    assert snap_compare(make_app("state.pt"), terminal_size=(100, 30), run_before=_run_before("t", "s", "s", "r"))
