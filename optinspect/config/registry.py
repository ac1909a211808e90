"""The rule catalogue: every diagnostic code, its severity and its documentation, in one table.

Codes are stable. `kind` says where a code is produced: `input` (reading the file), `schema` (the
JSON Schemas), `rule` (an interaction rule function in `rules.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from optinspect.diagnostics import Severity


@dataclass(frozen=True)
class Finding:
    """What a rule reports; `key` is a path inside the [optimizer] table (or absolute with `absolute`)."""

    key: tuple
    message: str
    hint: str = ""
    severity: Severity | None = None  # overrides the rule's default
    absolute: bool = False
    on_value: bool = False


@dataclass(frozen=True)
class Rule:
    code: str
    name: str
    severity: Severity
    kind: str
    summary: str
    why: str = ""
    fix: str = ""
    types: tuple[str, ...] = ()  # schema names it applies to; empty = all
    trainer_only: bool = False  # about the trainer around the optimizer (skipped by build_optimizer)
    # about the trainer's own optimizer classes, which optinspect's bundled ones (what dry-run steps) do not share
    trainer_class: bool = False
    check: Callable[..., Iterator[Finding]] | None = field(default=None, compare=False)
    # A whole config that produces the code, and the same config fixed: shown by `explain`, and the test suite
    # validates both (the code must fire on `bad` and not on `good`), so what triggers a code is said once.
    bad: str = ""
    good: str = ""
    options: tuple[tuple[str, object], ...] = ()  # validate options the examples need (e.g. world_size)

    @property
    def example(self) -> str:
        return self.bad


RULES: dict[str, Rule] = {}

# What a severity promises, the same in README.md and `optinspect explain` (a test keeps them equal). Every code is
# graded by it, and checked against the trainers running (tests/config/test_differential.py).
SEVERITY_CONTRACT = {
    Severity.ERROR: "the trainer fails (reading the file, building the optimizer, starting the scheduler, the first "
                    "steps), or it runs but silently ignores or misreads a setting (a key that **kwargs drops, a "
                    "quoted number or boolean, \"None\", a key below the wrong table header).",
    Severity.WARNING: "the run goes ahead, but is harmed or suspicious: NaN weights ahead, a run that stalls, a value "
                      "far outside practice, a library default far from diffusion practice, or a type mix-up that "
                      "behaves as written (`orthograd = 1` runs as true).",
    Severity.INFO: "advice: nothing is wrong with the run as written.",
}


def all_rules() -> dict[str, Rule]:
    """Every code: those declared below and the rule functions of `rules.py` (registered when it is imported,
    which happens here, once, for every caller)."""
    from optinspect.config import rules  # noqa: F401

    return RULES


def register(code: str, name: str, severity: str, kind: str, summary: str, *, why: str = "", bad: str = "",
             good: str = "", fix: str = "", types: tuple[str, ...] = (), trainer_only: bool = False,
             options: dict | None = None, trainer_class: bool = False) -> Callable:
    """Register a rule; used as a decorator for rule functions, or called bare for input/schema codes."""

    def deco(fn: Callable | None) -> Callable | None:
        if code in RULES:
            raise ValueError(f"duplicate rule code {code}")
        RULES[code] = Rule(code, name, Severity(severity), kind, summary, why, fix, types, trainer_only, trainer_class,
                           fn, bad, good, tuple((options or {}).items()))
        return fn

    return deco


def declare(code: str, name: str, severity: str, kind: str, summary: str, **kw) -> None:
    register(code, name, severity, kind, summary, **kw)(None)


# -- codes produced while reading the file and by the schemas -------------------------------------------
declare("OPT001", "toml-syntax", "error", "input", "The file is not valid TOML (syntax error or duplicate key).",
        why="The trainer's TOML reader stops at the same place, before anything runs.",
        bad="[optimizer]\ntype = 'adamw'\nlr = 1e-4\nlr = 2e-4",
        good="[optimizer]\ntype = 'adamw'\nlr = 2e-4",
        fix="Fix the syntax at the marked position; remove the duplicate key.")
declare("OPT002", "unreadable-input", "error", "input",
        "The file cannot be read as a TOML config (missing, binary, not UTF-8, or too large).",
        why="A config is a small UTF-8 text file; anything else is the wrong file.",
        fix="Pass the trainer config itself.",
        bad="[optimizer]\ntype = 'adamw'\nlr = 1e-4\u0000",
        good="[optimizer]\ntype = 'adamw'\nlr = 1e-4")
declare("OPT003", "byte-order-mark", "error", "input", "The file starts with a UTF-8 byte-order mark.",
        why="TOML readers (tomllib, toml) reject the BOM: the trainer fails on the first line.",
        fix="Save the file as UTF-8 without BOM.",
        bad="\ufeff[optimizer]\ntype = 'adamw'\nlr = 1e-4",
        good="[optimizer]\ntype = 'adamw'\nlr = 1e-4")
declare("OPT004", "missing-optimizer", "error", "input",
        "No [optimizer] table (reported only with --require-optimizer).",
        why="The trainer needs [optimizer] to build an optimizer.", fix="Add an [optimizer] table with a `type`.",
        bad="epochs = 10",
        good="epochs = 10\n[optimizer]\ntype = 'adamw'\nlr = 1e-4",
        options={'require_optimizer': True})
declare("OPT005", "optimizer-not-a-table", "error", "input",
        "`optimizer` is not a table (e.g. written as [[optimizer]] or `optimizer = \"adamw\"`).",
        why="The trainer indexes the value as a table; an array of tables or a string crashes it.",
        bad="[[optimizer]]\ntype = 'adamw'\nlr = 1e-4",
        good="[optimizer]\ntype = 'adamw'\nlr = 1e-4", fix="Write a single [optimizer] table.")
declare("OPT006", "foreign-optimizer-table", "error", "input",
        "The [optimizer] table is from another trainer (optimizer_type/optimizer_args, beta1/beta2 keys).",
        why="diffusion-pipe passes the table's keys straight to the constructor; another trainer's layout "
            "fails as a whole, so listing each key would only hide the real problem.",
        bad="[optimizer]\noptimizer_type = 'AdamW8bit'\noptimizer_args = ['weight_decay=0.1']",
        good="[optimizer]\ntype = 'adamw8bit'\nlr = 1e-4\nweight_decay = 0.1",
        fix="Rewrite the table as `type = '...'` plus constructor keywords (see `optinspect schema TYPE`).")
declare("OPT007", "heterogeneous-array", "error", "input",
        "An array mixes kinds of value (0 and 0.999 are an integer and a float): the trainer cannot read the file, "
        "or (an array starting with an inline table) silently drops the elements that are not tables.",
        why="diffusion-pipe reads its config with the `toml` package (0.10, TOML 0.5), which rejects arrays whose "
            "elements are not all of one kind (\"Not a homogeneous array\") before anything runs. Newer readers "
            "(tomllib, tomlkit, editors) accept them, so the file looks fine everywhere but in the trainer.",
        bad="[optimizer]\ntype = 'adamw'\nlr = 1e-4\nbetas = [0, 0.999]",
        good="[optimizer]\ntype = 'adamw'\nlr = 1e-4\nbetas = [0.0, 0.999]",
        fix="Write every number of the array as a float: `betas = [0.0, 0.999]`.")
declare("OPT008", "inline-table-nested-array", "error", "input",
        "An inline table holds an array of arrays (`{ y = [[1], [2]] }`), or an array of several tables two inline "
        "tables deep: the trainer cannot read the file.",
        why="The `toml` package (0.10) that diffusion-pipe reads configs with splits inline tables at commas and "
            "loses track inside nested arrays (\"Invalid inline table encountered\"); other readers accept it.",
        bad="[model]\nx = { y = [[1], [2]] }\n[optimizer]\ntype = 'adamw'\nlr = 1e-4",
        good="[model.x]\ny = [[1], [2]]\n[optimizer]\ntype = 'adamw'\nlr = 1e-4",
        fix="Write the inline table as a [table] section of its own.")
declare("OPT010", "other-trainer-config", "info", "input",
        "A config of another trainer (kohya sd-scripts, musubi-tuner: `optimizer_type`, `optimizer_args`): nothing "
        "in it was checked.",
        why="optinspect judges the [optimizer] table of the diffusion-pipe family; without this finding such a file "
            "would pass as \"no problems found\" although none of its settings was looked at.",
        bad="optimizer_type = 'AdamW8bit'\nlearning_rate = 2e-4",
        good="[optimizer]\ntype = 'adamw8bit'\nlr = 2e-4",
        fix="Nothing to fix in the file; `--require-optimizer` makes files without [optimizer] an error.")
declare("OPT009", "findings-truncated", "info", "input",
        "More findings in one file than are shown: the rest are counted, not listed.",
        why="A generated or corrupted file can hold hundreds of thousands of the same mistake; listing them all "
            "would take minutes and gigabytes, and the first ones say what is wrong. The count's severity is the "
            "worst of those not shown, so the exit status is the same as with every finding listed.",
        fix="Fix the findings shown and run again.")
declare("OPT101", "unknown-type", "error", "schema", "`type` does not resolve to an optimizer.",
        why="Built-in types are matched lower-cased, anything else is `getattr(pytorch_optimizer, type)`, "
            "which is case-sensitive: `prodigy` fails after the model has loaded, `Prodigy` works.",
        bad="[optimizer]\ntype = 'prodigy'",
        good="[optimizer]\ntype = 'Prodigy'", fix="Use a known type with the right casing (e.g. 'Prodigy').")
declare("OPT102", "unknown-key", "error", "schema", "A key the optimizer's constructor does not accept.",
        why="The trainer passes every key as a keyword argument: a TypeError after the model has loaded.",
        bad="[optimizer]\ntype = 'scorn'\nweight_decay_rat = 0.998",
        good="[optimizer]\ntype = 'scorn'\nweight_decay_rate = 0.998", fix="Use the suggested key, or remove it.")
declare("OPT103", "ignored-key", "error", "schema",
        "A key that a **kwargs constructor (pytorch_optimizer) silently drops.",
        why="pytorch_optimizer classes accept **kwargs and ignore what they do not know: the setting has no "
            "effect and nothing says so.", bad="[optimizer]\ntype = 'Prodigy'\nsafeguard = true",
        good="[optimizer]\ntype = 'Prodigy'\nsafeguard_warmup = true",
        fix="Use the class's own spelling (see the hint) or remove the key.")
declare("OPT104", "quoted-value", "error", "schema", "A number or boolean written as a string.",
        why="The trainer passes strings through unchanged: `\"0.01\"` reaches the constructor as text and "
            "`\"false\"` is truthy.", bad="[optimizer]\ntype = 'adamw'\nlr = 1e-4\nweight_decay = \"0.01\"",
        good="[optimizer]\ntype = 'adamw'\nlr = 1e-4\nweight_decay = 0.01", fix="Remove the quotes.")
declare("OPT105", "none-string", "error", "schema", "`None` written as a string; TOML has no null.",
        why="The README says 'set to None', but `\"None\"` is a non-empty string, not None.",
        bad="[optimizer]\ntype = 'adafactor'\nlr = 1e-4\nrelative_step = false\nscale_parameter = false\n"
            "beta1 = \"None\"",
        good="[optimizer]\ntype = 'adafactor'\nlr = 1e-4\nrelative_step = false\nscale_parameter = false",
        fix="Omit the key to get the constructor's None default.")
declare("OPT106", "out-of-range", "error", "schema", "A value outside the range the optimizer accepts.",
        why="Constructors raise (or silently produce NaN) only once the model has loaded.",
        bad="[optimizer]\ntype = 'adamw'\nlr = 1e-4\nbetas = [0.9, 1.0]",
        good="[optimizer]\ntype = 'adamw'\nlr = 1e-4\nbetas = [0.9, 0.999]",
        fix="Use a value inside the documented range.")
declare("OPT107", "wrong-type", "error", "schema", "A value of the wrong TOML type.",
        bad="[optimizer]\ntype = 'adamw'\nlr = 1e-4\nweight_decay = [0.01]",
        good="[optimizer]\ntype = 'adamw'\nlr = 1e-4\nweight_decay = 0.01", fix="Write the value in the expected type.")
declare("OPT108", "wrong-length", "error", "schema", "An array with the wrong number of elements.",
        bad="[optimizer]\ntype = 'adamw'\nlr = 1e-4\nbetas = [0.9, 0.99, 0.999]",
        good="[optimizer]\ntype = 'adamw'\nlr = 1e-4\nbetas = [0.9, 0.999]",
        fix="Write exactly the documented number of elements.")
declare("OPT109", "non-finite", "error", "schema", "`nan` or `inf` where a finite number is needed.",
        why="TOML allows nan/inf literals; an optimizer fed one produces NaN weights.",
        bad="[optimizer]\ntype = 'adamw'\nlr = nan",
        good="[optimizer]\ntype = 'adamw'\nlr = 1e-4", fix="Write a finite number.")
declare("OPT110", "missing-key", "error", "schema", "A required key is missing (`type`, or `lr` for optimi).",
        bad="[optimizer]\nlr = 1e-4",
        good="[optimizer]\ntype = 'adamw'\nlr = 1e-4", fix="Add the key.")
declare("OPT111", "misplaced-top-level-key", "error", "schema",
        "A top-level trainer key written below [optimizer], so TOML puts it into the optimizer table.",
        why="Every key after a table header belongs to that table until the next header: the trainer setting "
            "is lost and the optimizer gets an unknown keyword.",
        bad="[optimizer]\ntype = 'adamw'\nlr = 1e-4\nwarmup_steps = 100",
        good="warmup_steps = 100\n[optimizer]\ntype = 'adamw'\nlr = 1e-4", fix="Move the key above the first [table].")
declare("OPT114", "integer-for-boolean", "warning", "schema",
        "A number where a boolean is meant (`orthograd = 1`), a boolean where a number is, or a float where a whole "
        "number is (`reset_interval = 100.0`): the optimizer uses it as Python does, so it runs as written.",
        why="The optimizers test these flags for truth, so 0 runs as false and any other integer as true: the run "
            "does what was meant, but the file says something else than the schema (and editors flag it).",
        bad="[optimizer]\ntype = 'adafactor'\nlr = 1e-4\nrelative_step = false\nscale_parameter = 0",
        good="[optimizer]\ntype = 'adafactor'\nlr = 1e-4\nrelative_step = false\nscale_parameter = false",
        fix="Write `true` or `false`.")
declare("OPT113", "optinspect-only-key", "error", "schema",
        "A key that only optinspect's bundled optimizers accept (a documented fix of an original's bug).",
        why="The trainer's original optimizer classes reject it with a TypeError.",
        fix="Use it only when the trainer imports optinspect's `optimizers` package.",
        bad="[optimizer]\ntype = 'scorn'\nexact_reset_period = true",
        good="[optimizer]\ntype = 'scorn'", trainer_class=True)

# -- codes of `optinspect resume` (a config against a saved state) ----------------------------------------
declare("OPT610", "resume-state-mismatch", "error", "resume",
        "The saved state does not fit the optimizer the config builds (another family, or another number of "
        "param groups).",
        why="load_state_dict checks only the number and sizes of the param groups: a state of another optimizer "
            "loads, and the first step fails on a key it does not find (or misreads one it does).",
        fix="resume with the type that wrote the state, or start the optimizer afresh (upstream: --reset_optimizer)")
declare("OPT611", "resume-setting-ignored", "error", "resume",
        "A hyper-parameter changed in the config is ignored on resume: the saved param groups win.",
        why="DeepSpeed loads the saved param groups, every hyper-parameter included: a lowered lr in the config "
            "trains at the old one (github.com/tdrussell/diffusion-pipe/issues/278) unless force_constant_lr is set.",
        fix="set top-level `force_constant_lr` for the lr; upstream's --reset_optimizer_params puts every setting back")
declare("OPT612", "resume-first-lr", "info", "resume", "The lr of the first resumed step, and where it comes from.",
        fix="set `force_constant_lr` to choose it")
declare("OPT613", "resume-parameters", "error", "resume",
        "The saved tensors do not match the model's (count or shapes): a changed LoRA rank or target set.",
        why="Another number of parameters fails in load_state_dict; other shapes load and fail at the first step.",
        fix="resume with the adapter settings the state was saved with")
declare("OPT614", "resume-reset-schedule", "info", "resume",
        "SCORN/REMASTER/Persona: the resumed run continues the saved reset schedule; when the next reset comes.",
        fix="a changed reset_interval applies only to a fresh optimizer")
declare("OPT615", "resume-dtype", "warning", "resume",
        "The saved moments' dtype differs from the dtype the config trains in: they are cast on load.",
        fix="resume in the dtype the state was saved in")
declare("OPT616", "resume-optimizer-reset", "info", "resume",
        "--reset-optimizer: nothing of the saved optimizer (nor the scheduler) is loaded.",
        fix="drop the flag to keep the moments")

