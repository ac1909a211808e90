"""The trainer's own path for a config, run for real: the oracle `optinspect validate` is judged against.

- Reader: the `toml` package (0.10, what both trainers read configs with), then the JSON round trip they do.
- get_optimizer, per trainer: built-in types matched lower-cased, anything else `getattr(pytorch_optimizer,
  type)`; `type` and `gradient_release` popped; upstream also pops `beta2_half_life` and rewrites `betas[1]`
  from it (`betas` required, two of them), chroma passes it on. Transcribed from the trainers' `train.py`.
- Classes: torch, bitsandbytes and pytorch_optimizer as installed. The trainer's own optimizers (SCORN,
  REMASTER, Persona, EnhancedAdafactor, AdamW8bitKahan) come from a diffusion-chroma checkout when
  OPTINSPECT_TRAINER_CHECKOUT names one (its `optimizers/` folder is loaded by path), else from optinspect's
  bundled copies, which behave as the originals by default.
- Then what the trainer does before training: a ConstantLR scheduler, and eight optimizer steps on a small
  model with random gradients, and again on a LoRA pair whose A gradient is exactly zero on step 1.

    python tests/trainer_oracle.py --tables 2000 --seed 0 [--trainer upstream|chroma] [--show 20]

prints how often validate and the trainer disagree, by kind, with examples.
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import inspect
import json
import math
import os
import random
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

UPSTREAM_TYPES = ("adamw", "adamw8bit", "adamw_optimi", "stableadamw", "sgd", "adamw8bitkahan", "offload",
                  "automagic", "genericoptim")
CHROMA_TYPES = ("adamw", "adamw8bit", "adamw_optimi", "stableadamw", "sgd", "adamw8bitkahan", "scorn", "adafactor",
                "remaster", "persona", "offload", "automagic")
TRAINER_FILES = {"adamw8bitkahan": ("adamw_8bit", "AdamW8bitKahan"), "scorn": ("scorn", "SCORN"),
                 "adafactor": ("adafactor", "EnhancedAdafactor"), "remaster": ("remaster", "REMASTER"),
                 "persona": ("persona", "PersonaOptimizer")}


class NotModelled(Exception):
    """A type this oracle does not run (offload, automagic, genericoptim): left out of the comparison."""


@dataclass
class Outcome:
    stage: str | None = None  # where the trainer failed: read, build, schedule, step, lora; None = it ran
    error: str = ""
    nan: bool = False  # non-finite weights after the steps (full model or the LoRA pair)
    misread: list[str] = field(default_factory=list)  # it ran, but not as the file says

    @property
    def ok(self) -> bool:
        return self.stage is None and not self.nan and not self.misread


_TRAINER_CLASSES: dict[str, type] = {}


def _trainer_class(key: str) -> type:
    """The trainer's own class from OPTINSPECT_TRAINER_CHECKOUT, else optinspect's bundled one."""
    checkout = os.environ.get("OPTINSPECT_TRAINER_CHECKOUT")
    module, name = TRAINER_FILES[key]
    if not checkout:
        from optinspect.build import class_for

        return class_for(key)
    if key not in _TRAINER_CLASSES:
        path = Path(checkout) / "optimizers" / f"{module}.py"
        spec = importlib.util.spec_from_file_location(f"_trainer_optimizers_{module}", path)
        mod = importlib.util.module_from_spec(spec)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            spec.loader.exec_module(mod)
        _TRAINER_CLASSES[key] = getattr(mod, name)
    return _TRAINER_CLASSES[key]


def _klass(type_name: str, trainer: str) -> type:
    low = type_name.lower()
    builtin = UPSTREAM_TYPES if trainer == "upstream" else CHROMA_TYPES
    if low in builtin:
        if low == "adamw":
            return torch.optim.AdamW
        if low == "sgd":
            return torch.optim.SGD
        if low == "adamw8bit":
            import bitsandbytes

            return bitsandbytes.optim.AdamW8bit
        if low in TRAINER_FILES:
            return _trainer_class(low)
        raise NotModelled(low)
    import pytorch_optimizer

    return getattr(pytorch_optimizer, type_name)  # AttributeError: the trainer's crash too


def _emulated_failure(type_name: str, trainer: str, table: dict | None = None) -> str | None:
    """Where optinspect's bundled class stands in for the trainer's own and the two differ by environment: the
    trainer's AdamW8bitKahan reads `percentile_clipping` from bitsandbytes' per-parameter config, which
    bitsandbytes 0.50 removed, so it fails at step 1 on any table (measured with the original: the test
    `test_emulation_matches_the_original` checks it whenever a trainer checkout is given)."""
    if os.environ.get("OPTINSPECT_TRAINER_CHECKOUT"):
        return None
    extra = _optinspect_only(type_name, table or {})
    if extra:  # options of optinspect's copies that the trainer's classes do not have (schemas mark them)
        return f"TypeError: unexpected keyword argument {extra[0]!r} (the trainer's own class)"
    if type_name.lower() != "adamw8bitkahan":
        return None
    from optinspect.config.environment import installed_version

    version = installed_version("bitsandbytes")
    return "KeyError: 'percentile_clipping' (the original, with bitsandbytes >= 0.50)" if version and version >= (0, 50) \
        else None


def _optinspect_only(type_name: str, table: dict) -> list[str]:
    low = type_name.lower()
    if low not in TRAINER_FILES:
        return []
    props = _keys(type_name)
    return [k for k in table if props.get(k, {}).get("x-optinspect-only")]


def _misread(klass: type, kwargs: dict, table: dict) -> list[str]:
    """What runs, but not as the file says: keys pytorch_optimizer's **kwargs constructors drop; strings where the
    parameter is not a string (a quoted number, "false", "None"), gradient_release among them (the trainer tests
    it for truth: 'false' turns it on); nan or inf for a number whose default is finite (no run is meant by it)."""
    try:
        params = inspect.signature(klass).parameters
    except (TypeError, ValueError):
        return []
    swallow = klass.__module__.startswith("pytorch_optimizer") and any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    out = []
    if isinstance(table.get("gradient_release"), str):
        out.append(f"gradient_release tested for truth: {table['gradient_release']!r}")
    for k, v in kwargs.items():
        if k not in params:
            if swallow:
                out.append(f"{k} dropped by **kwargs")
            continue
        default = params[k].default
        if isinstance(v, str) and not isinstance(default, str):
            out.append(f"{k} passed as the string {v!r}")
        values = v if isinstance(v, list) else [v]
        flag = default is None or isinstance(default, bool)  # nan and inf test true, as any flag value does
        inf_ok = isinstance(default, float) and math.isinf(default)  # Prodigy's growth_rate: inf means no limit
        if any(isinstance(x, float) and not math.isfinite(x) and not (inf_ok and x == default) for x in values) \
                and not flag:
            out.append(f"{k} = {v!r} is not a meaningful setting")
    return out


def _finite(params) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in params)


STEPS = 8  # the trainer's first steps: a positive Adafactor decay_rate of 1e-3 turns NaN at step 6


def _steps(klass: type, args: list, kwargs: dict, lora: bool, seed: int) -> None:
    """Build, schedule and step twice; raises where the trainer would."""
    g = torch.Generator().manual_seed(seed)
    if lora:  # B starts at zero, so A's gradient is exactly zero on the first step
        params = [torch.nn.Parameter(torch.randn(4, 16, generator=g) * 0.1), torch.nn.Parameter(torch.zeros(8, 4))]
    else:
        params = [torch.nn.Parameter(torch.randn(8, 16, generator=g) * 0.1), torch.nn.Parameter(torch.randn(8, generator=g))]
    opt = klass(params, *args, **json.loads(json.dumps(kwargs)))  # each run gets its own lists
    torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0)
    for step in range(STEPS):
        for i, p in enumerate(params):
            grad = torch.randn(p.shape, generator=g)
            if lora and step == 0 and i == 0:
                grad.zero_()
            p.grad = grad
        opt.step()
    return _finite(params)


def run(text: str, trainer: str, seed: int = 0) -> Outcome:
    """What the trainer does with this config file's text."""
    import toml

    try:
        config = json.loads(json.dumps(toml.loads(text)))
    except Exception as e:  # noqa: BLE001 - any reader failure is the trainer's failure
        return Outcome("read", f"{type(e).__name__}: {e}")
    try:
        table = config["optimizer"]
        type_name = table["type"]
        kwargs = {k: v for k, v in table.items() if k not in ("type", "gradient_release")}
        table.get("gradient_release", False)
        if trainer == "upstream" and "beta2_half_life" in kwargs:
            half_life = kwargs.pop("beta2_half_life")
            betas = kwargs["betas"]
            assert len(betas) == 2
            betas[1] = 0.5 ** (1 / half_life)  # global batch size 1
        klass = _klass(type_name, trainer)
        if table.get("capturable"):
            raise NotModelled("capturable needs CUDA tensors: on the trainer's GPUs it runs, on this CPU it fails")
    except NotModelled:
        raise
    except Exception as e:  # noqa: BLE001
        return Outcome("build", f"{type(e).__name__}: {e}")
    out = Outcome(misread=_misread(klass, kwargs, table))
    emulated = _emulated_failure(type_name, trainer, table)
    if emulated:
        return Outcome("step", emulated, misread=out.misread)
    for lora in (False, True):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                finite = _steps(klass, [], kwargs, lora, seed)
            except Exception as e:  # noqa: BLE001
                out.stage = "lora" if lora else "step"
                out.error = f"{type(e).__name__}: {str(e)[:200]}"
                return out
        if not finite:
            out.nan = True
    return out


# -- the tables -----------------------------------------------------------------------------------------
BASES = {
    "adafactor": {"type": "adafactor", "lr": 1e-4, "relative_step": False, "scale_parameter": False},
    "scorn": {"type": "scorn", "lr": 1e-4, "betas": [0.95, 0.9999]},
    "remaster": {"type": "remaster", "lr": 1e-4},
    "persona": {"type": "persona", "lr": 1e-4, "betas": [0.95, 0.999]},
    "AdamW8bitKahan": {"type": "AdamW8bitKahan", "lr": 1e-4, "betas": [0.9, 0.999], "weight_decay": 0.01,
                       "stabilize": False},
    "Prodigy": {"type": "Prodigy", "lr": 1.0, "safeguard_warmup": True, "bias_correction": True,
                "weight_decay": 0.01},
    "adamw": {"type": "adamw", "lr": 1e-4, "betas": [0.9, 0.99], "weight_decay": 0.01, "eps": 1e-8},
    "adamw8bit": {"type": "adamw8bit", "lr": 1e-4, "betas": [0.9, 0.99], "weight_decay": 0.01},
    "sgd": {"type": "sgd", "lr": 1e-3, "momentum": 0.9},
}
SCALARS = [0, 0.0, -1, 1, 1.0, 2, 0.5, 1e-30, 1e-8, 1e-3, 100, 100.0, 1e10, float("nan"), float("inf"), True, False]
STRINGS = ["0.01", "false", "true", "None", "yes", "1e-4"]
TOP_LEVEL = ["warmup_steps", "epochs", "gradient_clipping"]


def _keys(type_name: str) -> dict[str, dict]:
    from optinspect.config import catalog, schemas

    return schemas.load(catalog.resolve_type(type_name).schema)["properties"]


def _typo(key: str, rnd: random.Random) -> str:
    i = rnd.randrange(len(key))
    return rnd.choice([key[:i] + key[i + 1:], key[:i] + key[i] + key[i:], key + "s", key.replace("_", "", 1)]) \
        or key + "x"


def _value(prop: dict, rnd: random.Random) -> Any:
    default = prop.get("default")
    pick = rnd.random()
    if isinstance(default, list) or prop.get("type") == "array":
        n = len(default) if isinstance(default, list) else 2
        if pick < 0.3:
            return [rnd.choice([0, 0.0, 0.9, 0.99, 0.999, 1, 1.0, 1e-30, 1e-3]) for _ in range(n)]
        if pick < 0.5:
            return [rnd.choice([0.9, 0.99, 0.999, 0.95]) for _ in range(rnd.choice([1, 3]))]
        if pick < 0.6:
            return rnd.choice(SCALARS)
        return [float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else x for x in (default or [0.9,
                                                                                                          0.99])]
    if pick < 0.15:
        return rnd.choice(STRINGS)
    if pick < 0.25 and isinstance(default, (int, float)) and not isinstance(default, bool):
        return float(default) if isinstance(default, int) else (int(default) if float(default).is_integer()
                                                                 else default)
    return rnd.choice(SCALARS)


def generate(n: int, seed: int) -> list[tuple[str, str]]:
    """(type, TOML text) pairs: mutations of the base tables, one to three each."""
    rnd = random.Random(seed)
    out = []
    names = list(BASES)
    for i in range(n):
        type_name = names[i % len(names)]
        table = json.loads(json.dumps(BASES[type_name]))
        props = _keys(type_name)
        top: dict = {}
        for _ in range(rnd.choice([1, 1, 2, 3])):
            m = rnd.random()
            key = rnd.choice(list(props))
            if m < 0.45:
                table[key] = _value(props[key], rnd)
            elif m < 0.55 and len(table) > 1:
                table.pop(rnd.choice([k for k in table if k != "type"] or ["type"]), None)
            elif m < 0.63:
                table[_typo(key, rnd)] = props[key].get("default", 1.0) if props[key].get("default") is not None else 1.0
            elif m < 0.70:
                other = rnd.choice([t for t in names if t != type_name])
                okey = rnd.choice(list(_keys(other)))
                table[okey] = _value(_keys(other)[okey], rnd)
            elif m < 0.76:
                table["type"] = rnd.choice([type_name.lower(), type_name.upper(), type_name.title(), type_name])
            elif m < 0.84:
                table["beta2_half_life"] = rnd.choice([100, 1000.0, 0, -5, "100"])
                if rnd.random() < 0.5:
                    table.setdefault("betas", [0.9, 0.99])
            elif m < 0.90:
                table["gradient_release"] = rnd.choice([True, False, "false", 1])
            elif m < 0.95:
                table[rnd.choice(TOP_LEVEL)] = 100
            else:
                top["learning_rate"] = rnd.choice([2e-4, "2e-4"])
        out.append((type_name, to_toml(table, top)))
    return out


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        text = repr(v)
        return text if any(c in text for c in ".e") else text + ".0"
    if isinstance(v, str):
        return "'" + v + "'"
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(type(v))


def to_toml(table: dict, top: dict | None = None) -> str:
    lines = [f"{k} = {_toml_value(v)}" for k, v in (top or {}).items()]
    lines.append("[optimizer]")
    lines += [f"{k} = {_toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


# -- the comparison -----------------------------------------------------------------------------------------
def verdict(text: str, trainer: str) -> list:
    from optinspect.config.validate import Options, validate_text

    return validate_text("config.toml", text, Options(trainer_profile=trainer)).diagnostics


def disagreement(outcome: Outcome, diags: list) -> str | None:
    """How validate and the trainer disagree on one table, or None."""
    severities = {d.severity.value for d in diags}
    if outcome.stage and "error" not in severities:
        return "missed crash"
    if outcome.nan and outcome.stage is None and not severities & {"error", "warning"}:
        return "silent NaN"
    if outcome.misread and outcome.stage is None and "error" not in severities:
        return "missed misread"
    if outcome.ok and "error" in severities:
        return "false error"
    return None


def compare(tables: list[tuple[str, str]], trainers: tuple[str, ...]) -> dict:
    counts: dict = collections.Counter()
    examples: dict = collections.defaultdict(list)
    for trainer in trainers:
        for type_name, text in tables:
            try:
                outcome = run(text, trainer)
            except NotModelled:
                counts[(trainer, "not modelled")] += 1
                continue
            diags = verdict(text, trainer)
            kind = disagreement(outcome, diags)
            counts[(trainer, type_name, "tables")] += 1
            counts[(trainer, "crash" if outcome.stage else "nan" if outcome.nan else "misread" if outcome.misread
                    else "ok")] += 1
            if kind:
                counts[(trainer, kind)] += 1
                examples[(trainer, kind)].append((text, outcome, [f"{d.code}:{d.severity.value}" for d in diags]))
    return {"counts": counts, "examples": examples}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tables", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--trainer", choices=["upstream", "chroma"], action="append")
    ap.add_argument("--show", type=int, default=5, help="examples shown per kind of disagreement")
    args = ap.parse_args(argv)
    trainers = tuple(args.trainer or ("upstream", "chroma"))
    result = compare(generate(args.tables, args.seed), trainers)
    counts = result["counts"]
    for trainer in trainers:
        outcomes = {k: counts[(trainer, k)] for k in ("ok", "crash", "nan", "misread", "not modelled")}
        kinds = {k: counts[(trainer, k)] for k in ("missed crash", "silent NaN", "missed misread", "false error")}
        print(f"{trainer}: trainer outcomes {outcomes}; disagreements {kinds}")
    for (trainer, kind), items in sorted(result["examples"].items()):
        for text, outcome, codes in items[: args.show]:
            print(f"--- {trainer} {kind}: {outcome.stage or ''} {outcome.error[:120]} nan={outcome.nan} "
                  f"misread={outcome.misread} validate={codes}\n{text}")
    return 1 if any(counts[(t, k)] for t in trainers for k in ("missed crash", "silent NaN", "missed misread",
                                                                 "false error")) else 0


if __name__ == "__main__":
    sys.exit(main())
