"""The originals' recorded trajectories, carried in `golden_data/` (written by `golden_pack.py`; see its
docstring for the format): 18 fp32 cases of the trainer's optimizers, 25 steps each, on seven tensors."""

from __future__ import annotations

import hashlib
import json
import lzma
from functools import cache
from pathlib import Path

import torch

DATA = Path(__file__).resolve().parent / "golden_data"
NAMES = ("linear.weight", "linear.bias", "conv.weight", "gain", "embed", "lora_down", "lora_up")


@cache
def index() -> dict:
    return json.loads((DATA / "cases.json").read_text())["cases"]


@cache
def archive() -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    return load(lzma.decompress((DATA / "tensors.safetensors.xz").read_bytes()))


def fp32_cases() -> list[str]:
    return sorted(index())


def _grad_bits(case: str) -> torch.Tensor:
    """The case's gradients, all steps concatenated, as int32 bit patterns (undoing the XOR chain)."""
    bits = archive()[f"{case}/grads"].t().contiguous().view(torch.int32).reshape(-1)
    base = index()[case]["grad_base"]
    return bits ^ _grad_bits(base) if base else bits


def load(case: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """(meta, tensors) with the recording's keys: init.<p>, grad.<t>.<p>, param.<n_steps>.<p>, state.*, group.*,
    trace.*; the intermediate parameters are in meta["digests"][t - 1] (see `digest`)."""
    meta = index()[case]
    arc = archive()
    gold = {f"init.{n}": arc[f"init.{n}"] for n in NAMES}
    flat, at = _grad_bits(case).view(torch.float32), 0
    for t in range(1, meta["n_steps"] + 1):
        for n in NAMES:
            shape = meta["shapes"][n]
            size = gold[f"init.{n}"].numel()
            gold[f"grad.{t}.{n}"] = flat[at:at + size].reshape(shape)
            at += size
    prefix = f"{case}/"
    gold.update({k[len(prefix):]: v for k, v in arc.items() if k.startswith(prefix) and k != f"{case}/grads"})
    return meta, gold


def digest(t: torch.Tensor) -> str:
    """The recorded form of an intermediate parameter: the first 16 hex digits of SHA-256 over its bytes."""
    return hashlib.sha256(t.detach().contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()[:16]


def table(meta: dict) -> dict:
    return {**meta["config"], "type": meta["type"]}


def params_from(gold: dict) -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(gold[f"init.{n}"].clone()) for n in NAMES]


def set_grads(params, gold: dict, step: int) -> None:
    for n, p in zip(NAMES, params, strict=True):
        key = f"grad.{step}.{n}"
        p.grad = gold[key].clone() if key in gold else None
