"""Random tables and random bytes: validate only ever returns diagnostics."""


import tomlkit
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from optinspect.config import schemas
from optinspect.config.validate import validate_table, validate_text

KEYS = sorted({k for n in schemas.available() for k in schemas.load(n)["properties"]} | {"weird key", "x.y", ""})
TYPES = ["adafactor", "scorn", "remaster", "persona", "AdamW8bitKahan", "Prodigy", "prodigy", "adamw", "sgd",
         "automagic", "adamw_optimi", "nonsense", "Lion"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True),
                    st.text(max_size=8), st.sampled_from(["None", "0.01", "true", "inf", "nan"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner,
                                                                                             max_size=3), max_leaves=6)
tables = st.dictionaries(st.sampled_from(KEYS), values, max_size=8).flatmap(
    lambda d: st.sampled_from(TYPES).map(lambda t: {**d, "type": t}) | st.just(d))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tables, st.dictionaries(st.sampled_from(["warmup_steps", "gradient_clipping", "pipeline_stages",
                                                "gradient_accumulation_steps", "model", "adapter"]), values, max_size=3))
def test_random_tables_only_produce_diagnostics(table, config):
    for d in validate_table(table, config):
        assert d.code.startswith("OPT") and d.message


def _toml(table):
    """The table as a TOML document (TOML has no null: None values are left out)."""
    clean = {k: _strip(v) for k, v in table.items() if v is not None and k}
    return tomlkit.dumps({"optimizer": clean})


def _strip(v):
    if isinstance(v, list):
        return [_strip(x) for x in v if x is not None]
    if isinstance(v, dict):
        return {k: _strip(x) for k, x in v.items() if x is not None and k}
    return v


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tables)
def test_random_documents_only_produce_located_diagnostics(table):
    try:
        text = _toml(table)
    except Exception:  # noqa: BLE001 - tomlkit cannot write every generated value; not what we test
        return
    report = validate_text("f.toml", text)
    lines = text.count("\n") + 1
    for d in report.diagnostics:
        assert 1 <= d.line <= lines and d.column >= 1


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("[]{}=,.'\"#\n\r\t abc01-_eEinf+")), max_size=80))
def test_random_text_never_raises(text):
    validate_text("f.toml", text)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tables, st.sampled_from(schemas.available()))
def test_quickcheck_agrees_with_jsonschema(table, name):
    from jsonschema import Draft4Validator

    from optinspect.config import quickcheck

    schema = schemas.load(name)
    assert quickcheck.valid(table, schema) == Draft4Validator(schema).is_valid(table)


def test_quickcheck_refuses_keywords_it_does_not_know():
    import pytest

    from optinspect.config import quickcheck

    with pytest.raises(quickcheck.Unsupported):
        quickcheck.valid(1, {"multipleOf": 2})
