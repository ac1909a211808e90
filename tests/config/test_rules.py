"""Every interaction rule fires on a table made to trigger it and stays silent on the clean neighbour."""

import pytest

from optinspect.config.registry import all_rules
from optinspect.config.rules import reset_steps
from optinspect.config.validate import Options, validate_file

from .helpers import find

RULES = all_rules()

# Findings graded above their rule's catalogue severity by the value at hand (every other finding must carry
# its rule's severity): clip_threshold = 0 stops training and turns zero-gradient tensors NaN.
ESCALATED = {"OPT210": "error"}
# Codes without a whole-file example: OPT009 needs more than 200 findings in one file (tests/config/test_validate.py)
NO_EXAMPLE = {"OPT009"}
# `optinspect resume` codes judge a config against a saved state: tests/test_resume.py resumes for real
RESUME = {c for c, r in RULES.items() if r.kind == "resume"}
WITH_EXAMPLE = sorted(c for c in RULES if c not in NO_EXAMPLE and c not in RESUME)


def _validate(tmp_path, text: str, rule):
    """The example as a file on disk (byte-level codes such as the BOM and NUL ones are about files)."""
    path = tmp_path / "config.toml"
    path.write_bytes(text.encode("utf-8"))
    return validate_file(str(path), Options(**dict(rule.options))).diagnostics


def test_every_code_has_a_bad_and_a_good_example():
    missing = [c for c in WITH_EXAMPLE if not (RULES[c].bad and RULES[c].good)]
    assert not missing, f"codes without examples: {missing}"
    assert all(not (RULES[c].bad or RULES[c].good) for c in NO_EXAMPLE)
    assert RESUME == {f"OPT61{i}" for i in range(7)}


@pytest.mark.parametrize("code", WITH_EXAMPLE)
def test_bad_example_fires(code, tmp_path):
    rule = RULES[code]
    found = _validate(tmp_path, rule.bad, rule)
    hits = [d for d in found if d.code == code]
    assert hits, f"{code} did not fire on its bad example:\n{rule.bad}\ngot {[d.code for d in found]}"
    d = hits[0]
    assert d.severity.value == ESCALATED.get(code, rule.severity.value), f"{code} fired as {d.severity.value}"
    assert d.message.strip() and d.message != d.hint
    assert d.line >= 1 and d.column >= 1
    if rule.kind == "rule":  # a rule says how to fix what it found
        assert d.hint.strip()


@pytest.mark.parametrize("code", WITH_EXAMPLE)
def test_good_example_is_clean_of_the_code(code, tmp_path):
    rule = RULES[code]
    found = _validate(tmp_path, rule.good, rule)
    assert code not in [d.code for d in found], f"{code} fired on its good example:\n{rule.good}"


def test_rules_point_at_the_offending_key():
    text = "[optimizer]\ntype='Prodigy'\nsafeguard_warmup=true\nbias_correction=true\n\nlr = 1e-4\n"
    (d,) = find(text, "OPT301")
    assert (d.line, d.column) == (6, 6)


def test_reset_schedule_matches_the_measured_original():
    # spec 4.4: (5, 3) resets on 5, 12, 22; (100, 0) on 100, 199, 298
    assert reset_steps(5, 3, exact=False, horizon=30) == [5, 12, 22]
    assert reset_steps(100, 0, exact=False, horizon=300) == [100, 199, 298]
    assert reset_steps(100, 0, exact=True, horizon=300) == [100, 200, 300]


def test_reset_message_lists_the_real_steps():
    (d,) = find("[optimizer]\ntype='scorn'\nreset_interval=5\nreset_increment=3", "OPT504")
    assert "5, 12, 22" in d.message


def test_adafactor_relative_step_default_is_reported_as_default():
    (d,) = find("[optimizer]\ntype='adafactor'\nlr=1e-4\nscale_parameter=false", "OPT201")
    assert "defaults to true" in d.message
