"""The dry-run loop: build the optimizer as the trainer would, step it on the model, watch every update, and
optionally run a float32 shadow of the same optimizer to measure what low precision costs."""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from optinspect import specs as registry
from optinspect.build import build_optimizer
from optinspect.config import catalog
from optinspect.dryrun.model import DryRunError, builtin_model, lora_rank, loss, make_params, shapes_from, trained_dtype
from optinspect.dryrun.report import DryRunReport, ParamSpec, StepRecord, TensorDrift, drift_notes

__all__ = ["DryRunError", "Settings", "run"]

DIVERGENCE_FACTOR = 10.0  # final loss above this multiple of the first one = diverged


@dataclass(frozen=True)
class Settings:
    steps: int = 10
    dtype: str | None = None  # default: the config's [adapter] or [model] dtype
    device: str = "cpu"
    seed: int = 0
    shapes: str | None = None  # a model .safetensors whose header gives the real shapes
    max_params: int = 4_000_000
    compare_fp32: bool = False
    options: tuple[tuple[str, object], ...] = ()  # options of our implementation alone, e.g. (("upcast", True),)


@dataclass
class _Shadow:
    """The same optimizer on float32 copies of the parameters, stepped on the same losses."""

    params: list[torch.nn.Parameter]
    opt: torch.optim.Optimizer
    init: list[torch.Tensor]


def run(config_path: str, config: dict, settings: Settings = Settings(),
        progress: Callable[[int, int], None] | None = None) -> tuple[DryRunReport, torch.optim.Optimizer, list[str]]:
    """Build the optimizer from `config` and step it; returns the report, the optimizer and parameter names."""
    table = dict(config["optimizer"])
    type_key = catalog.resolve_type(table["type"]).schema
    dtype = settings.dtype or trained_dtype(config)
    if dtype not in ("float32", "bfloat16", "float16"):
        raise DryRunError(f"--dtype must be float32, bfloat16 or float16, got {dtype!r}")
    dev = _device(settings.device)
    model, full = _model(config, settings, table, type_key, dtype)
    params, targets = make_params(model, getattr(torch, dtype), dev, settings.seed)
    torch.manual_seed(settings.seed)
    try:
        opt = build_optimizer(params, table, config, options=dict(settings.options))
    except ValueError as e:
        raise DryRunError(str(e)) from None
    report = DryRunReport(config=config_path, optimizer_type=table["type"],
                          optimizer_class=f"{type(opt).__module__}.{type(opt).__qualname__}",
                          optimizer_file=_source_file(type(opt)), dtype=dtype, device=str(dev), seed=settings.seed,
                          parameters=sum(p.numel() for p in params),
                          tensors=[{"name": s.name, "shape": list(s.shape), "note": s.note} for s in model],
                          full_model=full)
    shadow = _shadow(params, table, config, type_key) if settings.compare_fp32 else None
    _loop(report, opt, params, targets, shadow, settings, dev, progress)
    report.state_bytes_measured = _state_bytes(opt)
    report.state_bytes_predicted = sum(registry.state_bytes(type_key, table, s.shape, dtype)
                                       for s in model) if type_key else 0
    if shadow is not None:
        report.drift = _drift(model, params, shadow)
        if report.status == "healthy":  # a run that failed says so in its status
            report.notes += drift_notes(report.drift, dtype)
    return report, opt, [s.name for s in model]


def _device(name: str) -> torch.device:
    try:
        dev = torch.device(name)
        torch.empty(1, device=dev)
    except (RuntimeError, AssertionError) as e:
        raise DryRunError(f"device {name!r} is not available: {e}") from None
    return dev


def _model(config: dict, settings: Settings, table: dict, type_key: str | None, dtype: str):
    """The tensors to step on, and with --shapes-from the full model's predicted optimizer state."""
    rank = lora_rank(config)
    if not settings.shapes:
        return builtin_model(rank), None
    sample, trained, full = shapes_from(settings.shapes, rank, settings.max_params)
    full.predicted_gib = sum(registry.state_bytes(type_key, table, s, dtype) for _, s in trained) / 2**30
    full.adamw_fp32_gib = sum(registry.adamw_fp32_bytes(s) for _, s in trained) / 2**30
    return sample, full


def _shadow(params: list, table: dict, config: dict, type_key: str | None) -> _Shadow:
    shadow_params = [torch.nn.Parameter(p.detach().float().clone()) for p in params]
    shadow_table = dict(table)
    if type_key in registry.TYPES:  # full-precision state, so the drift shows what the low-precision one costs
        shadow_table.update(registry.TYPES[type_key].fp32_shadow)
    return _Shadow(shadow_params, build_optimizer(shadow_params, shadow_table, config),
                   [p.detach().float().clone() for p in params])


def _loop(report: DryRunReport, opt, params: list, targets: list, shadow: _Shadow | None, settings: Settings,
          dev: torch.device, progress: Callable[[int, int], None] | None) -> None:
    """Step until done or until the run crashes, turns non-finite or diverges (said in report.status)."""
    first_loss = None
    for t in range(1, settings.steps + 1):
        value = loss(params, targets, t, settings.seed)
        opt.zero_grad(set_to_none=True)
        value.backward()
        before = [p.detach().float().clone() for p in params]
        t0 = time.perf_counter()
        try:
            opt.step()
        except (RuntimeError, ValueError, ArithmeticError, TypeError) as e:
            report.status = "crashed"
            report.message = f"step {t}: the optimizer raised {type(e).__name__}: {e}"
            return
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        record = _measure(t, value.item(), params, before, time.perf_counter() - t0)
        report.steps.append(record)
        first_loss = record.loss if first_loss is None else first_loss
        if shadow is not None:
            shadow.opt.zero_grad(set_to_none=True)
            loss(shadow.params, targets, t, settings.seed).backward()
            shadow.opt.step()
        if progress:
            progress(t, settings.steps)
        if record.nonfinite or not math.isfinite(record.loss):
            report.status = "non-finite"
            report.message = (f"step {t}: {record.nonfinite} non-finite parameter values" if record.nonfinite
                              else f"step {t}: loss is {record.loss}")
            return
    if report.steps:
        final = loss(params, targets, len(report.steps) + 1, settings.seed).item()
        if not math.isfinite(final):
            report.status, report.message = "non-finite", f"loss after the last step is {final}"
        elif first_loss and final > DIVERGENCE_FACTOR * first_loss:
            report.status = "diverged"
            report.message = f"loss rose from {first_loss:.4g} to {final:.4g} (x{final / first_loss:.3g})"


def _measure(t: int, loss_value: float, params: list, before: list, seconds: float) -> StepRecord:
    """The update this step made: RMS and largest element over the finite ones, and how many weights are not finite."""
    sq, count, mx, bad = 0.0, 0, 0.0, 0
    for p, b in zip(params, before, strict=True):
        d = p.detach().float() - b
        fin = torch.isfinite(d)
        bad += int((~torch.isfinite(p.detach())).sum())
        d = torch.where(fin, d, torch.zeros_like(d))
        sq += float((d * d).sum())
        count += d.numel()
        mx = max(mx, float(d.abs().max()) if d.numel() else 0.0)
    return StepRecord(t, loss_value, math.sqrt(sq / max(count, 1)), mx, bad, seconds)


def _drift(model: list[ParamSpec], params: list, shadow: _Shadow) -> list[TensorDrift]:
    """How far each low-precision tensor ended from its float32 twin, relative to how far the twin moved."""
    out = []
    for s, p, q, i in zip(model, params, shadow.params, shadow.init, strict=True):
        moved = float((q.detach() - i).norm())
        diff = p.detach().float() - q.detach()
        out.append(TensorDrift(s.name, list(s.shape), float(diff.norm()) / moved if moved > 0 else 0.0,
                               float(diff.abs().max())))
    return out


def _source_file(klass: type) -> str:
    try:
        return inspect.getsourcefile(klass) or "?"
    except TypeError:
        return "?"


def _state_bytes(opt: torch.optim.Optimizer) -> int:
    """Bytes of per-parameter state; tensors shared between parameters (8-bit maps) are not counted."""
    seen: dict[int, int] = {}
    counts: dict[int, int] = {}
    for st in opt.state.values():
        for v in st.values():
            if isinstance(v, torch.Tensor):
                ptr = v.untyped_storage().data_ptr()
                counts[ptr] = counts.get(ptr, 0) + 1
                seen[ptr] = v.untyped_storage().nbytes()
    return sum(b for ptr, b in seen.items() if counts[ptr] == 1)
