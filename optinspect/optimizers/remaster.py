"""REMASTER (Clybius, as shipped in geocine/diffusion-chroma `optimizers/remaster.py`), re-implemented.

Faithful to the trainer's copy by default, including two behaviours worth knowing:
* orthograd renormalises with a floor of 1e-3, so tiny (LoRA) gradients are shrunk (`orthograd_floor`);
* resets after the first come one step early (`exact_reset_period=True` gives the documented period).
The first step (and the first after each reset) is a sign step of ~2*lr: the second moment starts at 0.
"""

from __future__ import annotations

import torch

from ._ahead import reduction
from ._base import check_betas, check_range
from ._common import (
    A2,
    EmaStep,
    EmaStepOptimizer,
    adopt_atan2,
    adopt_atan2_multi,
    adopt_scalars,
    advance_counters,
    agreement_mask,
    agreement_masks,
    begin_ema_step,
    norm2,
    rms_clip_,
    rms_clip_multi_,
)

__all__ = ["REMASTER"]


class REMASTER(EmaStepOptimizer):
    """REMASTER: norm-renormalised gradient, adaptive EMA mask, ADOPT-style atan2 update."""

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

    def _init_state(self, p: torch.Tensor, group: dict) -> None:
        state = self.state[p]
        state["ema"] = torch.zeros_like(p)
        state["ema_squared"] = torch.zeros_like(p)
        if group["reset_interval"] > 0:
            state["times_zero"] = 0
            state["steps_since_reset"] = 1
        state["step"] = 0

    def _prepare(self, p: torch.Tensor, group: dict) -> EmaStep:
        """Orthograd, the state, the working tensors, and the counters (with a due reset)."""
        w = begin_ema_step(self, p, group, group["orthograd_floor"])

        def reset() -> None:
            w.ema.zero_()
            w.v.zero_()

        w.k = advance_counters(w.state, group, reset)
        return w

    @staticmethod
    def _update(w: EmaStep, group: dict) -> None:
        beta1, beta2 = group["betas"][:2]
        g, p_w, ema, v = w.g, w.p_w, w.ema, w.v
        slow_beta2, bias_correction, bias_correction_sqrt = adopt_scalars(beta1, beta2, w.k)
        rms_clip_(g)
        norm_ratio = torch.atan2(reduction(norm2, g), reduction(norm2, ema)).mul(A2)
        if norm_ratio > 1e-6:
            g.div_(norm_ratio)
        ema.mul_(beta1).add_(g, alpha=1 - beta1)
        ema.mul_(agreement_mask(g, ema, beta1, 1e-3))
        update = adopt_atan2(g, ema, v, group["amp"], bias_correction, bias_correction_sqrt, slow_beta2)
        if group["weight_decay"] != 0:
            update.add_(p_w, alpha=group["weight_decay"] * group["weight_decay_rate"] ** w.k)
        if group["cautious_min"] != 1:
            update.mul_(agreement_mask(update, g, group["cautious_min"], 1e-3))
        p_w.add_(update, alpha=-group["lr"] * A2)

    @staticmethod
    def _update_multi(work: list[EmaStep], group: dict) -> None:
        """`_update` over parameters at the same k, as multi-tensor chains: the same operations element by
        element, each tensor's reductions its own, and no host sync."""
        beta1, beta2 = group["betas"][:2]
        k = work[0].k
        gs, p_ws, emas, vs = ([getattr(w, name) for w in work] for name in ("g", "p_w", "ema", "v"))
        slow_beta2, bias_correction, bias_correction_sqrt = adopt_scalars(beta1, beta2, k)
        rms_clip_multi_(gs)
        ratios = torch.stack([torch.atan2(reduction(norm2, g), reduction(norm2, e)) for g, e in zip(gs, emas,
                                                                                                  strict=True)])
        ratios.mul_(A2)
        # a ratio of 1e-6 or less (or NaN) leaves g as it is: dividing by one changes no bit
        torch._foreach_div_(gs, torch.where(ratios > 1e-6, ratios, 1.0).unbind())
        torch._foreach_mul_(emas, beta1)
        torch._foreach_add_(emas, gs, alpha=1 - beta1)
        torch._foreach_mul_(emas, agreement_masks(gs, emas, beta1, 1e-3))
        updates = adopt_atan2_multi(gs, emas, vs, group["amp"], bias_correction, bias_correction_sqrt, slow_beta2)
        if group["weight_decay"] != 0:
            torch._foreach_add_(updates, p_ws, alpha=group["weight_decay"] * group["weight_decay_rate"] ** k)
        if group["cautious_min"] != 1:
            torch._foreach_mul_(updates, agreement_masks(updates, gs, group["cautious_min"], 1e-3))
        torch._foreach_add_(p_ws, updates, alpha=-group["lr"] * A2)
