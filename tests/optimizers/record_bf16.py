"""Record the trainer's own optimizers on bf16 parameters (stochastic rounding, 8-bit states included) into
`bf16_originals.safetensors`, which `test_bf16_originals.py` replays against ours bit for bit.

    OPTINSPECT_TRAINER_CHECKOUT=/path/to/diffusion-chroma python -m tests.optimizers.record_bf16

The trainer's classes are loaded from that checkout's `optimizers/` folder (never copied here); the file holds
only their results: the weights and state tensors after each case's steps.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

OUT = Path(__file__).resolve().parent / "bf16_originals.safetensors"
SHAPES = {"w": (48, 16), "wt": (16, 48), "sq": (24, 24), "b": (24,)}
STEPS = 6
CASES = {  # name -> (trainer type key, constructor keywords as a config would give them)
    "remaster": ("remaster", {"lr": 1e-4, "weight_decay": 0.01}),
    "remaster_resets": ("remaster", {"lr": 1e-3, "reset_interval": 2, "cautious_min": 0.5}),
    "scorn": ("scorn", {"lr": 1e-4, "weight_decay": 0.01}),
    "persona": ("persona", {"lr": 1e-4, "weight_decay": 0.01}),
    "adafactor": ("adafactor", {"lr": 1e-4, "scale_parameter": False, "relative_step": False, "beta1": 0.9}),
    "adamw8bitkahan": ("adamw8bitkahan", {"lr": 2e-5, "weight_decay": 0.01, "stabilize": False,
                                          "min_8bit_size": 256}),
}


def trainer_class(key: str) -> type:
    """The trainer's class; its AdamW8bitKahan reads two per-parameter config keys that bitsandbytes 0.50 no
    longer sets (`percentile_clipping`, `block_wise`): given their former defaults, it runs unchanged."""
    from tests.trainer_oracle import _trainer_class

    klass = _trainer_class(key)
    if key != "adamw8bitkahan":
        return klass

    class WithFormerConfig(klass):
        def get_config(self, gindex, pindex, group):
            config = super().get_config(gindex, pindex, group)
            config.setdefault("percentile_clipping", 100)
            config.setdefault("block_wise", True)
            return config

    return WithFormerConfig


def start() -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter((torch.randn(s, generator=g) * 0.02).bfloat16()) for s in SHAPES.values()]


def run(make, params) -> torch.optim.Optimizer:
    """The same gradients and the same global seed for every run: stochastic rounding draws alike."""
    opt = make(params)
    torch.manual_seed(1234)
    for t in range(STEPS):
        g = torch.Generator().manual_seed(100 + t)
        for p in params:
            p.grad = (torch.randn(p.shape, generator=g) * 1e-3 + p.detach().float() * 0.1).bfloat16()
        opt.step()
    return opt


def flat(name: str, params, opt) -> dict[str, torch.Tensor]:
    out = {}
    for key, p in zip(SHAPES, params, strict=True):
        out[f"{name}/{key}/param"] = p.detach().clone()
        for k, v in opt.state[p].items():
            if isinstance(v, torch.Tensor) and v.numel() > 1:
                out[f"{name}/{key}/{k}"] = v.detach().clone().contiguous()
    return out


def main() -> None:
    from safetensors.torch import save_file

    tensors = {}
    for name, (key, kw) in CASES.items():
        klass = trainer_class(key)
        params = start()
        tensors.update(flat(name, params, run(lambda ps, k=klass, a=kw: k(ps, **a), params)))
    save_file(tensors, str(OUT), metadata={"cases": json.dumps(CASES), "steps": str(STEPS)})
    print(f"{len(tensors)} tensors -> {OUT}")


if __name__ == "__main__":
    main()
