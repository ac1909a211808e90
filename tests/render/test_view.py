"""The state table's columns (shared by `inspect` and the TUI) and how `inspect` fits them to a terminal."""

import re

import pytest
import torch
from rich.console import Console

import optinspect
from optinspect.render.state import fit_columns, render
from optinspect.render.view import SORTS, STATE_COLUMNS, PendingRow, sort_rows
from optinspect.state.analyse import build_report
from optinspect.state.load import load_state
from optinspect.state.report import ParamReport

from ..state.test_load import trained

COL = {c.title: c for c in STATE_COLUMNS}


def _row(**kw) -> ParamReport:
    base = dict(index=0, name="blocks.0.attn.qkv.weight", group=0, shape=[3072, 1024], family="SCORN", step=7,
                counters={})
    return ParamReport(**{**base, **kw})


def test_missing_values_read_pending_while_computing_and_dash_once_computed():
    pending = PendingRow(0, "blocks.0.attn.qkv.weight", 0, [3072, 1024])
    done = _row(step=None)
    for title in ("step", "m RMS", "v RMS", "update", "quant", "resets", "dtype"):
        assert COL[title].text(pending) == "…", title
        assert COL[title].text(done) == "-", title


@pytest.mark.parametrize("counters,shown", [({"times_zero": 2, "steps_since_reset": 37}, "2 +37"),
                                            ({"times_reset": 0, "steps_since_reset": 4}, "0 +4"),
                                            ({"steps_since_reset": 4}, "- +4"), ({}, "-")])
def test_resets_column_says_resets_then_steps_since(counters, shown):
    assert COL["resets"].text(_row(counters=counters)) == shown


def _report(tmp_path, table):
    torch.manual_seed(0)
    _, opt = trained(lambda params: optinspect.build_optimizer(params, table), steps=4)
    torch.save(opt.state_dict(), tmp_path / "s.pt")
    return build_report(load_state(str(tmp_path / "s.pt")))


def test_columns_that_never_apply_are_left_out(tmp_path):
    # Adafactor without beta1: no first moment, no update scale, no resets, no 8-bit error
    rep = _report(tmp_path, {"type": "adafactor", "lr": 1e-3, "scale_parameter": False, "relative_step": False})
    shown, hidden = fit_columns(rep.params, 200)
    titles = [c.title for c in shown]
    assert hidden == [] and titles[0] == "name" and "v RMS" in titles
    assert not {"m RMS", "update", "resets", "quant", "flags"} & set(titles)
    assert COL["dtype"].text(rep.params[0]) == "float32"  # factored rows too


@pytest.mark.parametrize("width", [120, 72, 50, 36])
def test_numbers_are_never_cut_on_a_narrow_terminal(tmp_path, width):
    rep = _report(tmp_path, {"type": "persona", "lr": 1e-3, "reset_interval": 2})
    console = Console(width=width, record=True, no_color=True)
    render(rep, console, rep.params)
    out = console.export_text()
    shown, hidden = fit_columns(rep.params, width)
    assert "…" not in out.split("anomalies")[-1]  # no ellipsis in the table
    for r in rep.params:  # each shown figure appears whole, formatted here independently of the renderer
        expected = {"shape": "x".join(map(str, r.shape)), "dtype": "float32", "step": str(r.step),
                    "resets": f"{r.counters['times_reset']} +{r.counters['steps_since_reset']}",
                    "m RMS": format(r.first_rms, ".3g"), "v RMS": format(r.second_rms, ".3g"),
                    "update": format(r.update_scale_mean, ".3g")}
        for c in shown:
            if c.title in expected:
                text = expected[c.title]
                assert re.search(rf"(^|\s){re.escape(text)}(\s|$)", out, re.M), (c.title, text)
    if hidden:
        assert f"hidden to fit {width} columns: {', '.join(hidden)}" in " ".join(out.split())
    assert (width >= 72) == (hidden == [])


def test_sort_orders_are_the_columns_orders():
    """`inspect --sort` and the TUI sort by the same keys: largest first for the figures one hunts for, missing
    values last, checkpoint order for ties."""
    rows = [_row(index=0, name="b", first_rms=None, step=3, shape=[2]), _row(index=1, name="a", first_rms=0.5, step=None,
                                                                            shape=[8]),
            _row(index=2, name="c", first_rms=2.0, step=1, shape=[4], flags=["x"])]
    order = {name: [r.index for r in sort_rows(rows, name)] for name in SORTS}
    assert order["index"] == [0, 1, 2] and order["name"] == [1, 0, 2]
    assert order["first"] == [2, 1, 0] and order["step"] == [2, 0, 1] and order["size"] == [1, 2, 0]
    assert order["flags"] == [2, 0, 1]


def test_kahan_column_shows_the_compensation_buffer_only_where_there_is_one():
    from optinspect.render.view import applicable

    with_kahan, without = _row(kahan_rms=2.5e-9), _row(index=1)
    assert COL["kahan"].text(with_kahan) == "2.5e-09" and COL["kahan"].text(without) == "-"
    assert "kahan" in [c.title for c in applicable(STATE_COLUMNS, [with_kahan, without])]
    assert "kahan" not in [c.title for c in applicable(STATE_COLUMNS, [without])]
