"""Which `type` strings the trainer accepts and how it resolves them (train.py `get_optimizer`).

Built-in types are compared lower-cased; anything else is looked up with `getattr(pytorch_optimizer, type)`,
which is case-sensitive. The types we know in depth are in `optinspect.specs`; the class list below is
pytorch_optimizer 4.1.0's public optimizer classes, every one of which the fallback accepts.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from optinspect import specs

TRAINER_KEYS = specs.TRAINER_KEYS

PYTORCH_OPTIMIZER_CLASSES = frozenset(
    """
    A2Grad ADOPT APOLLO ASGD AccSGD AdEMAMix AdaBelief AdaBound AdaDelta AdaFactor AdaGC AdaGO
    AdaHessian AdaLOMO AdaMax AdaMod AdaMuon AdaNorm AdaPNM AdaShift AdaSmooth AdaTAM Adai Adalite Adam
    AdamC AdamG AdamMini AdamP AdamS AdamW AdamWSN Adan AggMo Aida AliG Alice Amos Ano ApolloDQN AvaGrad
    BCOS BSAM CAME Conda DASH DAdaptAdaGrad DAdaptAdam DAdaptAdan DAdaptLion DAdaptSGD DeMo DiffGrad
    DistributedMuon DualAdam EXAdam EmoFact EmoLynx EmoNavi FAdam FOCUS FTRL Fira FlashAdamW FriendlySAM
    Fromage GSAM GaLore Grams Gravity GrokFastAdamW Kate Kron LARS LBFGS LOMO LaProp Lamb Lion LoRARite
    LookSAM Lookahead MADGRAD MARS MSVAG Magma Muon MuonClip NAdam Nero NorMuon NovoGrad OrthoGrad PAdam
    PCGrad PID PNM Prodigy QHAdam QHM RACS RAdam RMSprop ROSE Ranger Ranger21 SAM SCION SCIONLight SGD
    SGDP SGDSaI SGDW SM3 SOAP SPAM SPlus SRMM SWATS SaRA SafeFP16Optimizer ScalableShampoo
    ScheduleFreeAdamW ScheduleFreeRAdam ScheduleFreeSGD ScheduleFreeWrapper Shampoo SignSGD
    SimplifiedAdEMAMix SophiaH SpectralSphere StableAdamW StableSPAM TAM TRAC Tiger VSGD WSAM Yogi
    """.split()
)


@dataclass(frozen=True)
class Resolution:
    """How the trainer would resolve a `type` string."""

    written: str
    schema: str | None  # schema name when we have one
    source: str  # "builtin" | "pytorch_optimizer" | "unknown"
    suggestions: tuple[str, ...] = ()
    case_fix: str | None = None  # the right casing for a case-sensitive fallback name
    other_trainer: str | None = None  # unknown here, but a built-in type of this other trainer


def resolve_type(written: str, trainer: str | None = None) -> Resolution:
    """How `trainer`'s get_optimizer resolves `type` (either trainer's built-ins when it is not known)."""
    low = written.lower()
    builtin = specs.builtin_types(trainer)
    if low in builtin:
        spec = builtin[low]
        return Resolution(written, spec.key if spec else None, "builtin")
    if written in PYTORCH_OPTIMIZER_CLASSES:
        known = specs.by_written(written)
        return Resolution(written, known.key if known else None, "pytorch_optimizer")
    other = next((t for t in specs.trainers_of(low) if t != trainer), None)
    by_lower = {n.lower(): n for n in PYTORCH_OPTIMIZER_CLASSES}
    case_fix = by_lower.get(low)
    known = sorted(set(builtin) | PYTORCH_OPTIMIZER_CLASSES)
    close = difflib.get_close_matches(written, known, n=3, cutoff=0.6)
    if not close:
        close = [by_lower[m] if m in by_lower else m
                 for m in difflib.get_close_matches(low, list(builtin) + list(by_lower), n=3, cutoff=0.6)]
    return Resolution(written, None, "unknown", tuple(dict.fromkeys(close)), case_fix, other)


def infer_trainer(written: str) -> tuple[str | None, str]:
    """The trainer a table's `type` implies, and why: a built-in type of only one trainer means that trainer."""
    trainers = specs.trainers_of(written.lower())
    if len(trainers) == 1:
        title = specs.PROFILES[trainers[0]].title
        return trainers[0], f"type '{written}' is a built-in type of {title} only"
    return None, ""
