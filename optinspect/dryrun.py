"""Dry-run: build the optimizer from a config and take real steps, to test the config before the real run.

build -> step -> report (a plain dataclass); rendering lives in render/dryrun.py, saving in state/save.py.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from optinspect import specs as registry
from optinspect.build import build_optimizer
from optinspect.config import catalog

DIVERGENCE_FACTOR = 10.0  # final loss above this multiple of the first one = diverged


class DryRunError(Exception):
    """A config or input problem (exit 2): the message says what and where."""


@dataclass
class ParamSpec:
    name: str
    shape: tuple[int, ...]
    note: str = ""


@dataclass
class StepRecord:
    step: int
    loss: float
    update_rms: float
    update_max: float
    nonfinite: int
    seconds: float


@dataclass
class TensorDrift:
    name: str
    shape: list[int]
    drift_rel: float  # ||p - p_fp32|| / ||p_fp32 - p_init||
    max_abs: float


def _drift_notes(drift: list[TensorDrift], dtype: str) -> list[str]:
    """Tensors whose low-precision run strayed from the float32 run by at least as far as that run moved: a
    tensor that did not move at all scores exactly 1, so there the updates were lost to rounding."""
    lost = [d for d in drift if d.drift_rel >= 1.0]
    if not lost:
        return []
    worst = max(lost, key=lambda d: d.drift_rel)
    still = sum(1 for d in lost if d.drift_rel == 1.0)
    return [f"{len(lost)} of {len(drift)} tensors strayed from the float32 run by at least as much as they moved "
            f"(worst {worst.name}: {worst.drift_rel:.3g}x; {still} did not move at all): at this step size their "
            f"updates are mostly below {dtype}'s resolution (stochastic rounding keeps them only on average, "
            "float32 master weights keep them)"]


@dataclass
class FullModel:
    path: str
    tensors: int
    parameters: int
    trained_parameters: int
    predicted_gib: float
    adamw_fp32_gib: float
    lora_rank: int | None


@dataclass
class DryRunReport:
    config: str
    optimizer_type: str
    optimizer_class: str
    optimizer_file: str  # where the class was imported from: a trainer's optimizers/ folder would show here
    dtype: str
    device: str
    seed: int
    parameters: int
    tensors: list[dict]
    steps: list[StepRecord] = field(default_factory=list)
    state_bytes_measured: int = 0
    state_bytes_predicted: int = 0
    full_model: FullModel | None = None
    drift: list[TensorDrift] | None = None
    status: str = "healthy"  # healthy | non-finite | diverged | crashed
    message: str = ""
    notes: list[str] = field(default_factory=list)  # findings that do not fail the run (e.g. lost updates)

    @property
    def bytes_per_param(self) -> float:
        return self.state_bytes_measured / max(self.parameters, 1)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["bytes_per_param"] = self.bytes_per_param
        return d


def trained_dtype(config: dict) -> str:
    for key in ("adapter", "model"):
        t = config.get(key)
        if isinstance(t, dict) and isinstance(t.get("dtype"), str) and t["dtype"] in registry.DTYPE_BYTES:
            return t["dtype"]
    return "float32"


def lora_rank(config: dict) -> int | None:
    a = config.get("adapter")
    if isinstance(a, dict) and str(a.get("type", "")).lower() == "lora":
        r = a.get("rank", 16)
        return int(r) if isinstance(r, int) and r > 0 else 16
    return None


def builtin_model(rank: int | None) -> list[ParamSpec]:
    """A small model with the parameter kinds of a diffusion transformer; LoRA pairs when training LoRA."""
    base = [ParamSpec("img_in.weight", (256, 64)), ParamSpec("img_in.bias", (256,)),
            ParamSpec("patch_conv.weight", (64, 16, 2, 2)), ParamSpec("patch_conv.bias", (64,)),
            ParamSpec("time_embed.weight", (1000, 64)),
            ParamSpec("blocks.0.norm1.scale", (256,)),
            ParamSpec("blocks.0.attn.qkv.weight", (768, 256)), ParamSpec("blocks.0.attn.qkv.bias", (768,)),
            ParamSpec("blocks.0.attn.proj.weight", (256, 256)),
            ParamSpec("blocks.0.mlp.fc1.weight", (1024, 256)), ParamSpec("blocks.0.mlp.fc2.weight", (256, 1024)),
            ParamSpec("final.norm.scale", (256,)), ParamSpec("final.gain", (1,))]
    if rank is None:
        return base
    out = []
    for p in base:
        if len(p.shape) == 2 and p.name.startswith("blocks."):
            stem = p.name[: -len(".weight")]
            out.append(ParamSpec(f"{stem}.lora_A.weight", (rank, p.shape[1])))
            out.append(ParamSpec(f"{stem}.lora_B.weight", (p.shape[0], rank), note="zero init"))
    return out


def _scaled(shape: tuple[int, ...], budget: int) -> tuple[int, ...]:
    n = math.prod(shape)
    if n <= budget:
        return shape
    f = (budget / n) ** (1 / len(shape))
    return tuple(max(1, int(s * f)) for s in shape)


def shapes_from(path: str, rank: int | None, max_params: int) -> tuple[list[ParamSpec], list, FullModel]:
    """The full model's tensors from a safetensors header (no weights read) and a sample to step on."""
    from optinspect.state.header import HeaderError, read_header

    try:
        header = read_header(path)
    except OSError as e:
        raise DryRunError(f"cannot read --shapes-from {path}: {e.strerror or e}") from None
    except HeaderError as e:
        raise DryRunError(str(e)) from None
    floats = [t for t in header.tensors if t.dtype in ("F32", "F16", "BF16", "F64", "F8_E4M3", "F8_E5M2")]
    if not floats:
        raise DryRunError(f"{path}: no floating-point tensors in the header")
    if rank is not None:  # LoRA on every 2-D weight of the transformer: A (r, in) and B (out, r)
        trained = []
        for t in floats:
            if len(t.shape) == 2 and t.name.endswith(".weight") and min(t.shape) > rank:
                stem = t.name[: -len(".weight")]
                trained.append((f"{stem}.lora_A.weight", (rank, t.shape[1])))
                trained.append((f"{stem}.lora_B.weight", (t.shape[0], rank)))
    else:
        trained = [(t.name, t.shape) for t in floats]
    # a sample spread over the kinds of tensors (by rank), within the element budget
    by_rank: dict[int, list] = {}
    for name, shape in trained:
        by_rank.setdefault(len(shape), []).append((name, shape))
    sample: list[ParamSpec] = []
    used = 0
    queues = [sorted(v, key=lambda x: math.prod(x[1])) for _, v in sorted(by_rank.items())]
    while any(queues) and used < max_params:
        for q in queues:
            if not q or used >= max_params:
                continue
            name, shape = q.pop(len(q) // 2)
            s = _scaled(tuple(shape), max(1, min(max_params - used, max_params // 4)))
            sample.append(ParamSpec(name, s, note="" if s == tuple(shape) else f"scaled from {list(shape)}"))
            used += math.prod(s)
    full = FullModel(path=path, tensors=len(header.tensors), parameters=sum(t.numel for t in floats),
                     trained_parameters=sum(math.prod(s) for _, s in trained), predicted_gib=0.0,
                     adamw_fp32_gib=0.0, lora_rank=rank)
    return sample, trained, full


def _source_file(klass: type) -> str:
    import inspect

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


def _make_params(specs: list[ParamSpec], dtype: torch.dtype, device: torch.device, seed: int):
    g = torch.Generator().manual_seed(seed)
    params, targets = [], []
    for s in specs:
        if "zero init" in s.note:
            init = torch.zeros(s.shape)
        elif s.name.endswith((".scale", ".gain")):
            init = torch.ones(s.shape)
        else:
            init = torch.randn(s.shape, generator=g) * (1.0 / math.sqrt(max(s.shape[-1], 1)))
        target = init + torch.randn(s.shape, generator=g) * 0.02
        params.append(torch.nn.Parameter(init.to(device=device, dtype=dtype)))
        targets.append(target.to(device))
    return params, targets


def _loss(params, targets, step: int, seed: int) -> torch.Tensor:
    """A noisy quadratic pull towards a fixed random target per tensor: moments evolve, gradients are real."""
    g = torch.Generator().manual_seed(seed * 7919 + step)
    total = None
    for p, t in zip(params, targets, strict=True):
        w = (1 + 0.5 * (torch.rand(p.shape, generator=g) * 2 - 1)).to(p.device)
        term = (w * (p.float() - t) ** 2).mean()
        total = term if total is None else total + term
    return total


def _predicted(schema: str, table: dict, specs: list[ParamSpec], dtype: str) -> int:
    return sum(registry.state_bytes(schema, table, s.shape, dtype) for s in specs)


def run(config_path: str, config: dict, *, steps: int = 10, dtype: str | None = None, device: str = "cpu",
        seed: int = 0, shapes: str | None = None, max_params: int = 4_000_000, compare_fp32: bool = False,
        progress: Callable[[int, int], None] | None = None) -> tuple[DryRunReport, torch.optim.Optimizer, list[str]]:
    """Build the optimizer from `config` and step it; returns the report, the optimizer and parameter names."""
    table = dict(config["optimizer"])
    res = catalog.resolve_type(table["type"])
    dtype = dtype or trained_dtype(config)
    if dtype not in ("float32", "bfloat16", "float16"):
        raise DryRunError(f"--dtype must be float32, bfloat16 or float16, got {dtype!r}")
    try:
        dev = torch.device(device)
        torch.empty(1, device=dev)
    except (RuntimeError, AssertionError) as e:
        raise DryRunError(f"device {device!r} is not available: {e}") from None
    rank = lora_rank(config)
    full = None
    if shapes:
        specs, trained, full = shapes_from(shapes, rank, max_params)
        full.predicted_gib = sum(registry.state_bytes(res.schema, table, s, dtype) for _, s in trained) / 2**30
        full.adamw_fp32_gib = sum(registry.adamw_fp32_bytes(s) for _, s in trained) / 2**30
    else:
        specs = builtin_model(rank)
    torch_dtype = getattr(torch, dtype)
    params, targets = _make_params(specs, torch_dtype, dev, seed)
    torch.manual_seed(seed)
    opt = build_optimizer(params, table, config)
    report = DryRunReport(config=config_path, optimizer_type=table["type"],
                          optimizer_class=f"{type(opt).__module__}.{type(opt).__qualname__}",
                          optimizer_file=_source_file(type(opt)), dtype=dtype,
                          device=str(dev), seed=seed, parameters=sum(p.numel() for p in params),
                          tensors=[{"name": s.name, "shape": list(s.shape), "note": s.note} for s in specs],
                          full_model=full)
    shadow = None
    if compare_fp32:
        shadow_params = [torch.nn.Parameter(p.detach().float().clone()) for p in params]
        shadow_table = dict(table)
        if res.schema in registry.TYPES:  # full-precision state, so the drift shows what the low-precision one costs
            shadow_table.update(registry.TYPES[res.schema].fp32_shadow)
        shadow = (shadow_params, build_optimizer(shadow_params, shadow_table, config),
                  [p.detach().float().clone() for p in params])
    first_loss = None
    for t in range(1, steps + 1):
        loss = _loss(params, targets, t, seed)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        before = [p.detach().float().clone() for p in params]
        t0 = time.perf_counter()
        try:
            opt.step()
        except (RuntimeError, ValueError, ArithmeticError, TypeError) as e:
            report.status = "crashed"
            report.message = f"step {t}: the optimizer raised {type(e).__name__}: {e}"
            break
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        dt = time.perf_counter() - t0
        sq, count, mx, bad = 0.0, 0, 0.0, 0
        for p, b in zip(params, before, strict=True):
            d = p.detach().float() - b
            fin = torch.isfinite(d)
            bad += int((~torch.isfinite(p.detach())).sum())
            d = torch.where(fin, d, torch.zeros_like(d))
            sq += float((d * d).sum())
            count += d.numel()
            mx = max(mx, float(d.abs().max()) if d.numel() else 0.0)
        lv = loss.item()
        first_loss = lv if first_loss is None else first_loss
        report.steps.append(StepRecord(t, lv, math.sqrt(sq / max(count, 1)), mx, bad, dt))
        if shadow is not None:
            sp, sopt, _ = shadow
            sloss = _loss(sp, targets, t, seed)
            sopt.zero_grad(set_to_none=True)
            sloss.backward()
            sopt.step()
        if progress:
            progress(t, steps)
        if bad or not math.isfinite(lv):
            report.status = "non-finite"
            report.message = f"step {t}: {bad} non-finite parameter values" if bad else f"step {t}: loss is {lv}"
            break
    if report.status == "healthy" and report.steps:
        final = _loss(params, targets, len(report.steps) + 1, seed).item()
        if not math.isfinite(final):
            report.status, report.message = "non-finite", f"loss after the last step is {final}"
        elif first_loss and final > DIVERGENCE_FACTOR * first_loss:
            report.status = "diverged"
            report.message = f"loss rose from {first_loss:.4g} to {final:.4g} (x{final / first_loss:.3g})"
    report.state_bytes_measured = _state_bytes(opt)
    report.state_bytes_predicted = _predicted(res.schema, table, specs, dtype) if res.schema else 0
    if shadow is not None:
        sp, _, init = shadow
        report.drift = []
        for s, p, q, i in zip(specs, params, sp, init, strict=True):
            moved = float((q.detach() - i).norm())
            diff = p.detach().float() - q.detach()
            report.drift.append(TensorDrift(s.name, list(s.shape), float(diff.norm()) / moved if moved > 0 else 0.0,
                                            float(diff.abs().max())))
        if report.status == "healthy":  # a run that failed says so in its status
            report.notes += _drift_notes(report.drift, dtype)
    return report, opt, [s.name for s in specs]
