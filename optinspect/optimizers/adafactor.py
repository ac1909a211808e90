"""Enhanced Adafactor (2kpr, after Nerogar/OneTrainer; trainer `optimizers/adafactor.py`), re-implemented.

transformers' Adafactor for fp32/fp16 weights, plus stochastic rounding for bf16 weights; no transformers
import. Kept from the original: torch's `load_state_dict` casts the fp32 moments of bf16 weights down to
bf16 (and the next step casts them back up), so a reloaded bf16 run is not bit-identical;
`fp32_state_on_load=True` keeps the fp32 moments across a reload.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch

from ._ahead import all_threads, reduction, splits_alike
from ._base import PerParameterOptimizer, working, write_back_
from ._common import norm2, scratch, windows

__all__ = ["EnhancedAdafactor", "Adafactor"]

_MOMENTS = ("exp_avg", "exp_avg_sq_row", "exp_avg_sq_col", "exp_avg_sq")


def _mean_rows(t: torch.Tensor) -> torch.Tensor:
    return t.mean(dim=-1)


def _mean_cols(t: torch.Tensor) -> torch.Tensor:
    return t.mean(dim=-2)


def _mean_last(t: torch.Tensor) -> torch.Tensor:
    return t.mean(dim=-1, keepdim=True)


def _rms(t: torch.Tensor) -> torch.Tensor:
    return reduction(norm2, t) / (t.numel() ** 0.5)


class EnhancedAdafactor(PerParameterOptimizer):
    """Adafactor with factored second moments (tensors of 2+ dims), update clipping, optional momentum."""

    def __init__(self, params, lr: float | None = None, eps: tuple[float, float] = (1e-30, 1e-3),
                 clip_threshold: float = 1.0, decay_rate: float = -0.8, beta1: float | None = None,
                 weight_decay: float = 0.0, scale_parameter: bool = True, relative_step: bool = True,
                 warmup_init: bool = False, fp32_state_on_load: bool = False):
        if lr is not None and relative_step:
            raise ValueError("Cannot combine manual `lr` and `relative_step=True` options")
        if warmup_init and not relative_step:
            raise ValueError("`warmup_init=True` requires `relative_step=True`")
        # Those two are transformers' own checks, and all the original makes; a scalar eps fails there at the
        # first step, here at once. eps[1] is read only with scale_parameter (as there, a one-element eps fails
        # at the first step then), and a third eps is never read.
        if not isinstance(eps, (list, tuple)) or len(eps) < 1:
            raise ValueError(f"eps must be a pair (eps1, eps2), got {eps!r}")
        defaults = dict(lr=lr, eps=eps, clip_threshold=clip_threshold, decay_rate=decay_rate, beta1=beta1,
                        weight_decay=weight_decay, scale_parameter=scale_parameter, relative_step=relative_step,
                        warmup_init=warmup_init, fp32_state_on_load=fp32_state_on_load)
        super().__init__(params, defaults)
        self._stash: dict = {}
        self.register_load_state_dict_pre_hook(EnhancedAdafactor._stash_fp32_moments)
        self.register_load_state_dict_post_hook(EnhancedAdafactor._restore_fp32_moments)

    # -- checkpoint fix: torch casts floating state to the parameter's dtype on load ----------------
    @staticmethod
    def _stash_fp32_moments(optimizer: EnhancedAdafactor, state_dict: dict) -> None:
        optimizer._stash = {}
        groups = state_dict.get("param_groups", [])
        if not any(g.get("fp32_state_on_load") for g in optimizer.param_groups):
            return
        saved_ids = [pid for g in groups for pid in g["params"]]
        params = [p for g in optimizer.param_groups for p in g["params"]]
        for pid, p in zip(saved_ids, params, strict=False):
            st = state_dict.get("state", {}).get(pid, {})
            optimizer._stash[p] = {k: v.clone() for k, v in st.items()
                                   if k in _MOMENTS and isinstance(v, torch.Tensor) and v.dtype == torch.float32}

    @staticmethod
    def _restore_fp32_moments(optimizer: EnhancedAdafactor) -> None:
        for p, moments in optimizer._stash.items():
            for k, v in moments.items():
                if k in optimizer.state[p]:
                    optimizer.state[p][k] = v.to(p.device)
        optimizer._stash = {}

    @staticmethod
    def _get_lr(group: dict, state: dict):
        rel_step_sz = group["lr"]
        if group["relative_step"]:
            min_step = 1e-6 * state["step"] if group["warmup_init"] else 1e-2
            rel_step_sz = min(min_step, 1.0 / math.sqrt(state["step"]))
        param_scale = 1.0
        if group["scale_parameter"]:
            param_scale = max(group["eps"][1], state["RMS"])
        return param_scale * rel_step_sz

    def _step_param(self, p: torch.Tensor, group: dict) -> None:
        self._update(p, group)  # step() already runs without autograd: no context per parameter

    def _rounded(self, p: torch.Tensor, group: dict) -> bool:
        return p.dtype == torch.bfloat16  # fp16 weights are rounded to nearest, as the original does

    def _init_state(self, p: torch.Tensor, group: dict) -> None:
        """fp32 state whatever the parameter's dtype (the gradient is upcast first); momentum only when beta1 is
        set, and row/column statistics instead of a full second moment for matrices."""
        state = self.state[p]
        grad = p.grad.float() if p.grad.dtype in (torch.float16, torch.bfloat16) else p.grad
        shape = grad.shape
        state["step"] = 0
        if group["beta1"] is not None:
            state["exp_avg"] = torch.zeros_like(grad)
        if len(shape) >= 2:
            state["exp_avg_sq_row"] = torch.zeros(shape[:-1]).to(grad)
            state["exp_avg_sq_col"] = torch.zeros(shape[:-2] + shape[-1:]).to(grad)
        else:
            state["exp_avg_sq"] = torch.zeros_like(grad)
        state["RMS"] = 0

    @torch.no_grad()
    def step_parameter(self, p: torch.Tensor, group: dict) -> None:
        """One parameter's update (also the gradient-release entry point, as in the trainer)."""
        self._update(p, group)

    def _update(self, p: torch.Tensor, group: dict) -> None:
        grad = p.grad
        if grad.dtype in (torch.float16, torch.bfloat16):
            grad = grad.float()
        if grad.is_sparse:
            raise RuntimeError("Adafactor does not support sparse gradients.")
        state = self.state[p]
        shape = grad.shape
        factored = len(shape) >= 2
        if len(state) == 0:
            self._init_state(p, group)
        else:
            for k in _MOMENTS:
                moment = state.get(k)
                if moment is not None and (moment.dtype != grad.dtype or moment.device != grad.device):
                    state[k] = moment.to(grad)

        p32 = working(p, p.dtype in (torch.float16, torch.bfloat16))
        state["step"] += 1
        state["RMS"] = _rms(p32)
        lr = self._get_lr(group, state)
        beta2t = 1.0 - math.pow(state["step"], group["decay_rate"])
        # One scratch tensor per step where the original makes four (grad**2, + eps, the factor product,
        # -update): grad * grad is grad**2 bit for bit, and p - u is p + (-u). Reused across steps on CPU for
        # tensors of up to one slice (see scratch).
        buf = scratch(0, grad)
        sq = (torch.mul(grad, grad) if buf is None else torch.mul(grad, grad, out=buf)).add_(group["eps"][0])
        # The update reuses that tensor only where its layout is the one a fresh result would have: the RMS
        # below reduces in memory order, so another layout could change the last bit.
        if factored:
            row, col = state["exp_avg_sq_row"], state["exp_avg_sq_col"]
            # the arithmetic on the row and column vectors stays on the full pool where it would split apart
            with nullcontext() if splits_alike(row.numel()) and splits_alike(col.numel()) else all_threads:
                row.mul_(beta2t).add_(reduction(_mean_rows, sq), alpha=1.0 - beta2t)
                col.mul_(beta2t).add_(reduction(_mean_cols, sq), alpha=1.0 - beta2t)
                r_factor = (row / reduction(_mean_last, row)).rsqrt_().unsqueeze(-1)
                c_factor = col.unsqueeze(-2).rsqrt()
            update = torch.mul(r_factor, c_factor, out=sq) if sq.is_contiguous() else torch.mul(r_factor, c_factor)
        else:
            v = state["exp_avg_sq"]
            v.mul_(beta2t).add_(sq, alpha=1.0 - beta2t)
            update = torch.rsqrt(v, out=sq) if sq.stride() == v.stride() else torch.rsqrt(v)
        update.mul_(grad)
        clip = (_rms(update) / group["clip_threshold"]).clamp_(min=1.0)
        # elementwise from here on: slice by slice in cache on CPU, same ops per element (see windows)
        for _, window in windows([update, p32, state.get("exp_avg")]):
            self._finish(*window, clip, lr, group)
        write_back_([(p, p32)], fp16_nearest=True)

    @staticmethod
    def _finish(update: torch.Tensor, p32: torch.Tensor, exp_avg: torch.Tensor | None, clip: torch.Tensor,
                lr: float, group: dict) -> None:
        """The clipped, scaled update and the weight change (whole tensors or matching slices of them)."""
        update.div_(clip).mul_(lr)
        if exp_avg is not None:
            exp_avg.mul_(group["beta1"]).add_(update, alpha=1 - group["beta1"])
            update = exp_avg
        if group["weight_decay"] != 0:
            p32.add_(p32, alpha=-group["weight_decay"] * lr)
        p32.sub_(update)


Adafactor = EnhancedAdafactor
