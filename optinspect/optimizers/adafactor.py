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
from ._common import norm2, number, scratch, tensor_batches, windows

__all__ = ["EnhancedAdafactor", "Adafactor"]

_MOMENTS = ("exp_avg", "exp_avg_sq_row", "exp_avg_sq_col", "exp_avg_sq")


def _mean_rows(t: torch.Tensor) -> torch.Tensor:
    return t.mean(dim=-1)


def _mean_cols(t: torch.Tensor) -> torch.Tensor:
    return t.mean(dim=-2)


def _mean_last(t: torch.Tensor) -> torch.Tensor:
    return t.mean(dim=-1, keepdim=True)


def _rms(t: torch.Tensor) -> torch.Tensor:
    return reduction(norm2, t) / number(t.numel() ** 0.5, t)


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
        self._apply(p, *self._prepare(p, group), group)

    def _apply(self, p: torch.Tensor, p32: torch.Tensor, grad: torch.Tensor, state: dict, lr, beta2t: float,
               group: dict) -> None:
        """The prepared step of one parameter, written back."""
        # One scratch tensor per step where the original makes four (grad**2, + eps, the factor product,
        # -update): grad * grad is grad**2 bit for bit, and p - u is p + (-u). Reused across steps on CPU (see
        # scratch).
        buf = scratch(0, grad)
        sq = torch.mul(grad, grad) if buf is None else torch.mul(grad, grad, out=buf)
        sq.add_(number(group["eps"][0], grad))
        if grad.dim() < 2:
            v = state["exp_avg_sq"]
            v.mul_(beta2t).add_(sq, alpha=1.0 - beta2t)
            update = torch.rsqrt(v, out=sq) if sq.stride() == v.stride() else torch.rsqrt(v)
        else:
            update = self._factored(state, sq, beta2t)
        update.mul_(grad)
        clip = (_rms(update) / number(group["clip_threshold"], update)).clamp_(min=1.0)
        bound = self._bound(p32, state, clip, lr, group) if p is not p32 else None
        # elementwise from here on: slice by slice in cache on CPU, same ops per element (see windows)
        for _, window in windows([update, p32, state.get("exp_avg")]):
            self._finish(*window, clip, lr, group)
        write_back_([(p, p32)], fp16_nearest=True, bound=bound)

    @staticmethod
    def _bound(p32: torch.Tensor, state: dict, clip: torch.Tensor, lr, group: dict) -> float | None:
        """A number no |weight| exceeds after this step, from what the step computed anyway: the weights' norm
        before it (RMS * sqrt(n)), grown by the decay, plus the clipped update's norm, which clipping holds to
        clip_threshold * sqrt(n) * lr (clip >= RMS(update) / clip_threshold). Finite ones mean no NaN either, so
        the stochastic rounding needs no pass of its own over the weights (~13 us of a LoRA matrix's ~155). Weights
        anywhere near bf16's largest overflow the fp32 norm (from ~1.8e19): no bound, the check runs.
        On CPU only (reading the values back is a sync elsewhere); None with momentum, whose running average is
        not bounded by anything this step computed."""
        threshold = group["clip_threshold"]
        if not p32.is_cpu or group["beta1"] is not None or not threshold > 0:
            return None
        rms, clipped, rate = float(state["RMS"]), clip.item(), float(lr)
        if not (math.isfinite(rms) and math.isfinite(clipped) and math.isfinite(rate)):
            return None
        root = math.sqrt(p32.numel())
        return rms * root * (1 + abs(group["weight_decay"] * rate)) + threshold * root * abs(rate)

    def _prepare(self, p: torch.Tensor, group: dict) -> tuple:
        """The state (made, or its moments cast to the gradient's dtype and device), the counters, and the step's
        (fp32 weights, fp32 gradient, state, learning rate, second-moment decay)."""
        grad = p.grad
        if grad.dtype in (torch.float16, torch.bfloat16):
            grad = grad.float()
        if grad.is_sparse:
            raise RuntimeError("Adafactor does not support sparse gradients.")
        state = self.state[p]
        if len(state) == 0:
            self._init_state(p, group)
        else:
            for k in _MOMENTS:
                moment = state.get(k)
                # (both on CPU: no device objects made, ~0.4 us a moment per step)
                if moment is not None and (moment.dtype is not grad.dtype
                                           or not (moment.is_cpu and grad.is_cpu or moment.device == grad.device)):
                    state[k] = moment.to(grad)
        p32 = working(p, p.dtype in (torch.float16, torch.bfloat16))
        state["step"] += 1
        state["RMS"] = _rms(p32)
        return p32, grad, state, self._get_lr(group, state), 1.0 - math.pow(state["step"], group["decay_rate"])

    @staticmethod
    def _factored(state: dict, sq: torch.Tensor, beta2t: float) -> torch.Tensor:
        """The row and column statistics' update, and the update's denominator from them (in sq's memory where
        that is laid out as a fresh result would be: the RMS after it reduces in memory order)."""
        row, col = state["exp_avg_sq_row"], state["exp_avg_sq_col"]
        # the arithmetic on the row and column vectors stays on the full pool where it would split apart
        with nullcontext() if splits_alike(row.numel()) and splits_alike(col.numel()) else all_threads:
            row.mul_(number(beta2t, row)).add_(reduction(_mean_rows, sq), alpha=1.0 - beta2t)
            col.mul_(number(beta2t, col)).add_(reduction(_mean_cols, sq), alpha=1.0 - beta2t)
            r_factor = (row / reduction(_mean_last, row)).rsqrt_().unsqueeze(-1)
            c_factor = col.unsqueeze(-2).rsqrt()
        return torch.mul(r_factor, c_factor, out=sq) if sq.is_contiguous() else torch.mul(r_factor, c_factor)

    def _step_group(self, group: dict, params: list[torch.Tensor]) -> None:
        """Off CPU, consecutive parameters at the same step run the elementwise work as multi-tensor chains
        (`tensor_batches`); each tensor's reductions and factored statistics stay its own, and so does its
        learning rate (from its weights' RMS: a host sync per parameter, as in the original)."""
        for batch in tensor_batches(params, working=torch.float32):
            if len(batch) == 1:
                self._update(params[batch[0]], group)
                continue
            work = [self._prepare(params[i], group) for i in batch]
            if len({w[2]["step"] for w in work}) == 1:
                self._update_multi(work, group)
                write_back_([(params[i], w[0]) for i, w in zip(batch, work, strict=True)], fp16_nearest=True)
            else:
                for i, w in zip(batch, work, strict=True):
                    self._apply(params[i], *w, group)

    def _update_multi(self, work: list[tuple], group: dict) -> None:
        """`_update` over parameters at the same step, as multi-tensor chains: the same operations element by
        element."""
        p32s, grads, states, lrs, beta2ts = (list(x) for x in zip(*work, strict=True))
        beta2t = beta2ts[0]
        sqs = torch._foreach_mul(grads, grads)
        torch._foreach_add_(sqs, group["eps"][0])
        updates = list(sqs)
        plain = [i for i, g in enumerate(grads) if g.dim() < 2]
        if plain:
            vs = [states[i]["exp_avg_sq"] for i in plain]
            torch._foreach_mul_(vs, beta2t)
            torch._foreach_add_(vs, [sqs[i] for i in plain], alpha=1.0 - beta2t)
            for i, u in zip(plain, torch._foreach_rsqrt(vs), strict=True):
                updates[i] = u
        for i, g in enumerate(grads):
            if g.dim() >= 2:
                updates[i] = self._factored(states[i], sqs[i], beta2t)
        torch._foreach_mul_(updates, grads)
        # each RMS a 0-dim tensor on the device (a tensor of the roots made here would be a copy to it: a sync)
        clips = torch.stack([_rms(u) for u in updates]).div_(group["clip_threshold"]).clamp_(min=1.0)
        torch._foreach_div_(updates, clips.unbind())
        if all(isinstance(lr, float) for lr in lrs):
            torch._foreach_mul_(updates, lrs)
        else:  # a learning rate scaled by the weights' RMS is a 0-dim tensor
            for u, lr in zip(updates, lrs, strict=True):
                u.mul_(lr)
        if group["beta1"] is not None:
            exp_avgs = [st["exp_avg"] for st in states]
            torch._foreach_mul_(exp_avgs, group["beta1"])
            torch._foreach_add_(exp_avgs, updates, alpha=1 - group["beta1"])
            updates = exp_avgs
        if group["weight_decay"] != 0:
            for p32, lr in zip(p32s, lrs, strict=True):
                p32.add_(p32, alpha=-group["weight_decay"] * lr)
        torch._foreach_sub_(p32s, updates)

    @staticmethod
    def _finish(update: torch.Tensor, p32: torch.Tensor, exp_avg: torch.Tensor | None, clip: torch.Tensor,
                lr: float, group: dict) -> None:
        """The clipped, scaled update and the weight change (whole tensors or matching slices of them)."""
        update.div_(clip).mul_(number(lr, update) if isinstance(lr, float) else lr)
        if exp_avg is not None:
            exp_avg.mul_(group["beta1"]).add_(update, alpha=1 - group["beta1"])
            update = exp_avg
        if group["weight_decay"] != 0:
            p32.add_(p32, alpha=-group["weight_decay"] * lr)
        p32.sub_(update)


Adafactor = EnhancedAdafactor
