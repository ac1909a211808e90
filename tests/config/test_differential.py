"""validate judged against the trainers running (tests/trainer_oracle.py): mutated tables of the nine types the
trainers document go through the trainer's own reader, key handling, constructors, scheduler and first steps, and
validate must agree: an error for every crash and every setting silently misread, at least a warning for every
NaN (the LoRA pair whose A gradient is zero on step 1 included), and no error on a table that runs as written.

`python tests/trainer_oracle.py --tables 6000 --seed N` runs the same comparison at scale; with
OPTINSPECT_TRAINER_CHECKOUT pointing at a diffusion-chroma checkout the trainer's own optimizer classes are used.
"""

from __future__ import annotations

import collections
import os

import pytest

from .. import trainer_oracle as oracle

KINDS = ("missed crash", "silent NaN", "missed misread", "false error")


def _report(result: dict) -> str:
    lines = []
    for (trainer, kind), items in sorted(result["examples"].items()):
        for text, outcome, codes in items[:3]:
            lines.append(f"{trainer} {kind}: {outcome.stage} {outcome.error[:100]} nan={outcome.nan} "
                         f"misread={outcome.misread} validate={codes}\n{text}")
    return "\n".join(lines)


@pytest.mark.parametrize("trainer", ["upstream", "chroma"])
def test_validate_agrees_with_the_trainer(trainer):
    result = oracle.compare(oracle.generate(270, seed=20261130), (trainer,))
    counts = result["counts"]
    assert not any(counts[(trainer, k)] for k in KINDS), _report(result)
    # the sample exercises every outcome, so the comparison above can fail
    for outcome in ("ok", "crash", "nan", "misread"):
        assert counts[(trainer, outcome)] > 0, outcome


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_validate_agrees_with_the_trainer_at_scale(seed):
    result = oracle.compare(oracle.generate(3000, seed=seed), ("upstream", "chroma"))
    assert not any(result["counts"][(t, k)] for t in ("upstream", "chroma") for k in KINDS), _report(result)


def test_a_missing_rule_is_caught(monkeypatch):
    """Without the rule that knows diffusion-chroma passes beta2_half_life on, the comparison finds crashes."""
    from optinspect.config import registry

    rules = registry.all_rules()
    monkeypatch.setitem(rules, "OPT117", rules["OPT117"].__class__(**{**rules["OPT117"].__dict__, "check": None}))
    tables = [(t, text) for t, text in oracle.generate(400, seed=7) if "beta2_half_life" in text]
    result = oracle.compare(tables, ("chroma",))
    assert result["counts"][("chroma", "missed crash")] > 0


@pytest.mark.skipif(not os.environ.get("OPTINSPECT_TRAINER_CHECKOUT"), reason="needs a diffusion-chroma checkout "
                    "(OPTINSPECT_TRAINER_CHECKOUT=path)")
def test_emulation_matches_the_original(monkeypatch):
    """Where the bundled classes stand in for the trainer's (no checkout), the oracle emulates two differences;
    both are checked against the originals here."""
    def outcomes() -> dict:
        out = {}
        for _, text in oracle.generate(600, seed=3):
            try:
                out[text] = oracle.run(text, "chroma")
            except oracle.NotModelled:
                continue
        return out

    with_original = outcomes()
    monkeypatch.delenv("OPTINSPECT_TRAINER_CHECKOUT")
    bundled = outcomes()
    differ = collections.Counter((bool(with_original[t].stage), bool(bundled[t].stage)) for t in with_original
                                 if bool(with_original[t].stage) != bool(bundled[t].stage))
    assert not differ, differ
