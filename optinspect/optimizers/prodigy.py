"""Prodigy as the trainer builds it (`type = "Prodigy"` -> pytorch_optimizer 4.1.0's class), re-implemented.

Same numbers and state layout as pytorch_optimizer.Prodigy (golden trajectories and the package itself are
the references in the tests), bf16 included: like the original it computes in the parameters' own dtype, so a
bf16 model gets bf16 moments and bf16 arithmetic, bit for bit. Differences:
* unknown keyword arguments raise TypeError instead of being silently swallowed (a typo must not pass);
* `upcast=True` (ours alone; the original has no such option and drops it unread) computes bf16/fp16
  parameters in fp32 and writes parameters and state back with stochastic rounding: slower, and the numbers
  differ from the original's, but small updates are not lost to bf16's 8-bit mantissa.
Kept on purpose: coupled weight decay (`weight_decouple=False`) has no effect, as in the original.
"""

from __future__ import annotations

import functools
import math

import torch

from . import _common
from ._ahead import all_threads, helper_choice, splits_alike_at
from ._base import check_range, closure_loss, working, write_back_
from ._common import scratch, tensor_batches, windows
from ._rounding import is_low_precision
from ._spread import dot_is_serial, spread

__all__ = ["Prodigy"]


class Prodigy(torch.optim.Optimizer):
    """Learning-rate-free Adam: estimates the distance to the solution, d, from gradient correlations."""

    def __init__(self, params, lr: float = 1.0, betas: tuple[float, float] = (0.9, 0.999), beta3: float | None = None,
                 d0: float = 1e-6, d_coef: float = 1.0, growth_rate: float = float("inf"),
                 weight_decay: float = 0.0, weight_decouple: bool = True, fixed_decay: bool = False,
                 bias_correction: bool = False, safeguard_warmup: bool = False, eps: float | None = 1e-8,
                 maximize: bool = False, foreach: bool | None = None, upcast: bool = False):
        check_range("lr", lr, 0.0)
        if not isinstance(betas, (list, tuple)) or len(betas) != 2:
            raise ValueError(f"betas must be a pair of numbers in [0, 1), got {betas!r}")
        for i, b in enumerate(betas):
            check_range(f"betas[{i}]", b, 0.0, 1.0, hi_open=True)
        if beta3 is not None:
            check_range("beta3", beta3, 0.0, 1.0)
        check_range("d0", d0, 0.0, lo_open=True)
        check_range("d_coef", d_coef, 0.0, lo_open=True)
        check_range("growth_rate", growth_rate, 1.0)
        check_range("weight_decay", weight_decay, 0.0)
        if eps is not None:
            check_range("eps", eps, 0.0)
        self.maximize = maximize
        self.upcast = bool(upcast)
        defaults = dict(lr=lr, betas=betas, beta3=beta3, d=d0, d0=d0, d_max=d0, d_coef=d_coef,
                        growth_rate=growth_rate, weight_decay=weight_decay, weight_decouple=weight_decouple,
                        fixed_decay=fixed_decay, bias_correction=bias_correction, safeguard_warmup=safeguard_warmup,
                        step=1, foreach=foreach, eps=eps)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure_loss(closure)
        stepped = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        if any(p.grad.is_sparse for p in stepped):
            raise RuntimeError("Prodigy does not support sparse gradients")
        # only the upcast path rounds stochastically; the default computes in the weights' own dtype
        with helper_choice(self).step(stepped if self.upcast else [], stepped):
            self._step()
        return loss

    def _step(self) -> None:
        first = self.param_groups[0]
        device = first["params"][0].device
        beta1, beta2 = first["betas"]
        beta3 = first["beta3"] if first["beta3"] is not None else math.sqrt(beta2)
        t = first["step"]
        bias_correction = ((1.0 - math.pow(beta1, t)) / math.sqrt(1.0 - math.pow(beta2, t))
                           if first["bias_correction"] else 1.0)
        d, d0 = first["d"], first["d0"]
        d_lr = d * first["lr"] / bias_correction
        if "d_numerator" not in first:
            first["d_numerator"] = torch.tensor([0.0], device=device)
        elif first["d_numerator"].device != device:
            first["d_numerator"] = first["d_numerator"].to(device)
        d_numerator = first["d_numerator"]
        d_numerator.mul_(beta3)
        d_de_nom = torch.tensor([0.0], device=device)

        work: list[tuple[torch.Tensor, torch.Tensor, dict]] = []
        tasks: list = []  # per parameter: its dot product, or the call that computes it (and its moments)
        sizes: list = []  # per parameter: the sum of |s| where it was taken with the moments, else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if len(self.state[p]) == 0:
                    self._init_state(p)
            group["step"] += 1
            s_alpha = (d / d0) * (d if group["safeguard_warmup"] else d_lr)
            alphas = (d * (1.0 - beta1), d * d * (1.0 - beta2), s_alpha)
            betas = (beta1, beta2, beta3)
            items = []  # (p, g, p32, {s, exp_avg, exp_avg_sq}) in parameter order, computed here at the full count
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if self.maximize:
                    grad.neg_()
                state = self.state[p]
                low = self.upcast and is_low_precision(p)
                g, p32 = working(grad, low), working(p, low)
                s, p0, m, v = (working(state[k], low) for k in ("s", "p0", "exp_avg", "exp_avg_sq"))
                tmp = {"s": s, "exp_avg": m, "exp_avg_sq": v}
                serial = dot_is_serial(g)
                sizes.append(None)
                if serial and splits_alike_at(g.numel(), torch.get_num_threads()):
                    tasks.append(functools.partial(_moments_and_dot, g, p0, p32, tmp, betas, alphas))
                elif not serial and g.is_cpu and not _common.MULTI_TENSOR_ON_CPU:
                    # All of one parameter at once, as the original does: its gradient and s are still in cache
                    # for the moments and |s| (fp32 LoRA, 200 MB per tensor list: 1.19x -> 1.09x the original).
                    with all_threads:  # the sums at the full count; the moments give the same bits at any count
                        tasks.append(_moved_dot(g, p0, p32))
                        for _, window in windows([g, m, v, s]):
                            self._moments(*window, betas, alphas)
                        sizes[-1] = _size(s)
                else:
                    items.append((p, g, p32, tmp))
                    if serial:
                        tasks.append(functools.partial(_moved_dot, g, p0, p32))
                    else:
                        with all_threads:
                            tasks.append(_moved_dot(g, p0, p32))
                work.append((p, p32, tmp))
            for batch in tensor_batches([it[1] for it in items]):
                if len(batch) > 1:
                    self._moments_multi(*([[items[i][1] for i in batch]] + [[items[i][3][k] for i in batch]
                                                                           for k in ("exp_avg", "exp_avg_sq", "s")]),
                                        betas, alphas)
                    continue
                _, g, _, tmp = items[batch[0]]
                for _, window in windows([g, tmp["exp_avg"], tmp["exp_avg_sq"], tmp["s"]]):
                    self._moments(*window, betas, alphas)

        # A bf16 or fp16 dot product runs on one thread whatever the pool: the pool's threads take one each (and
        # the moments beside it, elementwise). Nothing here reads what another parameter's call writes.
        pending = [i for i, task in enumerate(tasks) if callable(task)]
        for i, dot in zip(pending, spread([tasks[i] for i in pending]), strict=True):
            tasks[i] = dot
        with all_threads:  # the sums split by thread count; the rest is elementwise (the same at any count)
            for dot, size, (_, _, tmp) in zip(tasks, sizes, work, strict=True):  # in parameter order, as the original
                d_numerator.add_(dot, alpha=(d / d0) * d_lr)
                d_de_nom.add_(_size(tmp["s"]) if size is None else size)

        if d_de_nom == 0:
            for p, _, tmp in work:
                self._write_state(p, tmp)
            return
        last = self.param_groups[-1]  # the original reads these from the loop variable: the last group
        d_hat = (last["d_coef"] * d_numerator / d_de_nom).item()
        if d == last["d0"]:
            d = max(d, d_hat)
        d_max = max(last["d_max"], d_hat)
        d = min(d_max, d * last["growth_rate"])

        by_param = {id(p): (p32, tmp) for p, p32, tmp in work}
        for group in self.param_groups:
            group["d_numerator"] = d_numerator
            group["d_de_nom"] = d_de_nom
            group["d"] = d
            group["d_max"] = d_max
            group["d_hat"] = d_hat
            items = [(p, *by_param[id(p)]) for p in group["params"] if id(p) in by_param]
            wd = group["weight_decay"]
            decay = None
            if wd != 0.0:
                if group["weight_decouple"]:
                    decay = 1.0 - wd * (1.0 if group["fixed_decay"] else d_lr)
                elif wd > 0.0:
                    for p, _, _ in items:
                        p.grad.add_(p, alpha=wd)  # coupled decay lands after the moments: no effect (original)
            # (the last pass stays at the full count: side by side it measured no faster, being memory-bound)
            for batch in tensor_batches([it[1] for it in items]):
                if len(batch) > 1 and group["eps"] is not None:
                    self._apply_multi([items[i][1] for i in batch], [items[i][2]["exp_avg"] for i in batch],
                                      [items[i][2]["exp_avg_sq"] for i in batch], decay, d, d_lr, group["eps"])
                    continue
                for i in batch:
                    p32, tmp = items[i][1], items[i][2]
                    for _, window in windows([p32, tmp["exp_avg"], tmp["exp_avg_sq"]]):
                        self._apply(*window, scratch(0, window[0]), decay, d, d_lr, group["eps"])
            if self.upcast:  # otherwise the arithmetic ran on the weights and state themselves
                for p, p32, tmp in items:  # stochastic rounding draws in parameter order: weights, then state
                    write_back_([(p, p32)])
                    self._write_state(p, tmp)

    @staticmethod
    def _moments_multi(gs: list, ms: list, vs: list, ss: list, betas: tuple[float, float, float],
                       alphas: tuple[float, float, float]) -> None:
        """`_moments` over lists of tensors: the same operations element by element."""
        torch._foreach_mul_(ms, betas[0])
        torch._foreach_add_(ms, gs, alpha=alphas[0])
        torch._foreach_mul_(vs, betas[1])
        torch._foreach_addcmul_(vs, gs, gs, value=alphas[1])
        torch._foreach_mul_(ss, betas[2])
        torch._foreach_add_(ss, gs, alpha=alphas[2])

    @staticmethod
    def _apply_multi(ps: list, ms: list, vs: list, decay: float | None, d: float, d_lr: float, eps: float) -> None:
        """`_apply` (the eps form) over lists of tensors: the same operations element by element."""
        if decay is not None:
            torch._foreach_mul_(ps, decay)
        denom = torch._foreach_sqrt(vs)
        torch._foreach_add_(denom, d * eps)
        torch._foreach_addcdiv_(ps, ms, denom, value=-d_lr)

    @staticmethod
    def _moments(g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, s: torch.Tensor,
                 betas: tuple[float, float, float], alphas: tuple[float, float, float]) -> None:
        m.mul_(betas[0]).add_(g, alpha=alphas[0])
        v.mul_(betas[1]).addcmul_(g, g, value=alphas[1])
        s.mul_(betas[2]).add_(g, alpha=alphas[2])

    @staticmethod
    def _apply(p32: torch.Tensor, m: torch.Tensor, v: torch.Tensor, out: torch.Tensor | None, decay: float | None,
               d: float, d_lr: float, eps: float | None) -> None:
        """Decoupled decay and the Adam step (or its atan2 form when eps is None) on matching windows; `out` is a
        reused buffer for the denominator, or None for a fresh one."""
        if decay is not None:
            p32.mul_(decay)
        denom = torch.sqrt(v) if out is None else torch.sqrt(v, out=out)
        if eps is not None:
            denom.add_(d * eps)
            p32.addcdiv_(m, denom, value=-d_lr)
        else:
            p32.add_(m.atan2(denom), alpha=-d_lr)

    def _init_state(self, p: torch.Tensor) -> None:
        """`p0` keeps the starting weights: d's numerator is the gradient's dot product with how far p moved."""
        state = self.state[p]
        state["s"] = torch.zeros_like(p)
        state["p0"] = p.clone()
        state["exp_avg"] = torch.zeros_like(p)
        state["exp_avg_sq"] = torch.zeros_like(p)

    def _write_state(self, p: torch.Tensor, tmp: dict) -> None:
        state = self.state[p]
        write_back_((state[k], v) for k, v in tmp.items())


def _moments_and_dot(g: torch.Tensor, p0: torch.Tensor, p: torch.Tensor, tmp: dict,
                     betas: tuple[float, float, float], alphas: tuple[float, float, float]) -> torch.Tensor:
    """One parameter's share of the first pass, for `spread`."""
    for _, window in windows([g, tmp["exp_avg"], tmp["exp_avg_sq"], tmp["s"]]):
        Prodigy._moments(*window, betas, alphas)
    return _moved_dot(g, p0, p)


def _size(s: torch.Tensor) -> torch.Tensor:
    """The sum of |s|, d's denominator's share of one parameter."""
    buf = scratch(1, s)  # |s| is only summed: a reused buffer, the same bits
    return (s.abs() if buf is None else torch.abs(s, out=buf)).sum()


def _moved_dot(g: torch.Tensor, p0: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """The gradient's dot product with how far the weights moved from where they started."""
    buf = scratch(1, p0)  # p0 - p is only dotted: a reused buffer, the same bits
    return torch.dot(g.flatten(), (p0 - p if buf is None else torch.sub(p0, p, out=buf)).flatten())
