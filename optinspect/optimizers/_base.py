"""Argument checks shared by the bundled optimizers: one message style, naming the argument and range."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def check_range(name: str, value: float, lo: float | None = None, hi: float | None = None, *,
                lo_open: bool = False, hi_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
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


def check_betas(betas: Sequence[float], n: int = 2, name: str = "betas") -> None:
    if not isinstance(betas, (list, tuple)) or len(betas) != n:
        raise ValueError(f"{name} must be a sequence of {n} numbers in [0, 1), got {betas!r}")
    for i, b in enumerate(betas):
        check_range(f"{name}[{i}]", b, 0.0, 1.0, hi_open=True)


def check_int(name: str, value: int, lo: int = 0) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")


def closure_loss(closure) -> torch.Tensor | None:
    """Evaluate an optimizer closure with gradients enabled (step() itself runs under no_grad)."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


class PerParameterOptimizer(torch.optim.Optimizer):
    """The loop the trainer's optimizers share: groups in order, parameters with a gradient in order.

    Subclasses implement `_step_param(p, group)`; `_begin_group(group)` runs before each group's parameters
    (SCORN and REMASTER count `group['step']` there).
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

    def _step_param(self, p: torch.Tensor, group: dict) -> None:
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure_loss(closure)
        for group in self.param_groups:
            self._begin_group(group)
            for p in group["params"]:
                if p.grad is not None:
                    if p.grad.is_sparse:
                        raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
                    self._step_param(p, group)
        return loss
