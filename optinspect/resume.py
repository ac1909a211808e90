"""What resuming a checkpoint under a config will really do, in the trainer's own semantics.

The diffusion-pipe family resumes through DeepSpeed's `load_checkpoint`: the saved optimizer state and its param
groups are loaded into the optimizer the config builds, so every saved hyper-parameter replaces the config's, and
the saved scheduler continues. Upstream offers `--reset_optimizer` (nothing of the optimizer is loaded, nor the
scheduler) and `--reset_optimizer_params` (the state is loaded, then the config's param groups are put back, and
the scheduler starts afresh); both trainers honour `force_constant_lr` (the scheduler is not loaded and every
group's lr is set to it). A state that does not fit the optimizer is refused by `load_state_dict` (another number
of groups or of parameters) or loads and fails at the first step (the keys the optimizer reads are not there).

Reads the state's index and group values only, never its statistics: fast on any size of state.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from optinspect import specs
from optinspect.config import catalog, source
from optinspect.config.context import OPT, diag, show
from optinspect.config.validate import Options, validate_file
from optinspect.diagnostics import Diagnostic, FileReport, Severity, Span

# keys the trainer or torch puts into a group that are not settings of the config
_GROUP_BOOKKEEPING = frozenset({"params", "step", "initial_lr", "d", "d_max", "d_hat", "d_numerator", "d_de_nom",
                                "k", "setup"})


@dataclass
class Change:
    """One hyper-parameter whose saved value and config value differ, and the one the resumed run uses."""

    key: str
    saved: Any
    config: Any
    used: str  # "saved" | "config"
    why: str


@dataclass
class ResumeReport:
    config: str
    state: str
    trainer: str | None
    config_type: str
    saved_family: str
    expected_family: str | None
    resumes_at_step: int | None
    lr_first_step: Any
    lr_from: str
    outcome: str  # "loads" | "fails at load" | "fails at the first step" | "not loaded"
    changes: list[Change] = field(default_factory=list)
    reset_in: int | None = None  # the resumed step (1 = the first) on which the next reset comes
    next_reset: int | None = None  # the same as a step of the run, where the state says which step it is at
    parameters: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["schema"] = "optinspect-resume/1"
        return d


class ResumeError(Exception):
    """The config or the state cannot be read (exit 2)."""


def plan(config_path: str, state_path: str, *, model: str | None = None, trainer: str | None = None,
         reset_optimizer: bool = False, reset_optimizer_params: bool = False) -> tuple[FileReport, ResumeReport]:
    """The resume's findings (as diagnostics on the config file) and the plain report behind them."""
    from optinspect.state.load import load_state

    config_report = validate_file(config_path, Options(require_optimizer=True, trainer_profile=trainer))
    if config_report.unreadable or config_report.data is None or not isinstance(
            config_report.data.get("optimizer"), dict) or "type" not in config_report.data["optimizer"]:
        raise ResumeError(f"{config_path}: no readable [optimizer] table with a `type` "
                          f"({'; '.join(d.message for d in config_report.diagnostics[:3])})")
    config = config_report.data
    table = config["optimizer"]
    trainer = trainer or config_report.trainer
    if (reset_optimizer or reset_optimizer_params) and trainer == specs.CHROMA:
        raise ResumeError("--reset-optimizer and --reset-optimizer-params are upstream diffusion-pipe's flags; "
                          "diffusion-chroma has neither")
    ls = load_state(state_path, model=model)
    smap = source.scan(config_report.source or "")
    out = FileReport(path=config_path, source=config_report.source, data=config, optimizer_type=table["type"],
                     trainer=trainer, trainer_reason=config_report.trainer_reason, secrets=config_report.secrets)
    rep = _report(config_path, state_path, config, table, ls, trainer)
    emit = _Emitter(config_path, smap, out.diagnostics)
    if reset_optimizer:
        rep.outcome = "not loaded"
        rep.lr_first_step, rep.lr_from = _config_lr(config, table), "config (--reset-optimizer)"
        emit("OPT616", ("type",), "--reset-optimizer: the saved optimizer state and scheduler are not loaded; the "
             f"optimizer starts afresh (zero moments) at step {rep.resumes_at_step or '?'} with the config's settings",
             "drop --reset-optimizer to keep the moments")
        _parameters(rep, ls, model, emit)
        return out, rep
    _fit(rep, ls, table, emit)
    _settings(rep, config, table, ls, trainer, reset_optimizer_params, emit)
    _resets(rep, ls, emit)
    _dtype(rep, config, ls, emit)
    _parameters(rep, ls, model, emit)
    return out, rep


class _Emitter:
    def __init__(self, path: str, smap: source.SourceMap, into: list[Diagnostic]):
        self.path, self.smap, self.into = path, smap, into

    def __call__(self, code: str, key: tuple, message: str, hint: str = "", severity: Severity | None = None,
                 absolute: bool = False) -> None:
        where = key if absolute else OPT + key
        span = self.smap.locate(where, prefer_value=True) if key else Span(1, 1, 1, 1)
        if span is None:
            span = self.smap.locate(OPT) or Span(1, 1, 1, 1)
        self.into.append(diag(self.path, span, code, message, hint, severity))


def _report(config_path: str, state_path: str, config: dict, table: dict, ls, trainer: str | None) -> ResumeReport:
    from optinspect.state.analyse import family_of, param_step

    res = catalog.resolve_type(table["type"], trainer)
    spec = specs.TYPES.get(res.schema or "")
    families = []
    steps = []
    for p in ls.params:
        group = ls.groups[p.group] if p.group < len(ls.groups) else {}
        families.append(family_of(p.entries, group))
        steps.append(param_step(p.entries, group))
    known = [f for f in families if f != "no state"]
    saved = max(set(known), key=known.count) if known else "no state"
    family = next((f for f in specs.FAMILIES if f.name == saved), None)
    # Persona's own step starts again at every reset: it does not say where the run is
    done = None if family and family.step_restarts else max((s for s in steps if s is not None), default=None)
    return ResumeReport(config=config_path, state=state_path, trainer=trainer, config_type=table["type"],
                        saved_family=saved, expected_family=spec.family if spec else None,
                        resumes_at_step=None if done is None else done + 1, lr_first_step=None, lr_from="",
                        outcome="loads")


def _compatible(saved: str, expected: str | None) -> bool:
    if expected is None or saved in ("no state", "unknown"):
        return True
    if saved == expected:
        return True
    return saved == "SCORN/REMASTER" and expected in ("SCORN", "REMASTER")


def _fit(rep: ResumeReport, ls, table: dict, emit) -> None:
    """Does the saved state fit the optimizer the config builds; what load_state_dict and the first step do."""
    if not _compatible(rep.saved_family, rep.expected_family):
        fam = next((f for f in specs.FAMILIES if f.name == rep.expected_family), None)
        needed = sorted(fam.signatures[0].keys) if fam else []
        saved_keys = set().union(*(set(p.entries) for p in ls.params)) if ls.params else set()
        missing = [k for k in needed if k not in saved_keys]
        rep.outcome = "fails at the first step" if missing else "loads, misread"
        what = (f"load_state_dict accepts it, then the first step raises KeyError: {missing[0]!r}" if missing else
                "load_state_dict accepts it and the optimizer reads state it did not write")
        emit("OPT610", ("type",), f"the saved state is {rep.saved_family} state, but `type = '{rep.config_type}'` "
             f"builds {rep.expected_family}: {what}",
             "resume with the type that wrote the state, or start the optimizer afresh (upstream: --reset_optimizer)")


def _config_lr(config: dict, table: dict) -> Any:
    if "force_constant_lr" in config:
        return config["force_constant_lr"]
    return table.get("lr")


def _differs(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) != len(b) or any(_differs(x, y) for x, y in zip(a, b, strict=False))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) \
            and not isinstance(b, bool):
        return not math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=0.0)
    return a != b


def _settings(rep: ResumeReport, config: dict, table: dict, ls, trainer: str | None, reset_params: bool,
              emit) -> None:
    """Which value of each hyper-parameter the resumed run uses, and the lr of its first step."""
    if not ls.groups:
        return
    saved = ls.groups[0]
    if len(ls.groups) > 1:  # the trainer builds one group per optimizer; more saved groups do not load
        emit("OPT610", ("type",), f"the state has {len(ls.groups)} param groups, the trainer builds 1: "
             "load_state_dict raises ValueError (a different number of parameter groups)",
             "resume from a state of the same setup")
        rep.outcome = "fails at load"
    forced = "force_constant_lr" in config
    popped = specs.PROFILES[trainer].popped if trainer else specs.TRAINER_KEYS
    for key, value in table.items():
        if key in popped or key in _GROUP_BOOKKEEPING or key not in saved:
            continue
        old = saved[key]
        if not _differs(old, value):
            continue
        if reset_params:
            rep.changes.append(Change(key, old, value, "config", "--reset-optimizer-params puts the config's groups "
                                      "back"))
            continue
        if key == "lr" and forced:
            rep.changes.append(Change(key, old, value, "config", "force_constant_lr"))
            continue
        rep.changes.append(Change(key, old, value, "saved", "the saved param groups replace the config's"))
        hint = ("set top-level `force_constant_lr` to the lr you want" if key == "lr" else
                "start the optimizer with the config's settings (upstream: --reset_optimizer_params)")
        emit("OPT611", (key,), f"`{key} = {show(key, value)}` is ignored on resume: the saved param groups replace "
             f"the config's, so the run continues with {key} = {show(key, old)}", hint)
    if forced:
        rep.lr_first_step, rep.lr_from = config["force_constant_lr"], "force_constant_lr"
    elif reset_params:
        rep.lr_first_step, rep.lr_from = table.get("lr"), "config (--reset-optimizer-params)"
    else:
        rep.lr_first_step, rep.lr_from = saved.get("lr"), "saved param group (the saved scheduler continues from it)"
    emit("OPT612", ("lr",) if "lr" in table else ("type",),
         f"the first resumed step (step {rep.resumes_at_step or '?'}) uses lr = {show('lr', rep.lr_first_step)}, "
         f"from the {rep.lr_from}", "set `force_constant_lr` to choose it")


def _resets(rep: ResumeReport, ls, emit) -> None:
    """SCORN/REMASTER/Persona: when the next reset comes, under the saved schedule (the saved groups win)."""
    if not ls.params or not ls.groups:
        return
    from optinspect.state.analyse import reset_count

    p = ls.params[0]
    group = ls.groups[p.group] if p.group < len(ls.groups) else {}
    interval, increment = group.get("reset_interval"), group.get("reset_increment", 0) or 0
    times = reset_count(p.entries)
    since = p.entries.get("steps_since_reset")
    if not isinstance(interval, (int, float)) or interval <= 0 or times is None or since is None:
        return
    since = int(since.item() if hasattr(since, "item") else since)
    period = interval + increment * times + (1 if group.get("exact_reset_period") and times > 0 else 0)
    # Persona counts the step before it compares (reset when the count reaches the period); SCORN/REMASTER compare
    # the count as saved, then count
    persona = "times_reset" in p.entries
    rep.reset_in = max(1, period - since) if persona else max(0, period - since) + 1
    if rep.resumes_at_step is not None:
        rep.next_reset = rep.resumes_at_step - 1 + rep.reset_in
    when = f"at step {rep.next_reset}" if rep.next_reset is not None else f"on the {_nth(rep.reset_in)} resumed step"
    emit("OPT614", ("type",), f"the resumed run continues the saved reset schedule: {times} reset"
         f"{'s' * (times != 1)} so far, the next {when} (saved reset_interval = {show('', interval)}"
         f", reset_increment = {show('', increment)})", "a changed reset_interval in the config does not apply")


def _nth(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def _dtype(rep: ResumeReport, config: dict, ls, emit) -> None:
    want = None
    for t in ("adapter", "model"):
        v = config.get(t)
        if isinstance(v, dict) and isinstance(v.get("dtype"), str):
            want = v["dtype"].lower()
            break
    if want not in ("float32", "bfloat16", "float16"):
        return
    firsts = [p.entries[k] for p in ls.params for k in specs.FIRST if k in p.entries and hasattr(p.entries[k],
                                                                                                 "dtype")]
    dtypes = {str(t.dtype).replace("torch.", "") for t in firsts}
    floats = {d for d in dtypes if d in ("float32", "bfloat16", "float16")}
    # (Adafactor keeps fp32 moments whatever the weights' dtype: not a cast)
    if floats and want not in floats and rep.saved_family != "Adafactor":
        emit("OPT615", ("type",), f"the saved moments are {'/'.join(sorted(floats))} but the config trains in {want}: "
             f"load_state_dict casts them to the parameters' dtype ({want})", "resume in the dtype the state was "
             "saved in to keep its precision")


def _parameters(rep: ResumeReport, ls, model: str | None, emit) -> None:
    """Saved tensors against the model's (by order and shape): what a changed LoRA rank or target set does."""
    saved = [tuple(p.shape) if p.shape else None for p in ls.params]
    rep.parameters = {"saved": len(saved)}
    if not model:
        return
    from optinspect.state.header import read_header

    header = read_header(model)
    tensors = [(t.name, tuple(t.shape)) for t in header.tensors]
    rep.parameters["model"] = len(tensors)
    if len(tensors) != len(saved):
        rep.outcome = "fails at load"
        emit("OPT613", ("type",), f"the state holds {len(saved)} parameters, the model {len(tensors)}: load_state_dict "
             "raises ValueError (a parameter group of another size); a changed LoRA rank or target set does this",
             "resume with the adapter settings the state was saved with, or --reset_optimizer (upstream)")
        return
    reshaped = [(n, s, m) for (n, m), s in zip(tensors, saved, strict=True) if s is not None and s != m]
    if reshaped:
        rep.outcome = "fails at the first step"
        name, s, m = reshaped[0]
        emit("OPT613", ("type",), f"{len(reshaped)} saved tensor{'s' * (len(reshaped) != 1)} do not match the model's "
             f"shapes (first: {name}: saved {list(s)}, model {list(m)}): the state loads, and the first step fails "
             "on the size mismatch", "resume with the adapter rank the state was saved with")
