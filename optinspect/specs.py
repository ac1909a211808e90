"""What optinspect knows about each optimizer, written once.

Two registries, both torch-free (the validator and the TUI's first paint read them):

- `TYPES`: one `OptimizerType` per `type` string the trainers accept and we have a schema for: the schema,
  the class that runs it (ours, torch's, or the original's import path), which trainers know it, how its
  constructor treats flags, its saved-state family, and its bytes-per-parameter model.
- `FAMILIES`: one `StateFamily` per kind of saved state we can recognise, including libraries we only read
  (torch, bitsandbytes, optimi, transformers): the keys a parameter's state holds, what each one means, and
  the signature that tells the family apart from the others. Adding a family is one entry here.

Everything else asks these tables: the catalogue of type names, the builder, the memory model, the state
report's family and shape inference, the rules' type lists.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}


class Role(str, Enum):
    """What a per-parameter state key holds."""

    FIRST = "first moment"
    SECOND = "second moment"
    SECOND_ROW = "factored second moment (rows)"
    SECOND_COL = "factored second moment (columns)"
    QMAP = "8-bit code book"
    ABSMAX = "8-bit block scales"
    KAHAN = "Kahan compensation"
    STEP = "step counter"
    RESETS = "resets so far"
    SINCE_RESET = "steps since the last reset"
    SHAPED = "parameter-shaped buffer"
    SCALAR = "per-tensor scalar"


# Roles whose tensors have the parameter's own shape (what the shape of a nameless entry is read from).
FULL_SHAPE = frozenset({Role.FIRST, Role.SECOND, Role.KAHAN, Role.SHAPED})


@dataclass(frozen=True)
class Signature:
    """How a parameter's saved state shows its family: every key of `keys`, at least one of `any_keys` (when
    given), none of `no_keys`, and, when `group_any` is given, at least one of those keys in its param group
    or of `any_keys` in the state (evidence from either side)."""

    keys: frozenset[str] = frozenset()
    any_keys: frozenset[str] = frozenset()
    no_keys: frozenset[str] = frozenset()
    group_any: frozenset[str] = frozenset()
    group_none: frozenset[str] = frozenset()
    lowbit: str | None = None  # the moments are torchao low-bit tensors of this kind ("8bit", "4bit", "fp8")

    def matches(self, keys: frozenset[str], group: Mapping, lowbit: str | None = None) -> bool:
        if lowbit != self.lowbit:
            return False
        if not self.keys <= keys or self.no_keys & keys or any(k in group for k in self.group_none):
            return False
        if self.group_any:  # state keys or group keys may carry the evidence
            return bool(self.any_keys & keys) or any(k in group for k in self.group_any)
        return not self.any_keys or bool(self.any_keys & keys)


def _sig(keys: str = "", any_keys: str = "", no_keys: str = "", group_any: str = "", group_none: str = "",
         lowbit: str | None = None) -> Signature:
    return Signature(frozenset(keys.split()), frozenset(any_keys.split()), frozenset(no_keys.split()),
                     frozenset(group_any.split()), frozenset(group_none.split()), lowbit)


@dataclass(frozen=True)
class StateFamily:
    """A kind of saved optimizer state, as one library writes it."""

    name: str  # as shown to the user
    library: str
    keys: Mapping[str, Role]  # per-parameter state keys and what they hold
    signatures: tuple[Signature, ...]  # any one of them identifies the family
    step_where: str = "param"  # where the step count lives: "param" (its state), "group" (optimi), "none"
    step_keys: tuple[str, ...] = ("step",)  # its name there (schedulefree counts `k` in the group)
    step_counts_next: bool = False  # the saved step is the number of the next step (pytorch_optimizer's Prodigy)
    step_restarts: bool = False  # the per-parameter step starts again at each reset (Persona)
    note: str = ""

    def matches(self, keys: frozenset[str], group: Mapping, lowbit: str | None = None) -> bool:
        return any(s.matches(keys, group, lowbit) for s in self.signatures)


_ADAM = {"step": Role.STEP, "exp_avg": Role.FIRST, "exp_avg_sq": Role.SECOND}
_EMA = {"step": Role.STEP, "ema": Role.FIRST, "ema_squared": Role.SECOND, "times_zero": Role.RESETS,
        "steps_since_reset": Role.SINCE_RESET}
_BNB = {"step": Role.STEP, "state1": Role.FIRST, "state2": Role.SECOND, "qmap1": Role.QMAP, "qmap2": Role.QMAP,
        "absmax1": Role.ABSMAX, "absmax2": Role.ABSMAX}

# Ordered: the first family whose signature matches names the state (the specific before the general).
FAMILIES: tuple[StateFamily, ...] = (
    StateFamily("AdamW8bitKahan", "diffusion trainer (optimizers/adamw_8bit.py)",
                {**_BNB, "shift": Role.KAHAN}, (_sig("state1 shift"),)),
    # bnb's Lion8bit: one 8-bit moment (state1, no state2) and Adam-style betas in its group
    StateFamily("bitsandbytes 8-bit Lion", "bitsandbytes", {k: r for k, r in _BNB.items() if not k.endswith("2")},
                (_sig("state1", no_keys="state2", group_any="betas"),)),
    StateFamily("bitsandbytes 8-bit Adam(W)", "bitsandbytes", _BNB, (_sig("state1"),),
                note="tensors below min_8bit_size keep fp32 state1/state2"),
    # CAME keeps Adafactor's factored second moment plus the residual's; its vectors look like Adafactor's, and
    # its group (eps1, eps2) tells them apart
    StateFamily("CAME", "pytorch_optimizer / came-pytorch",
                {"exp_avg": Role.FIRST, "exp_avg_sq": Role.SECOND, "exp_avg_sq_row": Role.SECOND_ROW,
                 "exp_avg_sq_col": Role.SECOND_COL, "exp_avg_res_row": Role.SCALAR, "exp_avg_res_col": Role.SCALAR,
                 "RMS": Role.SCALAR},
                # its vectors (no residual) are told by the group: pytorch_optimizer's eps1, came-pytorch's
                # three betas (Adafactor's group has beta1, not betas)
                (_sig("RMS", any_keys="exp_avg_res_row exp_avg_res_col", group_any="eps1 betas"),),
                step_where="group"),
    StateFamily("Adafactor", "transformers / diffusion trainer",
                {"step": Role.STEP, "exp_avg": Role.FIRST, "exp_avg_sq": Role.SECOND,
                 "exp_avg_sq_row": Role.SECOND_ROW, "exp_avg_sq_col": Role.SECOND_COL, "RMS": Role.SCALAR},
                (_sig(any_keys="exp_avg_sq_row exp_avg_sq_col"), _sig("RMS exp_avg_sq"))),
    StateFamily("Prodigy", "pytorch_optimizer / optinspect",
                {"step": Role.STEP, "exp_avg": Role.FIRST, "exp_avg_sq": Role.SECOND, "s": Role.SHAPED,
                 "p0": Role.SHAPED}, (_sig("s p0"),), step_where="group", step_counts_next=True),
    StateFamily("PersonaOptimizer", "diffusion trainer (optimizers/persona.py)",
                {"step": Role.STEP, "ema": Role.FIRST, "ema_squared": Role.SECOND, "times_reset": Role.RESETS,
                 "ema_grad_var": Role.SHAPED},
                (_sig("ema ema_squared", any_keys="times_reset ema_grad_var", group_any="amp_factor"),),
                step_restarts=True),
    StateFamily("SCORN", "diffusion trainer (optimizers/scorn.py)", {**_EMA, "pbar": Role.SHAPED},
                (_sig("ema ema_squared", any_keys="pbar", group_any="focus_ratio spectral_update_scale"),)),
    StateFamily("REMASTER", "diffusion trainer (optimizers/remaster.py)", _EMA,
                (_sig("ema ema_squared", any_keys="times_zero", group_any="amp"),)),
    StateFamily("SCORN/REMASTER", "diffusion trainer", _EMA, (_sig("ema ema_squared"),),
                note="neither SCORN's nor REMASTER's own keys are saved (resets off, no focus)"),
    StateFamily("Automagic", "diffusion-pipe (optimizers/automagic.py)",
                {"step": Role.STEP, "lr_mask": Role.SHAPED, "exp_avg_sq_row": Role.SECOND_ROW,
                 "exp_avg_sq_col": Role.SECOND_COL, "exp_avg_sq": Role.SECOND}, (_sig("lr_mask"),)),
    # optimi keeps `kahan_comp` (None when Kahan summation is off) for AdamW and StableAdamW alike
    StateFamily("optimi AdamW", "torch-optimi", {**_ADAM, "kahan_comp": Role.KAHAN},
                (_sig("exp_avg exp_avg_sq kahan_comp"),), step_where="group"),
    # schedule-free keeps the base sequence z instead of a first moment
    StateFamily("Schedule-free AdamW", "schedulefree / pytorch_optimizer",
                {"z": Role.SHAPED, "exp_avg_sq": Role.SECOND}, (_sig("z exp_avg_sq"),), step_where="group",
                step_keys=("k", "step")),
    StateFamily("Adan", "pytorch_optimizer", {**_ADAM, "exp_avg_diff": Role.SHAPED, "previous_grad": Role.SHAPED},
                (_sig("exp_avg exp_avg_sq exp_avg_diff"),), step_where="group"),
    # torchao's AdamW8bit/4bit/Fp8: Adam's keys, moments as low-bit tensor subclasses (tensors below 4096
    # elements stay plain: the parameter's family is still torchao's when any of its moments is low-bit)
    *(StateFamily(f"torchao AdamW ({label})", "torchao", {**_ADAM, "max_exp_avg_sq": Role.SECOND},
                  (_sig("exp_avg exp_avg_sq", lowbit=kind),)) for kind, label in (("8bit", "8-bit"), ("4bit", "4-bit"),
                                                                                  ("fp8", "fp8"))),
    StateFamily("Adam/AdamW", "torch", _ADAM, (_sig("exp_avg exp_avg_sq"),)),
    # Lion keeps one moment and no second: its groups have betas but no eps (Adam's have both).
    StateFamily("Lion", "torch-optimi / pytorch_optimizer", {"exp_avg": Role.FIRST, "kahan_comp": Role.KAHAN},
                (_sig("exp_avg", no_keys="exp_avg_sq", group_none="eps"),), step_where="none"),
    StateFamily("SGD", "torch", {"momentum_buffer": Role.FIRST}, (_sig("momentum_buffer"),), step_where="none"),
)


def family_of(keys: frozenset[str] | set[str], group: Mapping | frozenset[str], lowbit: str | None = None
              ) -> StateFamily | None:
    """The family a parameter's state belongs to, or None for a state we do not recognise (or no state).
    `group`: the param group, or its keys as a frozenset already. `lowbit`: the kind of torchao low-bit tensor
    among its values, if any (the keys are Adam's)."""
    group_keys = group if isinstance(group, frozenset) else frozenset(k for k in group if isinstance(k, str))
    return _family_of(keys if isinstance(keys, frozenset) else frozenset(keys), group_keys, lowbit)


@functools.lru_cache(maxsize=4096)
def _family_of(keys: frozenset[str], group_keys: frozenset[str], lowbit: str | None) -> StateFamily | None:
    """(Signatures look only at which keys the group has: the answer is cached per set of keys, so a million
    parameters of a few kinds cost a few lookups.)"""
    return next((f for f in FAMILIES if f.matches(keys, group_keys, lowbit)), None)


def _keys_with(*roles: Role) -> tuple[str, ...]:
    out: dict[str, None] = {}
    for fam in FAMILIES:
        for key, role in fam.keys.items():
            if role in roles:
                out[key] = None
    return tuple(out)


FIRST = _keys_with(Role.FIRST)  # first-moment keys of every family, in family order
SECOND = _keys_with(Role.SECOND)
RESETS = _keys_with(Role.RESETS)  # resets so far: SCORN/REMASTER `times_zero`, Persona `times_reset`
COUNTERS = _keys_with(Role.RESETS, Role.SINCE_RESET)
SHAPE_KEYS = _keys_with(*FULL_SHAPE)  # any of these has the parameter's shape
KAHAN = _keys_with(Role.KAHAN)


# -- bytes of optimizer state per parameter tensor --------------------------------------------------------
Shape = Sequence[int]
BytesModel = Callable[[Mapping, Shape, int], int]  # (table, shape, bytes per parameter element) -> bytes


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _factored(shape: Shape) -> int:
    """Adafactor-style row and column statistics of a matrix (a vector keeps a full one)."""
    if len(shape) >= 2:
        return math.prod(shape[:-1]) + math.prod(shape[:-2]) * shape[-1]
    return math.prod(shape)


def _adafactor_bytes(t: Mapping, shape: Shape, pb: int) -> int:
    momentum = 4 * math.prod(shape) if t.get("beta1") is not None else 0  # exp_avg in fp32 (the grad is upcast)
    return 4 + momentum + 4 * _factored(shape)  # 4: RMS, a 0-d fp32 tensor


def _ema_bytes(extra_key: str | None) -> BytesModel:
    """ema + ema_squared in the parameter's dtype, plus a third buffer when `extra_key` is positive."""
    return lambda t, shape, pb: (2 + (1 if extra_key and (t.get(extra_key) or 0) > 0 else 0)) * math.prod(shape) * pb


def _bnb_bytes(kahan: bool) -> BytesModel:
    def model(t: Mapping, shape: Shape, pb: int) -> int:
        n = math.prod(shape)
        shift = n * pb if kahan else 0
        if n >= (t.get("min_8bit_size") or 4096):  # two uint8 codes + fp32 absmax per 256-element block
            return 2 * n + 2 * 4 * _ceil_div(n, 256) + shift
        return 2 * 4 * n + shift  # small tensors keep fp32 moments
    return model


def _adam_bytes(step_tensor: bool, kahan_in_low_precision: bool) -> BytesModel:
    def model(t: Mapping, shape: Shape, pb: int) -> int:
        n = math.prod(shape)
        kahan = n * pb if kahan_in_low_precision and pb == 2 and t.get("kahan_sum") is not False else 0
        return 2 * n * pb + kahan + (4 if step_tensor else 0)  # torch keeps `step` as a 0-d fp32 tensor
    return model


def _sgd_bytes(t: Mapping, shape: Shape, pb: int) -> int:
    return math.prod(shape) * pb if (t.get("momentum") or 0) > 0 else 0


def _prodigy_bytes(t: Mapping, shape: Shape, pb: int) -> int:
    return 4 * math.prod(shape) * pb  # exp_avg, exp_avg_sq, s, p0 in the parameter's dtype


def _automagic_bytes(t: Mapping, shape: Shape, pb: int) -> int:
    return 4 + 4 * _factored(shape) + math.prod(shape)  # RMS, factored second moment, uint8 lr mask


# -- optimizer types -------------------------------------------------------------------------------------
UPSTREAM, CHROMA = "upstream", "chroma"


@dataclass(frozen=True)
class TrainerProfile:
    """How one trainer's `get_optimizer` reads the [optimizer] table (its train.py)."""

    name: str
    title: str
    builtin: tuple[str, ...]  # types matched lower-cased; anything else is getattr(pytorch_optimizer, type)
    popped: frozenset[str]  # keys it reads itself and does not pass to the constructor
    half_life_sets_beta2: bool  # pops `beta2_half_life` and sets betas[1] from it (needs `betas`, two of them)
    broken: Mapping[str, str] = field(default_factory=dict)  # built-in types that fail in this trainer, and why


PROFILES: dict[str, TrainerProfile] = {p.name: p for p in (
    TrainerProfile(UPSTREAM, "upstream diffusion-pipe",
                   ("adamw", "adamw8bit", "adamw_optimi", "stableadamw", "sgd", "adamw8bitkahan", "offload",
                    "automagic", "genericoptim"),
                   frozenset({"type", "gradient_release", "beta2_half_life"}), True),
    TrainerProfile(CHROMA, "diffusion-chroma",
                   ("adamw", "adamw8bit", "adamw_optimi", "stableadamw", "sgd", "adamw8bitkahan", "scorn",
                    "adafactor", "remaster", "persona", "offload", "automagic"),
                   frozenset({"type", "gradient_release"}), False,
                   broken={"automagic": "its optimizer imports optimum.quanto, which diffusion-chroma does not "
                                        "install: the import fails before training"}),
)}
TRAINERS = tuple(PROFILES)


def trainers_of(type_key: str) -> tuple[str, ...]:
    """The trainers whose get_optimizer has `type_key` as a built-in type."""
    return tuple(p.name for p in PROFILES.values() if type_key in p.builtin)


@dataclass(frozen=True)
class OptimizerType:
    """One `type` of the [optimizer] table, as the trainers resolve and build it."""

    key: str  # lower-cased, as the trainer compares built-in names; also the schema's file name
    written: str  # the canonical spelling (case matters for pytorch_optimizer classes)
    original: str  # import path of the class the trainer builds
    source: str = "builtin"  # "builtin" (matched lower-cased) | "pytorch_optimizer" (getattr, case-sensitive)
    ours: str | None = None  # class name in optinspect.optimizers, when we ship an implementation
    torch_class: str | None = None  # "module:Class" when torch itself builds it
    family: str | None = None  # the StateFamily its saved state belongs to
    kwargs: str = "strict"  # "strict": unknown keys raise TypeError; "swallow": **kwargs silently drops them
    # The constructor does no type checks: flags are tested with `if` (0/1 behave as false/true), numbers are used
    # as Python uses them (true as 1, 100.0 as 100). A mixed-up type runs as meant: a warning, not an error.
    truthy_flags: bool = False
    strict_flags: tuple[str, ...] = ()  # ...except these, which torch checks to be real booleans
    # options of our implementation alone (name -> what it does): the original has none of them
    our_options: Mapping[str, str] = field(default_factory=dict)
    extra_items_ignored: bool = False  # arrays are read by index (betas[0], betas[1]): more items are never read
    # Keys whose out-of-range values make it fail (it raises, divides by zero or turns NaN); out of range elsewhere
    # it runs (a negative lr ascends): a warning. None: every range is enforced (torch, bitsandbytes, ...).
    hard_ranges: tuple[str, ...] | None = None
    # Numbers it hands to torch as `alpha=`: torch refuses a boolean there ("Boolean alpha only supported for
    # Boolean results"), so `amp = true` fails where other numbers take true as 1. key -> "any" (either boolean
    # fails) or "true" (false skips the term: SGD's `if weight_decay != 0`).
    no_boolean: Mapping[str, str] = field(default_factory=dict)
    # Array items read only when another option is on: key -> that option (Adafactor reads eps[1] only with
    # scale_parameter, so a one-element eps runs without it)
    items_needed_with: Mapping[str, str] = field(default_factory=dict)
    stochastic_rounding: bool = False  # keeps bf16 weights with stochastic rounding (`stochastic_fp`)
    resets: bool = False  # resets its moments on a schedule (reset_interval / reset_increment)
    misspellings: Mapping[str, str] = field(default_factory=dict)  # common wrong key -> the class's spelling
    # dry-run --compare-fp32: what makes the shadow keep full-precision state (8-bit moments would hide the drift)
    fp32_shadow: Mapping[str, object] = field(default_factory=dict)
    state_bytes: BytesModel | None = None

    @property
    def bundled(self) -> bool:
        return self.ours is not None

    def schema_meta(self) -> dict:
        """The `x-optinspect` block its JSON Schema carries for editors and tools (a test keeps them equal)."""
        meta = {"type": self.written, "class": self.original, "kwargs": self.kwargs, "bundled": self.bundled}
        if self.truthy_flags:
            meta["truthy_flags"] = True
        if self.strict_flags:
            meta["strict_flags"] = list(self.strict_flags)
        return meta


# what SCORN, REMASTER and Persona share: flags tested for truth, bf16 weights with stochastic rounding, resets
_RESETTING = dict(truthy_flags=True, stochastic_rounding=True, resets=True)

TYPES: dict[str, OptimizerType] = {t.key: t for t in (
    OptimizerType("adamw", "adamw", "torch.optim.AdamW", torch_class="torch.optim:AdamW", family="Adam/AdamW",
                  truthy_flags=True, strict_flags=("differentiable",), state_bytes=_adam_bytes(True, False)),
    OptimizerType("adamw8bit", "adamw8bit", "bitsandbytes.optim.AdamW8bit", family="bitsandbytes 8-bit Adam(W)",
                  truthy_flags=True, extra_items_ignored=True, hard_ranges=("lr", "eps", "betas", "weight_decay"),
                  state_bytes=_bnb_bytes(kahan=False)),
    OptimizerType("adamw_optimi", "adamw_optimi", "optimi.AdamW", family="optimi AdamW",
                  state_bytes=_adam_bytes(False, True)),
    OptimizerType("stableadamw", "stableadamw", "optimi.StableAdamW", family="optimi AdamW",
                  state_bytes=_adam_bytes(False, True)),
    OptimizerType("sgd", "sgd", "torch.optim.SGD", torch_class="torch.optim:SGD", family="SGD", truthy_flags=True,
                  strict_flags=("differentiable",), no_boolean={"weight_decay": "true"}, state_bytes=_sgd_bytes),
    OptimizerType("adamw8bitkahan", "AdamW8bitKahan", "optimizers.adamw_8bit.AdamW8bitKahan", ours="AdamW8bitKahan",
                  family="AdamW8bitKahan", truthy_flags=True, state_bytes=_bnb_bytes(kahan=True),
                  fp32_shadow={"min_8bit_size": 2**62}),
    OptimizerType("scorn", "scorn", "optimizers.scorn.SCORN", ours="SCORN",
                  family="SCORN", **_RESETTING, hard_ranges=("betas",), extra_items_ignored=True,
                  no_boolean={"amp": "any", "focus_ratio": "true"},
                  state_bytes=_ema_bytes("focus_ratio")),
    OptimizerType("adafactor", "adafactor", "optimizers.adafactor.EnhancedAdafactor", ours="EnhancedAdafactor",
                  family="Adafactor", truthy_flags=True, extra_items_ignored=True, hard_ranges=("eps",),
                  items_needed_with={"eps": "scale_parameter"},
                  state_bytes=_adafactor_bytes),
    OptimizerType("remaster", "remaster", "optimizers.remaster.REMASTER", ours="REMASTER",
                  family="REMASTER", **_RESETTING, hard_ranges=("betas", "orthograd_floor"),
                  extra_items_ignored=True, no_boolean={"amp": "any"},
                  state_bytes=_ema_bytes(None)),
    OptimizerType("persona", "persona", "optimizers.persona.PersonaOptimizer", ours="PersonaOptimizer",
                  family="PersonaOptimizer", **_RESETTING, state_bytes=_ema_bytes("focus_boost"),
                  no_boolean={"amp_factor": "any"},
                  hard_ranges=("lr", "betas", "weight_decay", "weight_decay_rate", "focus_boost", "cautious_min"),
                  our_options={"compiled": "the elementwise step through torch.compile, within a few ulps of the "
                                           "exact step (a C++ compiler on CPU, triton on CUDA)"}),
    OptimizerType("offload", "offload", "torchao.optim.CPUOffloadOptimizer", family="Adam/AdamW",
                  state_bytes=_adam_bytes(False, False)),
    OptimizerType("automagic", "automagic", "optimizers.automagic.Automagic", family="Automagic",
                  state_bytes=_automagic_bytes),
    OptimizerType("prodigy", "Prodigy", "optimizers.prodigy.Prodigy", source="pytorch_optimizer", ours="Prodigy",
                  family="Prodigy", kwargs="swallow", truthy_flags=True, state_bytes=_prodigy_bytes,
                  hard_ranges=("lr", "betas", "beta3", "weight_decay", "eps", "d0"),
                  misspellings={"use_bias_correction": "bias_correction", "decouple": "weight_decouple",
                                "slice_p": "(no equivalent)", "safeguard": "safeguard_warmup", "d_coeff": "d_coef"},
                  our_options={"upcast": "fp32 arithmetic for bf16/fp16 parameters, stored back with stochastic "
                                         "rounding, where the original computes in bf16"}),
)}

# Keys a trainer reads itself (and, in some trainers, pops before calling the constructor).
TRAINER_KEYS = frozenset().union(*(p.popped for p in PROFILES.values()))


def builtin_types(trainer: str | None = None) -> dict[str, OptimizerType | None]:
    """The built-in type names (lower-cased) of one trainer, or of either: their registry entry, or None for a
    built-in we have no schema for (upstream's genericoptim)."""
    names = PROFILES[trainer].builtin if trainer else tuple(dict.fromkeys(n for p in PROFILES.values()
                                                                          for n in p.builtin))
    return {n: TYPES.get(n) for n in names}


def by_written(name: str) -> OptimizerType | None:
    """A pytorch_optimizer class we have a schema for, by its exact (case-sensitive) class name."""
    return next((t for t in TYPES.values() if t.source == "pytorch_optimizer" and t.written == name), None)


def with_feature(feature: str) -> tuple[str, ...]:
    """Schema names of the types with a boolean feature (`stochastic_rounding`, `resets`): a rule's `types`."""
    return tuple(k for k, t in TYPES.items() if getattr(t, feature))


def state_bytes(type_key: str, table: Mapping, shape: Shape, dtype: str = "float32") -> int:
    """Bytes of per-parameter optimizer state for one tensor (shared code books and group scalars excluded)."""
    model = TYPES[type_key].state_bytes
    if model is None:
        raise KeyError(type_key)
    return model(table, shape, DTYPE_BYTES.get(dtype, 4))


def adamw_fp32_bytes(shape: Shape) -> int:
    """The yardstick: torch AdamW with fp32 moments (8 bytes per parameter)."""
    return 8 * math.prod(shape)
