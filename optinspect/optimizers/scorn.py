"""SCORN (Clybius, as shipped in geocine/diffusion-chroma `optimizers/scorn.py`), re-implemented.

Numerically faithful to the trainer's copy (golden trajectories replay at 0 deviation) with its state layout,
without its per-step clones of the parameter and moments, and without its crashes (several parameter groups,
5-D tensors are rejected at construction time rather than in the middle of a run).
Known quirk kept by default: resets after the first come one step early (`exact_reset_period=True` fixes it).
"""

from __future__ import annotations

import math

import torch

from ._ahead import reduction
from ._base import check_betas, working
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
    rms_clip_,
    rms_clip_multi_,
)

__all__ = ["SCORN", "lmo_", "lmo_many_", "newton_schulz", "newton_schulz_many"]

_NS_COEFFS = tuple((a / 1024, b / 1024, c / 1024) for a, b, c in (
    (3955, -8306, 5008), (3735, -6681, 3463), (3799, -6499, 3211),
    (4019, -6385, 2906), (2677, -3029, 1162), (2172, -1833, 682)))
# The same values as 0-dim fp32 CPU tensors, which serve an op on any device: a Python float is wrapped and
# converted to the operand's dtype on every use (~2 us, 18 times per Newton-Schulz), into these very values
# (each k/1024, exact in fp32).
_NS_SCALARS = tuple(tuple(torch.tensor(v, dtype=torch.float32) for v in abc) for abc in _NS_COEFFS)


def newton_schulz(G: torch.Tensor) -> torch.Tensor:
    """Six fixed-coefficient Newton-Schulz iterations towards the orthogonal polar factor, in fp32."""
    X = G.float()
    X = X / (X.norm() + 1e-12)
    transposed = X.size(0) > X.size(1)
    if transposed:
        X = X.T
    for a, b, c in _NS_SCALARS:
        A = X @ X.T
        B = b * A + (c * A) @ A
        X = a * X + B @ X
    return X.T if transposed else X


def newton_schulz_many(gs: list[torch.Tensor]) -> list[torch.Tensor]:
    """`newton_schulz` of matrices of one shape as one batch, step for step the same (a tall batch iterates on
    its transposes' view, as the single ones do, and the results keep their layouts): each operation one
    kernel for all (`bmm`) instead of one per matrix, 50 per matrix. Each is normalised by its own norm. A
    batched product rounds as the single ones do for most shapes, not all (small matrices on CPU take another
    kernel), so this is the path off CPU only."""
    xs = [g.float() for g in gs]
    norms = torch.stack([x.norm() for x in xs]).add_(1e-12)
    X = torch.stack(xs).div_(norms.view(-1, 1, 1))
    transposed = X.size(1) > X.size(2)
    if transposed:
        X = X.transpose(1, 2)
    for a, b, c in _NS_SCALARS:
        A = torch.bmm(X, X.transpose(1, 2))
        B = b * A + torch.bmm(c * A, A)
        X = a * X + torch.bmm(B, X)
    return list((X.transpose(1, 2) if transposed else X).unbind(0))


def _spectral_scale(g: torch.Tensor, polar: torch.Tensor) -> torch.Tensor:
    """The polar factor of a 2-D gradient (or of a kernel's rows, 3-D/4-D) scaled by the layer's shape."""
    d0, d1 = g.shape[0], g.shape[1]
    if g.ndim == 2:
        return polar.mul_(math.sqrt(d0 / d1))
    return polar.view(g.shape) * (math.sqrt(d0 / d1) / g.shape[2] ** 2)


def lmo_(g: torch.Tensor) -> torch.Tensor:
    """The norm-ball linear minimisation oracle by rank: unit vector (<= 1-D), spectral (2-D), per kernel row."""
    if g.ndim <= 1:
        return g.div_(g.pow(2).sum(dim=0, keepdim=True).sqrt_().add_(1e-12))
    if g.ndim > 4:
        raise ValueError(f"SCORN supports tensors of up to 4 dimensions, got shape {tuple(g.shape)}")
    return _spectral_scale(g, newton_schulz(g if g.ndim == 2 else g.view(g.shape[0], -1)))


# Tests switch this on to run the batched Newton-Schulz on CPU (against the per-matrix one, within the gate).
BATCHED_NS_ON_CPU = False


def lmo_many_(gs: list[torch.Tensor]) -> list[torch.Tensor]:
    """`lmo_` of each tensor of a chain; off CPU, matrices of one shape (3-D/4-D ones as their kernels' rows) and
    dtype run Newton-Schulz as one batch (`newton_schulz_many`)."""
    out: list[torch.Tensor | None] = [None] * len(gs)
    alike: dict[tuple, list[int]] = {}
    for i, g in enumerate(gs):
        if 2 <= g.ndim <= 4 and (not g.is_cpu or BATCHED_NS_ON_CPU):
            alike.setdefault((g.shape[0], math.prod(g.shape[1:]), g.dtype, g.device), []).append(i)
        else:
            out[i] = reduction(lmo_, g)
    for idx in alike.values():
        if len(idx) == 1:
            out[idx[0]] = reduction(lmo_, gs[idx[0]])
            continue
        mats = [gs[i] if gs[i].ndim == 2 else gs[i].view(gs[i].shape[0], -1) for i in idx]
        for i, polar in zip(idx, newton_schulz_many(mats), strict=True):
            out[i] = _spectral_scale(gs[i], polar)
    return out


class SCORN(EmaStepOptimizer):
    """SCORN: spectral (Newton-Schulz) normalised gradient, ADOPT-style second moment, atan2 update.

    Args mirror the trainer's class; see `optinspect schema scorn` for ranges and defaults.
    """

    def __init__(self, params, lr: float = 1e-4, betas: tuple[float, float] = (0.95, 0.9999), focus_ratio: float = 0.0,
                 weight_decay: float = 0.0, weight_decay_rate: float = 0.998, amp: float = 5.0,
                 reset_interval: int = 0, reset_increment: int = 0, orthograd: bool = False,
                 spectral_update_scale: float = 1.0, constrain: bool = False, cautious_min: float = 1.0,
                 stochastic_fp: bool = True, exact_reset_period: bool = False, fp16_rounding: bool = False):
        # The original validates nothing: whatever it runs with (a negative lr, reset_interval = 100.0, a third
        # beta) this runs with too. Only betas are checked, where the original divides by zero or goes NaN.
        check_betas(betas)
        defaults = dict(lr=lr, betas=tuple(betas), focus_ratio=focus_ratio, weight_decay=weight_decay,
                        weight_decay_rate=weight_decay_rate, amp=amp, reset_interval=reset_interval,
                        reset_increment=reset_increment, orthograd=orthograd,
                        spectral_update_scale=spectral_update_scale, constrain=constrain, cautious_min=cautious_min,
                        stochastic_fp=stochastic_fp, exact_reset_period=exact_reset_period,
                        fp16_rounding=fp16_rounding)
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim > 4:
                    raise ValueError(f"SCORN supports tensors of up to 4 dimensions, got shape {tuple(p.shape)}")

    def _init_state(self, p: torch.Tensor, group: dict) -> None:
        """The second moment starts at the first gradient squared (after orthograd), not at zero."""
        state = self.state[p]
        state["ema"] = torch.zeros_like(p)
        state["ema_squared"] = p.grad.pow(2).to(p.dtype)
        if group["reset_interval"] > 0:
            state["times_zero"] = 0
            state["steps_since_reset"] = 1
        if group["focus_ratio"] > 0:
            state["pbar"] = torch.zeros_like(p)
        state["step"] = 0

    def _prepare(self, p: torch.Tensor, group: dict) -> EmaStep:
        """Orthograd, the state, the working tensors, and the counters (with a due reset)."""
        w = begin_ema_step(self, p, group, 1e-6)
        if group["focus_ratio"] > 0 and "pbar" in w.state:
            w.pbar = working(w.state["pbar"], w.upcast)

        def reset() -> None:
            w.ema.zero_()
            w.v.copy_(w.g.pow(2))
            if w.pbar is not None:
                w.pbar.zero_()

        w.k = advance_counters(w.state, group, reset)
        return w

    @staticmethod
    def _update(w: EmaStep, group: dict) -> None:
        beta1, beta2 = group["betas"][:2]
        p_w, ema, v, pbar = w.p_w, w.ema, w.v, w.pbar
        slow_beta2, bias_correction, bias_correction_sqrt = adopt_scalars(beta1, beta2, w.k)
        rms_clip_(w.g)
        g = reduction(lmo_, w.g)  # a norm and matrix products
        ema.mul_(agreement_mask(g, ema, beta1, 1e-3))
        ema.mul_(beta1).add_(g, alpha=1 - beta1)
        update = adopt_atan2(g, ema, v, group["amp"], bias_correction, bias_correction_sqrt, slow_beta2)
        update.mul_(A2).mul_(group["spectral_update_scale"])
        if pbar is not None:
            pbar.lerp_(p_w, 1 - beta1)
            update.add_(p_w - pbar / bias_correction, alpha=group["focus_ratio"])
        if group["weight_decay"] != 0 and not group["constrain"]:
            update.add_(p_w, alpha=group["weight_decay"] * group["weight_decay_rate"] ** w.k)
        if group["cautious_min"] != 1:
            update.mul_(agreement_mask(update, g, group["cautious_min"], 1e-3))
        if group["constrain"]:
            p_w.mul_(1 - group["lr"])
        p_w.add_(update, alpha=-group["lr"])

    @staticmethod
    def _update_multi(work: list[EmaStep], group: dict) -> None:
        """`_update` over parameters at the same k, as multi-tensor chains: the same operations element by
        element, each tensor's reductions and Newton-Schulz its own."""
        pbars = [w.pbar for w in work]
        if None in pbars and any(pbars):  # focus on, and a resumed state without its running mean for some
            for w in work:
                SCORN._update(w, group)
            return
        beta1, beta2 = group["betas"][:2]
        k = work[0].k
        p_ws, emas, vs = ([getattr(w, name) for w in work] for name in ("p_w", "ema", "v"))
        slow_beta2, bias_correction, bias_correction_sqrt = adopt_scalars(beta1, beta2, k)
        rms_clip_multi_([w.g for w in work])
        gs = lmo_many_([w.g for w in work])
        torch._foreach_mul_(emas, agreement_masks(gs, emas, beta1, 1e-3))
        torch._foreach_mul_(emas, beta1)
        torch._foreach_add_(emas, gs, alpha=1 - beta1)
        updates = adopt_atan2_multi(gs, emas, vs, group["amp"], bias_correction, bias_correction_sqrt, slow_beta2)
        torch._foreach_mul_(updates, A2)
        torch._foreach_mul_(updates, group["spectral_update_scale"])
        if pbars[0] is not None:
            torch._foreach_lerp_(pbars, p_ws, 1 - beta1)
            torch._foreach_add_(updates, torch._foreach_sub(p_ws, torch._foreach_div(pbars, bias_correction)),
                                alpha=group["focus_ratio"])
        if group["weight_decay"] != 0 and not group["constrain"]:
            torch._foreach_add_(updates, p_ws, alpha=group["weight_decay"] * group["weight_decay_rate"] ** k)
        if group["cautious_min"] != 1:
            torch._foreach_mul_(updates, agreement_masks(updates, gs, group["cautious_min"], 1e-3))
        if group["constrain"]:
            torch._foreach_mul_(p_ws, 1 - group["lr"])
        torch._foreach_add_(p_ws, updates, alpha=-group["lr"])
