"""REMASTER (Clybius, as shipped in geocine/diffusion-chroma `optimizers/remaster.py`), re-implemented.

Faithful to the trainer's copy by default, including two behaviours worth knowing:
* orthograd renormalises with a floor of 1e-3, so tiny (LoRA) gradients are shrunk (`orthograd_floor`);
* resets after the first come one step early (`exact_reset_period=True` gives the documented period).
The first step (and the first after each reset) is a sign step of ~2*lr: the second moment starts at 0.
"""

from __future__ import annotations

import torch

from ._ahead import reduction
from ._base import PerParameterOptimizer, check_betas, check_range, write_back_
from ._common import (
    A2,
    adopt_scalars,
    advance_counters,
    agreement_mask,
    begin_ema_step,
    norm2,
    orthograd_dots_ahead,
    rms_clip_,
)

__all__ = ["REMASTER"]


class REMASTER(PerParameterOptimizer):
    """REMASTER: norm-renormalised gradient, adaptive EMA mask, ADOPT-style atan2 update."""

    _ahead_of_step = orthograd_dots_ahead
    steps_side_by_side = True

    def __init__(self, params, lr: float = 1e-4, betas: tuple[float, float] = (0.95, 0.9999),
                 weight_decay: float = 0.0, weight_decay_rate: float = 0.998, amp: float = 5.0,
                 reset_interval: int = 0, reset_increment: int = 0, orthograd: bool = True,
                 cautious_min: float = 1.0, stochastic_fp: bool = True, exact_reset_period: bool = False,
                 orthograd_floor: float = 1e-3, fp16_rounding: bool = False):
        # As the original, nothing but betas (where it divides by zero or goes NaN) is validated; orthograd_floor
        # is optinspect's own option.
        check_betas(betas)
        check_range("orthograd_floor", orthograd_floor, 0.0, lo_open=True)
        defaults = dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay, weight_decay_rate=weight_decay_rate,
                        amp=amp, reset_interval=reset_interval, reset_increment=reset_increment, orthograd=orthograd,
                        cautious_min=cautious_min, stochastic_fp=stochastic_fp,
                        exact_reset_period=exact_reset_period, orthograd_floor=orthograd_floor,
                        fp16_rounding=fp16_rounding)
        super().__init__(params, defaults)

    def _begin_group(self, group: dict) -> None:
        group["step"] = group.get("step", 0) + 1  # counted, as in the original; the math uses per-parameter steps

    def _init_state(self, p: torch.Tensor, group: dict) -> None:
        state = self.state[p]
        state["ema"] = torch.zeros_like(p)
        state["ema_squared"] = torch.zeros_like(p)
        if group["reset_interval"] > 0:
            state["times_zero"] = 0
            state["steps_since_reset"] = 1
        state["step"] = 0

    def _step_param(self, p: torch.Tensor, group: dict) -> None:
        beta1, beta2 = group["betas"][:2]
        state, upcast, g, p_w, ema, v = begin_ema_step(self, p, group, group["orthograd_floor"])

        def reset() -> None:
            ema.zero_()
            v.zero_()

        k = advance_counters(state, group, reset)
        slow_beta2, bias_correction, bias_correction_sqrt = adopt_scalars(beta1, beta2, k)
        step_size = group["lr"] * A2

        rms_clip_(g)
        norm_ratio = torch.atan2(reduction(norm2, g), reduction(norm2, ema)).mul(A2)
        if norm_ratio > 1e-6:
            g.div_(norm_ratio)
        ema.mul_(beta1).add_(g, alpha=1 - beta1)
        ema.mul_(agreement_mask(g, ema, beta1, 1e-3))
        c = g.add(ema / bias_correction, alpha=group["amp"])
        denom = v.sqrt().div_(bias_correction_sqrt)
        v.mul_(slow_beta2).addcmul_(c, c, value=1 - slow_beta2)
        update = torch.atan2(c, denom)
        if group["weight_decay"] != 0:
            update.add_(p_w, alpha=group["weight_decay"] * group["weight_decay_rate"] ** k)
        if group["cautious_min"] != 1:
            update.mul_(agreement_mask(update, g, group["cautious_min"], 1e-3))
        p_w.add_(update, alpha=-step_size)

        write_back_([(state["ema"], ema), (state["ema_squared"], v), (p, p_w)], fp16_exact=group["fp16_rounding"])
        if group["reset_interval"] > 0:
            state["steps_since_reset"] += 1
