"""Reading ../shared/golden (never copied into the repo): the recorded trajectories of the originals."""

from __future__ import annotations

import json

import pytest
import torch

from ..conftest import GOLDEN

DATA = GOLDEN / "data"
NAMES = ("linear.weight", "linear.bias", "conv.weight", "gain", "embed", "lora_down", "lora_up")


def index() -> dict:
    path = DATA / "index.json"
    if not path.exists():
        return {}
    return json.loads(path.read_text())["cases"]


def fp32_cases() -> list[str]:
    return sorted(c for c, v in index().items() if v["dtype"] == "float32")


def load(case: str) -> tuple[dict, dict]:
    from safetensors.torch import load_file

    meta = index()[case]
    return meta, load_file(str(DATA / meta["file"]))


def table(meta: dict) -> dict:
    return {**meta["config"], "type": meta["type"]}


def params_from(gold: dict) -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(gold[f"init.{n}"].clone()) for n in NAMES]


def set_grads(params, gold: dict, step: int) -> None:
    for n, p in zip(NAMES, params, strict=True):
        key = f"grad.{step}.{n}"
        p.grad = gold[key].clone() if key in gold else None


requires_golden = pytest.mark.skipif(not (DATA / "index.json").exists(), reason="../shared/golden not present")
