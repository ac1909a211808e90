"""What the trainers' TOML reader (the `toml` package, 0.10) rejects in files that tomlkit accepts, checked against
that reader running: OPT007/OPT008 fire exactly when `toml.loads` fails. On a mixed array it says "Not a homogeneous
array", or trips over it otherwise (IndexError, a bad int literal): the trainer cannot read the file either way."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from optinspect.config.validate import validate_text

toml = pytest.importorskip("toml")

scalars = st.sampled_from(["0", "1", "-0", "1_000", "0x10", "0.999", "1e-3", "-2.5", "inf", "nan", "true", "false",
                           "'a'", '"b"', "1979-05-27", "{ a = 1 }", "{ b = [1, 2.0] }", "{ c = [[1], [2]] }",
                           "{ d = { e = [[1], 2] } }", "{ f = [{ a = 1 }, { a = 2 }] }",
                           "{ g = { h = [{ a = 1 }, { a = 2 }] } }"])
arrays = st.recursive(st.lists(scalars, max_size=4).map(lambda xs: "[" + ", ".join(xs) + "]"),
                      lambda inner: st.lists(st.one_of(inner, scalars), max_size=3).map(
                          lambda xs: "[" + ", ".join(xs) + "]"), max_leaves=6)
places = st.sampled_from(["[optimizer]\ntype = 'adamw'\nbetas = {}\n", "lr = {}\n[optimizer]\ntype = 'adamw'\n",
                          "[model]\nlayers = {}\n", "[optimizer]\ntype = 'scorn'\nx = {{ y = {} }}\n",
                          "[[datasets]]\nres = {}\n", "a = {{ b = {{ c = {} }}, d = 1 }}\n",
                          "[[datasets]]\nx = {{ res = {} }}\n", "a.b = {}\n", "[t]\nq = [{{ a = {} }}, {{ a = 1 }}]\n",
                          "a = {{ b = {} }}\n"])


def _toml_rejects(text: str) -> bool:
    try:
        toml.loads(text)
    except Exception:  # noqa: BLE001 - any failure of the trainer's reader is a file the trainer cannot read
        return True
    return False


def _same(a, b) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


def _trainer_misreads(text: str, data: dict) -> bool:
    """The trainer's reader fails on the file, or reads something else than the file says."""
    try:
        got = toml.loads(text)
    except Exception:  # noqa: BLE001 - any failure of the trainer's reader is a file the trainer cannot read
        return True
    return not _same(got, data)


@settings(max_examples=1500, deadline=None)
@given(places, arrays)
def test_opt007_fires_exactly_when_the_trainers_reader_rejects_the_array(place, array):
    text = place.format(array)
    report = validate_text("c.toml", text)
    if report.data is None:  # tomlkit itself refuses it: OPT001 already, whatever toml says
        return
    fired = any(d.code in ("OPT007", "OPT008") for d in report.diagnostics)
    assert fired == _trainer_misreads(text, report.data), text


@pytest.mark.parametrize("text,line,hint", [
    ("[optimizer]\ntype = 'adamw'\nbetas = [0, 0.999]\n", 3, "write `betas = [0.0, 0.999]`"),
    ("[optimizer]\ntype = 'adafactor'\neps = [0, 1e-3]\n", 3, "write `eps = [0.0, 0.001]`"),
    ("warmup = [1, 'a']\n[optimizer]\ntype = 'adamw'\n", 1, "same kind"),
])
def test_mixed_arrays_are_located_with_a_fix_the_reader_accepts(text, line, hint):
    (d,) = [d for d in validate_text("c.toml", text).diagnostics if d.code == "OPT007"]
    assert d.line == line and hint in d.hint and d.severity.value == "error"
    if "`" in d.hint:
        fixed = text.splitlines()
        fixed[line - 1] = d.hint.split("`")[1]
        assert not _toml_rejects("\n".join(fixed) + "\n")


@pytest.mark.parametrize("text", ["x = { y = [[1], [2]] }\n", "[model]\nx = { y = [[1.0], [2.0, 3.0]] }\n",
                                  "a = { b = { c = [[1], []] } }\n"])
def test_nested_arrays_in_inline_tables_are_caught(text):
    (d,) = [d for d in validate_text("c.toml", text).diagnostics if d.code == "OPT008"]
    assert d.severity.value == "error" and "[table]" in d.hint and _toml_rejects(text)


def test_an_array_starting_with_an_inline_table_loses_its_other_elements():
    text = "[optimizer]\ntype = 'adamw'\nbetas = [{ a = 1 }, 0.9, 0.999]\n"
    (d,) = [d for d in validate_text("c.toml", text).diagnostics if d.code == "OPT007"]
    assert "silently drops the other 2 elements" in d.message and toml.loads(text)["optimizer"]["betas"] == [{"a": 1}]
