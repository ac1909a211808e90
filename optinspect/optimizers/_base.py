"""What the bundled optimizers share: argument checks (one message style, naming the argument and range), the
per-parameter loop with its `_init_state` hook, and the one low-precision write-back."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext

import torch

from ._ahead import helper_choice
from ._rounding import copy_stochastic_


def check_range(name: str, value: float, lo: float | None = None, hi: float | None = None, *,
                lo_open: bool = False, hi_open: bool = False) -> None:
    """A number in a range; booleans count as the numbers they are (the originals compare them as 0 and 1)."""
    if not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if math.isnan(value):
        raise ValueError(f"{name} must be a number, got nan")
    bad_lo = lo is not None and (value <= lo if lo_open else value < lo)
    bad_hi = hi is not None and (value >= hi if hi_open else value > hi)
    if bad_lo or bad_hi:
        left = "-inf" if lo is None else f"{lo:g}"
        right = "inf" if hi is None else f"{hi:g}"
        raise ValueError(f"{name} must be in {'(' if lo_open or lo is None else '['}{left}, {right}"
                         f"{')' if hi_open or hi is None else ']'}, got {value!r}")


def check_betas(betas: Sequence[float], n: int = 2, name: str = "betas", *, exact: bool = False) -> None:
    """The first `n` betas in [0, 1) (a beta of 1 divides by zero or turns the weights NaN in the originals). More
    are allowed and never read where the original indexes betas[0] and betas[1]; `exact` where it unpacks them
    (`beta1, beta2 = betas` fails on three)."""
    if not isinstance(betas, (list, tuple)) or len(betas) < n or (exact and len(betas) != n):
        raise ValueError(f"{name} must be a sequence of {n} numbers in [0, 1), got {betas!r}")
    for i, b in enumerate(betas[:n]):
        check_range(f"{name}[{i}]", b, 0.0, 1.0, hi_open=True)


def closure_loss(closure) -> torch.Tensor | None:
    """Evaluate an optimizer closure with gradients enabled (step() itself runs under no_grad)."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def working(t: torch.Tensor, upcast: bool) -> torch.Tensor:
    """The tensor the arithmetic runs on: an fp32 copy of a bf16/fp16 tensor when upcasting, else the tensor
    itself (updated in place)."""
    return t.float() if upcast else t


def write_back_(pairs: Iterable[tuple[torch.Tensor, torch.Tensor]], *, fp16_exact: bool = False,
                fp16_nearest: bool = False) -> None:
    """Store fp32 working copies back into their low-precision homes with stochastic rounding; a pair whose
    working tensor is its home (nothing was upcast) is skipped. The pairs are written in the order given: each
    one draws random bits from the global generator, so the order is part of the result (the originals' kept).
    `fp16_nearest`: fp16 homes get plain round-to-nearest (Adafactor's original does this; bf16 stays stochastic)."""
    for home, work in pairs:
        if work is home:
            continue
        if fp16_nearest and home.dtype == torch.float16:
            home.copy_(work)
        else:
            copy_stochastic_(home, work, fp16_exact=fp16_exact)


class PerParameterOptimizer(torch.optim.Optimizer):
    """The loop the trainer's optimizers share: groups in order, parameters with a gradient in order.

    Subclasses implement `_init_state(p, group)` (the state of a parameter's first step) and
    `_step_param(p, group)`, which calls it where the original creates the state (SCORN and Persona build
    theirs from the gradient after orthograd has changed it); `_begin_group(group)` runs before each group's
    parameters (SCORN and REMASTER count `group['step']` there).
    """

    def __setstate__(self, state: dict) -> None:
        # load_state_dict ends here: groups saved by the originals (or older versions) lack our extra keys
        # (fix options, ...). They take this instance's constructor values, so a resumed run keeps its options.
        super().__setstate__(state)
        for group in self.param_groups:
            for key, value in self.defaults.items():
                group.setdefault(key, value)

    def _begin_group(self, group: dict) -> None:
        pass

    def _ahead_of_step(self, groups: list[tuple[dict, list[torch.Tensor]]]) -> AbstractContextManager:
        """Work done before the step proper, for the whole step (orthograd's dot products)."""
        return nullcontext()

    def _init_state(self, p: torch.Tensor, group: dict) -> None:
        raise NotImplementedError

    def _step_param(self, p: torch.Tensor, group: dict) -> None:
        raise NotImplementedError

    def _step_group(self, group: dict, params: list[torch.Tensor]) -> None:
        """One group's parameters with a gradient, in order (a multi-tensor step overrides this)."""
        for p in params:
            self._step_param(p, group)

    def _rounded(self, p: torch.Tensor, group: dict) -> bool:
        """Whether a step may round into p (or its state) stochastically: yes unless the group turned it off;
        `bits_ahead` counts the low-precision ones among these."""
        return group.get("stochastic_fp", True)

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure_loss(closure)
        groups = [(group, [p for p in group["params"] if p.grad is not None]) for group in self.param_groups]
        stepped = [p for _, params in groups for p in params]
        if any(p.grad.is_sparse for p in stepped):
            raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
        rounded = [p for group, params in groups for p in params if self._rounded(p, group)]
        with self._ahead_of_step(groups), helper_choice(self).step(rounded, stepped):
            for group, params in groups:
                self._begin_group(group)
                self._step_group(group, params)
        return loss
