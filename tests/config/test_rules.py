"""Every interaction rule fires on a table made to trigger it and stays silent on the clean neighbour."""

import pytest

from optinspect.config import rules  # noqa: F401 - registers the rules
from optinspect.config.registry import RULES
from optinspect.config.rules import reset_steps

from .helpers import codes, find

# code -> (config that fires it, the same config fixed), plus validate options
CASES = {
    "OPT201": ("[optimizer]\ntype='adafactor'\nlr=1e-4\nscale_parameter=false",
               "[optimizer]\ntype='adafactor'\nlr=1e-4\nscale_parameter=false\nrelative_step=false"),
    "OPT202": ("[optimizer]\ntype='adafactor'\nscale_parameter=false",
               "[optimizer]\ntype='adafactor'\nscale_parameter=false\nrelative_step=false\nlr=1e-4"),
    "OPT203": ("[optimizer]\ntype='adafactor'\nrelative_step=false\nscale_parameter=false",
               "[optimizer]\ntype='adafactor'\nrelative_step=false\nscale_parameter=false\nlr=1e-4"),
    "OPT204": ("[optimizer]\ntype='adafactor'\nrelative_step=false\nlr=1e-4\nscale_parameter=false\nwarmup_init=true",
               "[optimizer]\ntype='adafactor'\nrelative_step=false\nlr=1e-4\nscale_parameter=false"),
    "OPT205": ("[optimizer]\ntype='adafactor'\nrelative_step=false\nlr=1e-4",
               "[optimizer]\ntype='adafactor'\nrelative_step=false\nlr=1e-4\nscale_parameter=false"),
    "OPT206": ("[optimizer]\ntype='adafactor'\nrelative_step=false\nlr=1e-4\nscale_parameter=false\nbeta1=0",
               "[optimizer]\ntype='adafactor'\nrelative_step=false\nlr=1e-4\nscale_parameter=false\nbeta1=0.9"),
    "OPT207": ("[optimizer]\ntype='adafactor'\nrelative_step=false\nlr=1e-4\nscale_parameter=false\ndecay_rate=0.8",
               "[optimizer]\ntype='adafactor'\nrelative_step=false\nlr=1e-4\nscale_parameter=false\ndecay_rate=-0.8"),
    "OPT208": ("[optimizer]\ntype='adafactor'\nrelative_step=false\nlr=1e-4\nscale_parameter=false\neps=1e-30",
               "[optimizer]\ntype='adafactor'\nrelative_step=false\nlr=1e-4\nscale_parameter=false\neps=[1e-30, 1e-3]"),
    "OPT209": ("gradient_clipping=1.0\n[optimizer]\ntype='adafactor'\nrelative_step=false\nlr=1e-4\n"
               "scale_parameter=false",
               "gradient_clipping=0.0\n[optimizer]\ntype='adafactor'\nrelative_step=false\nlr=1e-4\n"
               "scale_parameter=false"),
    "OPT210": ("[optimizer]\ntype='adafactor'\nrelative_step=false\nlr=1e-4\nscale_parameter=false\nclip_threshold=0",
               "[optimizer]\ntype='adafactor'\nrelative_step=false\nlr=1e-4\nscale_parameter=false\nclip_threshold=1"),
    "OPT211": ("[model]\ndtype='bfloat16'\n[optimizer]\ntype='adafactor'\nrelative_step=false\nlr=1e-4\nscale_parameter=false",
               "[model]\ndtype='bfloat16'\n[optimizer]\ntype='adafactor'\nrelative_step=false\nlr=1e-4\nscale_parameter=false\n"
               "fp32_state_on_load=true"),
    "OPT301": ("[optimizer]\ntype='Prodigy'\nlr=1e-4", "[optimizer]\ntype='Prodigy'\nlr=1.0"),
    "OPT302": ("warmup_steps=100\n[optimizer]\ntype='Prodigy'", "warmup_steps=100\n[optimizer]\ntype='Prodigy'\n"
               "safeguard_warmup=true"),
    "OPT303": ("[optimizer]\ntype='Prodigy'\nuse_bias_correction=true", "[optimizer]\ntype='Prodigy'\nbias_correction=true"),
    "OPT304": ("[optimizer]\ntype='Prodigy'\nweight_decay=0.05\nweight_decouple=false",
               "[optimizer]\ntype='Prodigy'\nweight_decay=0.05"),
    "OPT305": ("[optimizer]\ntype='Prodigy'\ngradient_release=true", "[optimizer]\ntype='Prodigy'"),
    "OPT306": ("[optimizer]\ntype='Prodigy'",
               "[optimizer]\ntype='Prodigy'\nsafeguard_warmup=true\nbias_correction=true"),
    "OPT401": ("[adapter]\ndtype='bfloat16'\n[optimizer]\ntype='adamw'", "[adapter]\ndtype='float32'\n[optimizer]\ntype='adamw'"),
    "OPT402": ("[model]\ndtype='float32'\n[optimizer]\ntype='scorn'\nstochastic_fp=true",
               "[model]\ndtype='bfloat16'\n[optimizer]\ntype='scorn'\nstochastic_fp=true"),
    "OPT403": ("[optimizer]\ntype='AdamW8bitKahan'\nweight_decay=0", "[optimizer]\ntype='AdamW8bitKahan'\nweight_decay=0\n"
               "stabilize=false"),
    "OPT404": ("[optimizer]\ntype='AdamW8bitKahan'\nstabilize=false\nweight_decay=0.01",
               "[optimizer]\ntype='AdamW8bitKahan'\nstabilize=false\nweight_decay=0"),
    "OPT405": ("[optimizer]\ntype='adamw8bit'\npercentile_clipping=100", "[optimizer]\ntype='adamw8bit'"),
    "OPT406": ("[adapter]\ndtype='bfloat16'\n[optimizer]\ntype='scorn'\nstochastic_fp=false",
               "[adapter]\ndtype='bfloat16'\n[optimizer]\ntype='scorn'"),
    "OPT407": ("[adapter]\ndtype='float16'\n[optimizer]\ntype='persona'", "[adapter]\ndtype='bfloat16'\n[optimizer]\ntype='persona'"),
    "OPT501": ("[optimizer]\ntype='scorn'\nreset_interval=10", "[optimizer]\ntype='scorn'\nreset_interval=0"),
    "OPT502": ("[optimizer]\ntype='remaster'\nreset_increment=100\northograd=false",
               "[optimizer]\ntype='remaster'\northograd=false"),
    "OPT503": ("[optimizer]\ntype='scorn'\nfocus_ratio=0.5", "[optimizer]\ntype='scorn'\nfocus_ratio=0.1"),
    "OPT504": ("[optimizer]\ntype='persona'\nreset_interval=100", "[optimizer]\ntype='persona'\nreset_interval=100\n"
               "exact_reset_period=true"),
    "OPT505": ("[optimizer]\ntype='scorn'\ncautious_min=2.0", "[optimizer]\ntype='scorn'\ncautious_min=0.5"),
    "OPT506": ("[optimizer]\ntype='scorn'\nconstrain=true\nweight_decay=0.01", "[optimizer]\ntype='scorn'\nconstrain=true"),
    "OPT507": ("[adapter]\ntype='lora'\n[optimizer]\ntype='remaster'", "[adapter]\ntype='lora'\n[optimizer]\n"
               "type='remaster'\northograd=false"),
    "OPT601": ("pipeline_stages=1\n[optimizer]\ntype='adamw'\ngradient_release=true",
               "pipeline_stages=2\n[optimizer]\ntype='adamw'\ngradient_release=true"),
    "OPT602": ("gradient_accumulation_steps=4\n[optimizer]\ntype='adamw'\ngradient_release=true\nbetas=[0.9, 0.99]",
               "gradient_accumulation_steps=1\n[optimizer]\ntype='adamw'\ngradient_release=true\nbetas=[0.9, 0.99]"),
    "OPT603": ("gradient_clipping=1.0\n[optimizer]\ntype='adamw'\ngradient_release=true",
               "gradient_clipping=0.0\n[optimizer]\ntype='adamw'\ngradient_release=true"),
    "OPT408": ("[optimizer]\ntype='adamw'\nlr=1e-4\neps=0", "[optimizer]\ntype='adamw'\nlr=1e-4\neps=1e-8"),
    "OPT704": ("[optimizer]\ntype='sgd'\nlr=1e-3\nnesterov=true", "[optimizer]\ntype='sgd'\nlr=1e-3\nnesterov=true\nmomentum=0.9"),
    "OPT705": ("[optimizer]\ntype='adamw'\nlr=1e-4\nbetas=[0, 0]", "[optimizer]\ntype='adamw'\nlr=1e-4\nbetas=[0.0, 0.0]"),
    "OPT115": ("[optimizer]\ntype='adamw8bit'\nweight_decay=0.01", "[optimizer]\ntype='adamw8bit'\nlr=1e-4"),
    "OPT116": ("learning_rate=2e-4\n[optimizer]\ntype='adamw'\nlr=1e-4", "epochs=1\n[optimizer]\ntype='adamw'\nlr=1e-4"),
    "OPT701": ("[optimizer]\ntype='automagic'\nlr=1e-2", "[optimizer]\ntype='automagic'\nlr=1e-6"),
    "OPT702": ("[adapter]\ndtype='bfloat16'\n[optimizer]\ntype='adamw_optimi'\nlr=1e-4\nkahan_sum=false",
               "[adapter]\ndtype='bfloat16'\n[optimizer]\ntype='adamw_optimi'\nlr=1e-4"),
    "OPT703": ("[optimizer]\ntype='automagic'\nmin_lr=1e-3\nmax_lr=1e-4", "[optimizer]\ntype='automagic'\nmin_lr=1e-7\nmax_lr=1e-4"),
}
OPTIONS = {"OPT601": {"world_size": 2}}
# Findings graded above their rule's catalogue severity by the value at hand (every other finding must carry
# its rule's severity): clip_threshold = 0 stops training and turns zero-gradient tensors NaN.
ESCALATED = {"OPT210": "error"}


def test_every_rule_function_has_a_case():
    with_check = {c for c, r in RULES.items() if r.check is not None}
    assert with_check == set(CASES), f"missing cases: {with_check - set(CASES)}; stale: {set(CASES) - with_check}"


@pytest.mark.parametrize("code", sorted(CASES))
def test_rule_fires(code):
    bad, _ = CASES[code]
    hits = find(bad, code, **OPTIONS.get(code, {}))
    assert hits, f"{code} did not fire on:\n{bad}\ngot {codes(bad, **OPTIONS.get(code, {}))}"
    d = hits[0]
    want = ESCALATED.get(code, RULES[code].severity.value)
    assert d.severity.value == want, f"{code} fired as {d.severity.value}, expected {want}"
    assert d.message.strip() and d.hint.strip() and d.message != d.hint
    assert d.line >= 1 and d.column >= 1


@pytest.mark.parametrize("code", sorted(CASES))
def test_rule_silent_on_clean_table(code):
    _, good = CASES[code]
    assert code not in codes(good, **OPTIONS.get(code, {}))


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
