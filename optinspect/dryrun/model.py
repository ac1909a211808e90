"""The model a dry-run steps on: a small diffusion-transformer-like set of tensors (LoRA pairs when training
LoRA), or a sample of a real model's shapes read from its safetensors header; and the loss that drives it."""

from __future__ import annotations

import math

import torch

from optinspect import specs as registry
from optinspect.dryrun.report import FullModel, ParamSpec


class DryRunError(Exception):
    """A config or input problem (exit 2): the message says what and where."""


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


def make_params(specs: list[ParamSpec], dtype: torch.dtype, device: torch.device, seed: int):
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


def loss(params, targets, step: int, seed: int) -> torch.Tensor:
    """A noisy quadratic pull towards a fixed random target per tensor: moments evolve, gradients are real."""
    g = torch.Generator().manual_seed(seed * 7919 + step)
    total = None
    for p, t in zip(params, targets, strict=True):
        w = (1 + 0.5 * (torch.rand(p.shape, generator=g) * 2 - 1)).to(p.device)
        term = (w * (p.float() - t) ** 2).mean()
        total = term if total is None else total + term
    return total
