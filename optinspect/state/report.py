"""The reports of saved optimizer state, as plain data: one row per parameter (`ParamReport`), the whole file
(`StateReport`), and the comparison of two files (`DiffReport`). Torch-free, so renderers and the TUI read them
without the engine (`analyse.py`, `diff.py`) that fills them.

The JSON forms (`to_dict`) are documented in README.md ("optinspect inspect --json").
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from optinspect.state.stats import TensorStats


class Flag(str):
    """Something wrong with one parameter's state: the text shown, and a stable `code` that code tests
    ("nonfinite", "second-zero", "dead", "step-mismatch", "exploding", "vanishing")."""

    code: str

    def __new__(cls, code: str, text: str) -> Flag:
        obj = super().__new__(cls, text)
        obj.code = code
        return obj

    def __reduce__(self):
        return (Flag, (self.code, str(self)))


@dataclass(slots=True)
class ParamReport:
    index: int
    name: str
    group: int
    shape: list[int] | None
    family: str
    step: int | None
    counters: dict[str, int]
    first_rms: float | None = None
    second_rms: float | None = None
    update_scale_mean: float | None = None
    update_scale_max: float | None = None
    quant_rel_error: float | None = None  # the largest relative bound over this parameter's state tensors
    kahan_rms: float | None = None
    flags: list[Flag] = field(default_factory=list)
    tensors: list[TensorStats] = field(default_factory=list)
    scalars: dict[str, Any] = field(default_factory=dict)
    name_certain: bool = True  # False: named by shape among others of that shape (--model), maybe swapped


@dataclass
class StateReport:
    path: str
    source_file: str
    layout: str
    key_used: str | None
    names_from: str
    family: str
    steps: list[int]
    groups: list[dict[str, Any]]
    params: list[ParamReport]
    anomalies: list[str]
    warnings: list[str]
    skipped: list[str]
    total_numel: int = 0
    total_state_bytes: int = 0
    definitions: dict[str, str] = field(default_factory=dict)

    def to_dict(self, params: bool = True) -> dict:
        """Plain JSON-able data, built without copying: a state of 100k tensors has 100k histograms, which
        dataclasses.asdict deep-copied and a second pass walked again (minutes and gigabytes). `params=False`
        leaves the rows out (an empty list in their place), for a writer that streams them."""
        d = {name: plain(getattr(self, name)) if params or name != "params" else []
             for name in _field_names(type(self))}
        d["schema"] = "optinspect-state-report/1"
        return d


_FIELDS: dict[type, tuple[str, ...]] = {}


def _field_names(cls: type) -> tuple[str, ...]:
    if cls not in _FIELDS:
        _FIELDS[cls] = tuple(f.name for f in fields(cls))
    return _FIELDS[cls]


def _hist(h: Any) -> Any:
    return h if isinstance(h, list) or h is None else list(h)  # a sparse histogram is written out whole


_AS_IS = frozenset({type(None), bool, int, str})


def plain(obj: Any, hist: Callable[[Any], Any] = _hist) -> Any:
    """Report objects as JSON-able data (non-finite floats as strings), sharing the histograms (`hist` turns each
    into what stands for it). Dispatched on the exact type first: 300k tensors make ten million values."""
    kind = type(obj)
    if kind in _AS_IS:
        return obj
    if kind is float:
        return obj if math.isfinite(obj) else str(obj)
    if kind is list or kind is tuple:
        return [v if type(v) in _AS_IS else plain(v, hist) for v in obj]
    if kind is dict:
        return {str(k): v if type(v) in _AS_IS else plain(v, hist) for k, v in obj.items()}
    if is_dataclass(obj):  # histograms are our own lists of ints: shared as they are, not walked
        out = {}
        for name in _field_names(kind):  # the common field types inline: a call each was most of the time
            value = getattr(obj, name)
            vt = type(value)
            if vt in _AS_IS:
                out[name] = value
            elif vt is float:
                out[name] = value if math.isfinite(value) else str(value)
            else:
                out[name] = hist(value) if name == "hist" else plain(value, hist)
        return out
    if isinstance(obj, (bool, int, str)):  # subclasses: Flag (a str), enums
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else str(obj)
    if isinstance(obj, (list, tuple)):
        return [plain(v, hist) for v in obj]
    if isinstance(obj, dict):
        return {str(k): plain(v, hist) for k, v in obj.items()}
    return _json_safe(obj)


DEFINITIONS = {
    "quant_rel_error": "8-bit block-wise states: RMS over elements of the error bound implied by the codebook "
                       "(half the larger gap to a neighbouring code, plus half a 1/65535 grid step, times the "
                       "block's absmax), divided by the RMS of the dequantized values. bf16 states: the half-ulp "
                       "bound 2^-8 (relative).",
    "update_scale": "|first moment| / sqrt(second moment), per element where the second moment is positive "
                    "(mean and max): the size of an Adam-like step in units of lr, before bias correction.",
    "kahan_rms": "RMS of the Kahan compensation buffer (shift / kahan_comp): the part of the updates that did "
                 "not fit into the weights' precision yet.",
    "hist": "256 bins of the fp32 exponent: bin e counts |x| in [2^(e-127), 2^(e-126)); 0 = zero or subnormal, "
            "255 = inf or nan.",
}


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if hasattr(obj, "tolist") and hasattr(obj, "numel"):  # a tensor that reached a report
        return obj.tolist() if obj.numel() <= 16 else f"tensor{list(obj.shape)}"
    if isinstance(obj, (int, float, str, bool)) or obj is None:
        return obj
    return repr(obj)


@dataclass(slots=True)
class KeyDrift:
    key: str
    rel: float  # ||b - a|| / ||a||
    max_abs: float


@dataclass(slots=True)
class ParamDiff:
    name: str
    step_a: int | None
    step_b: int | None
    drifts: list[KeyDrift] = field(default_factory=list)
    note: str = ""
    resets: int | None = None  # resets between A and B, where the state counts them
    step_delta: int | None = None  # steps from A to B; None where the counter restarted at a reset (Persona)


@dataclass
class DiffReport:
    a: str
    b: str
    params: list[ParamDiff]
    only_a: list[str]
    only_b: list[str]
    group_changes: list[str]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["schema"] = "optinspect-state-diff/1"
        return d
