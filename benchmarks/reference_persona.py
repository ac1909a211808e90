"""A same-run stand-in for the original PersonaOptimizer's fp32 step, for benchmarks/optimizers.py only.

The original is not shipped with this project. This is `../shared/spec/optimizers.md` section 6.2 written
out as the original code does it for fp32 parameters: one parameter at a time, whole-tensor ops, moments
updated in place, and four fresh parameter-sized temporaries per step (sqrt of the second moment, the
bias-corrected ema, the sum `g + amp * ema/bc1` as one add with alpha, and atan2); the `.float()` working
copies of fp32 tensors are the tensors themselves and the final write-back copies a tensor onto itself,
which costs nothing. It covers the benchmark's table (no orthograd, focus, cautious, constrain or resets)
and refuses anything else; the benchmark checks its parameters against ours after the timed steps.

`lean=True` writes the same step with in-place operations and two temporaries per parameter: no whole-tensor
implementation of the step does less, so its time is a lower bound for the original's.
"""

from __future__ import annotations

import torch

A2 = 1.27323954474


class SpecPersona(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-4, betas=(0.95, 0.999), weight_decay: float = 0.0,
                 weight_decay_rate: float = 1.0, amp_factor: float = 1.0, eps: float = 1e-8, lean: bool = False):
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay,
                                      weight_decay_rate=weight_decay_rate, amp_factor=amp_factor, eps=eps))
        self.lean = lean

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            eps = group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.dtype != torch.float32:
                    raise TypeError("the reference covers fp32 parameters only")
                g = p.grad
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["ema"] = torch.zeros_like(p)
                    state["ema_squared"] = g.pow(2)
                ema, v = state["ema"], state["ema_squared"]
                state["step"] += 1
                k = state["step"]
                bc1 = max(1 - beta1**k, eps)
                bc2s = max((1 - beta2**k) ** 0.5, eps)
                ema.mul_(beta1).add_(g, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                denom = v.sqrt().add_(eps * bc2s)
                effective_wd = group["weight_decay"] * group["weight_decay_rate"] ** (k - 1)
                if self.lean:
                    update = torch.div(ema, bc1).mul_(group["amp_factor"]).add_(g).atan2_(denom).mul_(A2)
                    if effective_wd > 0:
                        update.add_(p, alpha=effective_wd)
                else:
                    # as the original: the quotient, the sum and atan2 are fresh tensors, the rest in place
                    update = torch.atan2(g.add(ema / bc1, alpha=group["amp_factor"]), denom).mul_(A2)
                    if effective_wd > 0:
                        update.add_(p, alpha=effective_wd)
                p.add_(update, alpha=-group["lr"])
