"""PersonaOptimizer (geocine, MIT; trainer `optimizers/persona.py`), re-implemented.

Math is always fp32; `stochastic_fp` only chooses stochastic rounding vs round-to-nearest on write-back.
Faithful by default, including resets after the first one step early (`exact_reset_period=True` fixes it)
and the fp16 rounding on the bf16 grid (`fp16_rounding=True` fixes it).
"""

from __future__ import annotations

import torch

from ._base import PerParameterOptimizer, check_betas, check_range, working, write_back_
from ._common import (
    A2,
    agreement_mask,
    agreement_masks,
    orthograd_dots_ahead,
    orthograd_persona_,
    reset_period,
    scratch,
    tensor_batches,
    windows,
)
from ._compiled import CHUNK, CompiledChain
from ._rounding import is_low_precision

__all__ = ["PersonaOptimizer"]


def _persona_chain(p_ws: list, gs: list, emas: list, vs: list, egvs: list | None, k: torch.Tensor,
                   amplified: bool, decay: bool, constrain: bool) -> None:
    """`PersonaOptimizer._update` without the cautious mask, for `CompiledChain` (flattened fp32 tensors). The
    numbers come in one fp32 tensor `k` (`_chain_numbers`): as Python floats the compiler would either fix them at
    their first values (a graph per weight decay, which changes every step) or carry them in double precision
    through every element's arithmetic."""
    beta1, one_minus_beta1, beta2, one_minus_beta2, bias_correction, denom_eps = k[0], k[1], k[2], k[3], k[4], k[5]
    amp, lr, wd, focus, focus_eps, one_minus_lr = k[6], k[7], k[8], k[9], k[10], k[11]
    for i in range(len(p_ws)):
        p_w, g, ema, v = p_ws[i], gs[i], emas[i], vs[i]
        ema.mul_(beta1).add_(g * one_minus_beta1)
        v.mul_(beta2).add_(g * g * one_minus_beta2)
        denom = torch.sqrt(v).add_(denom_eps)
        update = torch.div(ema, bias_correction)
        if amplified:
            update.mul_(amp)
        update.add_(g).atan2_(denom).mul_(A2)
        if egvs is not None:
            cur_var = (v - ema.pow(2)).clamp_(min=0)
            egvs[i].mul_(beta2).add_(cur_var * one_minus_beta2)
            update.mul_(1 + focus * (cur_var / (egvs[i].sqrt() + focus_eps)).clamp_(0, 5))
        if decay:
            update.add_(p_w * wd)
        if constrain:
            p_w.mul_(one_minus_lr)
        p_w.sub_(update * lr)


_NUMBERS: dict = {}  # the last step's numbers tensor per device: one host-to-device copy per step, not per chunk


def _chain_numbers(device: torch.device, numbers: tuple[float, ...]) -> torch.Tensor:
    """The numbers as one fp32 tensor on `device`; to a GPU from pinned memory, without waiting (a plain copy from
    pageable memory would wait for the kernels already queued: a host sync per step)."""
    found = _NUMBERS.get(device)
    if found is None or found[0] != numbers:
        host = torch.tensor(numbers, dtype=torch.float32)
        if device.type == "cuda":
            host = host.pin_memory()
        found = _NUMBERS[device] = (numbers, host.to(device, non_blocking=device.type == "cuda"))
    return found[1]


_CHAIN = CompiledChain(_persona_chain)


class PersonaOptimizer(PerParameterOptimizer):
    """Adam-like atan2 update with amplified momentum and optional gradient-variance focus."""

    _ahead_of_step = orthograd_dots_ahead
    steps_side_by_side = True

    def __init__(self, params, lr: float = 1e-4, betas: tuple[float, float] = (0.95, 0.999),
                 weight_decay: float = 0.0, weight_decay_rate: float = 1.0, amp_factor: float = 1.0,
                 focus_boost: float = 0.0, focus_eps: float = 1e-7, reset_interval: int = 0,
                 reset_increment: int = 0, orthograd: bool = False, constrain: bool = False,
                 cautious_min: float = 1.0, stochastic_fp: bool = True, eps: float = 1e-8,
                 exact_reset_period: bool = False, fp16_rounding: bool = False, compiled: bool = False):
        # exactly the original's checks (it raises ValueError on these and accepts anything else), and amp_factor
        # as a boolean, which the original hands to torch as `alpha=` (RuntimeError at the first step)
        if isinstance(amp_factor, bool):
            raise ValueError(f"amp_factor must be a number, got {amp_factor!r}")
        check_range("lr", lr, 0.0)
        check_betas(betas, exact=True)  # it unpacks them at the first step: a third fails there
        check_range("weight_decay", weight_decay, 0.0)
        check_range("weight_decay_rate", weight_decay_rate, 0.0, 1.0)
        check_range("focus_boost", focus_boost, 0.0)
        check_range("cautious_min", cautious_min, 0.0, 1.0)
        defaults = dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay, weight_decay_rate=weight_decay_rate,
                        amp_factor=amp_factor, focus_boost=focus_boost, focus_eps=focus_eps,
                        reset_interval=reset_interval, reset_increment=reset_increment, orthograd=orthograd,
                        constrain=constrain, cautious_min=cautious_min, stochastic_fp=stochastic_fp, eps=eps,
                        exact_reset_period=exact_reset_period, fp16_rounding=fp16_rounding, compiled=compiled)
        super().__init__(params, defaults)

    def _init_state(self, p: torch.Tensor, group: dict) -> None:
        """The second moment starts at the first gradient squared (after orthograd), not at zero."""
        state = self.state[p]
        state["step"] = 0
        state["ema"] = torch.zeros_like(p)
        state["ema_squared"] = p.grad.pow(2)
        if group["reset_interval"] > 0:
            state["steps_since_reset"] = 0
            state["times_reset"] = 0
        if group["focus_boost"] > 0:
            state["ema_grad_var"] = torch.zeros_like(p)

    def _step_param(self, p: torch.Tensor, group: dict) -> None:
        self._step_group(group, [p])

    def _runs_side_by_side(self, stepped: list[torch.Tensor]) -> bool:
        return not any(g["compiled"] for g in self.param_groups) and super()._runs_side_by_side(stepped)

    def _step_group(self, group: dict, params: list[torch.Tensor]) -> None:
        """Off CPU, consecutive parameters whose steps share their scalars run the update as one multi-tensor
        chain (`_update_multi`: one kernel per operation per batch instead of per tensor); the rest, and every
        parameter on CPU, tensor by tensor. The same operations element by element either way, and the random
        draws of the write-back in parameter order. With `compiled`, the compiled chain (`_step_compiled`)."""
        if group["compiled"] and group["cautious_min"] >= 1 and _CHAIN.unavailable is None:
            self._step_compiled(group, params)
            return
        for batch in tensor_batches(params, working=torch.float32):
            work = [self._prepare(params[i], group) for i in batch]
            if len(work) > 1 and len({w[2] for w in work}) == 1:
                self._update_multi(*([w[1][j] for w in work] for j in range(5)), group, work[0][2])
            else:
                for _, tensors, scalars, low in work:
                    self._update_windows(tensors, group, scalars, low)
            for p, tensors, _, low in work:  # the draws in parameter order
                self._write_back(p, tensors, group, low)

    def _step_compiled(self, group: dict, params: list[torch.Tensor]) -> None:
        """Runs of up to CHUNK consecutive parameters sharing their scalars and device through the compiled chain
        (`_persona_chain`), the others eagerly; each run written back before the next is prepared, so the fp32
        working copies of bf16 weights exist for one run at a time, and the draws come in parameter order."""
        run: list[tuple] = []

        def flush() -> None:
            if run and not self._compiled_update([w[1] for w in run], group, run[0][2]):
                for _, tensors, scalars, low in run:
                    self._update_windows(tensors, group, scalars, low)
            for q, tensors, _, low in run:
                self._write_back(q, tensors, group, low)
            run.clear()

        for p in params:
            w = self._prepare(p, group)
            tensors = w[1]
            if run and (len(run) == CHUNK or run[0][2] != w[2] or run[0][1][0].device != tensors[0].device):
                flush()
            if not all(CompiledChain.takes(t) for t in tensors if t is not None):
                flush()
                self._update_windows(tensors, group, w[2], w[3])
                self._write_back(p, tensors, group, w[3])
                continue
            run.append(w)
        flush()

    @staticmethod
    def _compiled_update(tensors: list[list], group: dict, scalars: tuple[float, float, float]) -> bool:
        beta1, beta2 = group["betas"][:2]
        bias_correction, denom_eps, effective_wd = scalars
        lists = [[t[j] for t in tensors] for j in range(4)]
        egvs = [t[4] for t in tensors] if tensors[0][4] is not None else None
        lr = group["lr"]
        k = _chain_numbers(tensors[0][0].device, (beta1, 1 - beta1, beta2, 1 - beta2, bias_correction, denom_eps,
                                                  group["amp_factor"], lr, effective_wd, group["focus_boost"],
                                                  group["focus_eps"], 1 - lr))
        return _CHAIN(lists + [egvs], k, group["amp_factor"] != 1.0, effective_wd > 0 and not group["constrain"],
                      bool(group["constrain"]))

    def _prepare(self, p: torch.Tensor, group: dict) -> tuple:
        """Orthograd, the state, the counters and resets, and the fp32 working tensors of one parameter's step:
        (p, [p_w, g, ema, v, egv], (bias correction, denominator eps, weight decay), low)."""
        beta1, beta2 = group["betas"][:2]
        eps = group["eps"]
        if group["orthograd"] and p.ndim >= 2:
            # the original passes its constructor's eps, not the group's (they differ only after a group edit)
            orthograd_persona_(p, self.defaults["eps"])
        state = self.state[p]
        if len(state) == 0:
            self._init_state(p, group)
        if group["focus_boost"] > 0 and "ema_grad_var" not in state:  # focus turned on for a resumed state
            state["ema_grad_var"] = torch.zeros_like(p)
        # Persona always computes in fp32; `stochastic_fp` chooses only how the results go back (see below)
        low = is_low_precision(p)
        g, p_w = working(p.grad, low), working(p, low)
        ema, v = working(state["ema"], low), working(state["ema_squared"], low)
        egv = working(state["ema_grad_var"], low) if group["focus_boost"] > 0 else None

        state["step"] += 1
        k = state["step"]
        if group["reset_interval"] > 0:
            state["steps_since_reset"] += 1
            period = reset_period(group, state["times_reset"])
            if state["steps_since_reset"] >= period > 0:
                ema.zero_()
                v.copy_(g.pow(2))
                if self.defaults["reset_interval"] > 0:
                    state["times_reset"] += 1
                if egv is not None and self.defaults["focus_boost"] > 0:
                    egv.zero_()
                state["step"] = 1
                k = 1
                state["steps_since_reset"] = 1

        bias_correction = max(1 - beta1**k, eps)
        bias_correction_sqrt = max((1 - beta2**k) ** 0.5, eps)
        effective_wd = group["weight_decay"] * group["weight_decay_rate"] ** (k - 1)
        return p, [p_w, g, ema, v, egv], (bias_correction, eps * bias_correction_sqrt, effective_wd), low

    def _update_windows(self, tensors: list, group: dict, scalars: tuple[float, float, float], low: bool) -> None:
        # Elementwise from here on, except the cautious mask (a mean over the whole update): fp32 work runs
        # slice by slice in cache, same ops per element, same results (see windows).
        parts = [(0, tensors)] if low or group["cautious_min"] < 1 else windows(tensors)
        for _, window in parts:
            # reused buffers only where fresh results would be laid out the same (the cautious mean reduces
            # in memory order): every tensor contiguous
            same_layout = all(t.is_contiguous() for t in window if t is not None)
            buffers = (scratch(0, window[0]), scratch(1, window[0])) if same_layout else (None, None)
            self._update(*window, group, scalars, None if buffers[0] is None else buffers)

    def _write_back(self, p: torch.Tensor, tensors: list, group: dict, low: bool) -> None:
        if not low:
            return
        p_w, _, ema, v, egv = tensors
        state = self.state[p]
        if egv is not None:  # the original rounds this one to nearest, always
            state["ema_grad_var"].copy_(egv)
        pairs = [(p, p_w), (state["ema"], ema), (state["ema_squared"], v)]
        if group["stochastic_fp"]:
            write_back_(pairs, fp16_exact=group["fp16_rounding"])
        else:
            for home, work in pairs:
                home.copy_(work)

    @staticmethod
    def _update_multi(p_ws: list, gs: list, emas: list, vs: list, egvs: list, group: dict,
                      scalars: tuple[float, float, float]) -> None:
        """`_update` over lists of fp32 tensors sharing their scalars: the same operations element by element
        (atan2 has no multi-tensor form: per tensor; the cautious mask's mean is each tensor's own)."""
        beta1, beta2 = group["betas"][:2]
        bias_correction, denom_eps, effective_wd = scalars
        torch._foreach_mul_(emas, beta1)
        torch._foreach_add_(emas, gs, alpha=1 - beta1)
        torch._foreach_mul_(vs, beta2)
        torch._foreach_addcmul_(vs, gs, gs, value=1 - beta2)
        denom = torch._foreach_sqrt(vs)
        torch._foreach_add_(denom, denom_eps)
        update = torch._foreach_div(emas, bias_correction)  # g + amp * (ema / bc): the quotient rounded first
        if group["amp_factor"] != 1.0:
            torch._foreach_mul_(update, group["amp_factor"])
        torch._foreach_add_(update, gs)
        for u, d in zip(update, denom, strict=True):
            u.atan2_(d)
        torch._foreach_mul_(update, A2)
        if egvs[0] is not None:
            cur_var = torch._foreach_sub(vs, torch._foreach_pow(emas, 2))
            torch._foreach_clamp_min_(cur_var, 0)
            torch._foreach_mul_(egvs, beta2)
            torch._foreach_add_(egvs, cur_var, alpha=1 - beta2)
            boost = torch._foreach_sqrt(egvs)
            torch._foreach_add_(boost, group["focus_eps"])
            boost = torch._foreach_div(cur_var, boost)
            torch._foreach_clamp_min_(boost, 0)  # clamp(0, 5): the lower bound, then the upper
            torch._foreach_clamp_max_(boost, 5)
            torch._foreach_mul_(boost, group["focus_boost"])
            torch._foreach_add_(boost, 1)
            torch._foreach_mul_(update, boost)
        if effective_wd > 0 and not group["constrain"]:
            torch._foreach_add_(update, p_ws, alpha=effective_wd)
        if group["cautious_min"] < 1:
            torch._foreach_mul_(update, agreement_masks(update, gs, group["cautious_min"], group["eps"],
                                                        inclusive=True))
        if group["constrain"]:
            torch._foreach_mul_(p_ws, 1 - group["lr"])
        torch._foreach_add_(p_ws, update, alpha=-group["lr"])

    @staticmethod
    def _update(p_w: torch.Tensor, g: torch.Tensor, ema: torch.Tensor, v: torch.Tensor, egv: torch.Tensor | None,
                group: dict, scalars: tuple[float, float, float],
                buffers: tuple[torch.Tensor, torch.Tensor] | None) -> None:
        """Steps 7-13 of the update on fp32 tensors (whole parameters or matching slices of them)."""
        beta1, beta2 = group["betas"][:2]
        bias_correction, denom_eps, effective_wd = scalars
        denom_out, update_out = buffers if buffers is not None else (None, None)
        ema.mul_(beta1).add_(g, alpha=1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        denom = torch.sqrt(v, out=denom_out).add_(denom_eps)
        # g + amp * (ema / bc), in one buffer (same roundings, fewer temporaries)
        if group["amp_factor"] == 1.0:
            # g + (1 * ema) / bc: addcdiv rounds the quotient, then the sum, as div and add do (1 * x is exact).
            # bc is a 0-d CPU tensor, which ops on any device take as a scalar (no host-to-device copy).
            update = torch.addcdiv(g, ema, torch.tensor(bias_correction, dtype=ema.dtype), out=update_out)
        else:
            update = torch.div(ema, bias_correction, out=update_out).mul_(group["amp_factor"]).add_(g)
        update.atan2_(denom).mul_(A2)
        if egv is not None:
            cur_var = (v - ema.pow(2)).clamp_(min=0)
            egv.mul_(beta2).add_(cur_var, alpha=1 - beta2)
            boost = (cur_var / (egv.sqrt() + group["focus_eps"])).clamp_(0, 5)
            update.mul_(1 + group["focus_boost"] * boost)
        if effective_wd > 0 and not group["constrain"]:
            update.add_(p_w, alpha=effective_wd)
        if group["cautious_min"] < 1:
            update.mul_(agreement_mask(update, g, group["cautious_min"], group["eps"], inclusive=True))
        if group["constrain"]:
            p_w.mul_(1 - group["lr"])
        p_w.add_(update, alpha=-group["lr"])
