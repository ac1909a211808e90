"""What the bundled optimizers share: argument checks (one message style, naming the argument and range), the
per-parameter loop with its `_init_state` hook, and the one low-precision write-back."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from functools import partial

import torch

from ._ahead import TimedChoice, helper_choice, splits_alike_at, stream, task
from ._rounding import copy_stochastic_, is_low_precision
from ._spread import in_order, side_by_side


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
                fp16_nearest: bool = False, bound: float | None = None) -> None:
    """Store fp32 working copies back into their low-precision homes with stochastic rounding; a pair whose
    working tensor is its home (nothing was upcast) is skipped. The pairs are written in the order given: each
    one draws random bits from the global generator, so the order is part of the result (the originals' kept).
    `fp16_nearest`: fp16 homes get plain round-to-nearest (Adafactor's original does this; bf16 stays stochastic).
    `bound`: see copy_stochastic_ (for every working tensor of the pairs).
    Inside a step run side by side, a stochastic rounding waits until the step and every earlier parameter's are
    done: nothing may read those homes or change the working tensors after this in the same step."""
    for home, work in pairs:
        if work is home:
            continue
        if fp16_nearest and home.dtype == torch.float16:
            home.copy_(work)
        # side by side, the draws and rounding are queued to run in the parameters' order (`in_order`)
        elif not (is_low_precision(home)
                  and in_order(partial(copy_stochastic_, home, work, fp16_exact=fp16_exact, bound=bound))):
            copy_stochastic_(home, work, fp16_exact=fp16_exact, bound=bound)


# Elements: a step with a larger tensor runs its parameters one after another, each op on the whole pool, which
# torch splits among its threads itself; side by side pays where ops are too small for that (LoRA matrices).
SIDE_BY_SIDE_MAX = 1 << 18


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

    # Whether `_step_param` may run beside other parameters' steps, each at a pool of one thread: it does every
    # reduction that splits by thread count through `at_full_count`, `mean` or `reduction`, its random numbers
    # only through `write_back_`, and that last; `_begin_group` then runs for every group before any parameter.
    steps_side_by_side = False

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
        # side by side is tried against the way the helper's choice kept, once that is settled
        helper = helper_choice(self)
        self._side_possible = side = self._runs_side_by_side(stepped)
        side = side and helper.settled
        choice = self.__dict__.setdefault("_side", TimedChoice())
        way = side and choice.use()
        start = time.perf_counter()
        with self._ahead_of_step(groups):
            if way:
                for p in stepped:  # the state dict's order is the parameters' (a saved state lists them so)
                    self.state[p]  # noqa: B018 - a defaultdict: made here, filled by the step
                steps = []
                for group, params in groups:
                    self._begin_group(group)
                    steps += [partial(self._step_param, p, group) for p in params]
                side_by_side(steps)
            else:
                with helper.step(rounded, stepped):
                    for group, params in groups:
                        self._begin_group(group)
                        self._step_group(group, params)
        if side:
            choice.timed(way, time.perf_counter() - start)
        return loss

    @property
    def choosing(self) -> bool:
        """Whether the first steps are still trying ways to run (a benchmark times the ways kept)."""
        side = self.__dict__.get("_side")
        return (helper_choice(self).deciding
                or bool(self.__dict__.get("_side_possible")) and (side is None or side.choice is None))

    def _runs_side_by_side(self, stepped: list[torch.Tensor]) -> bool:
        """Whether this step may run its parameters' steps side by side on the pool's threads (`side_by_side`):
        for optimizers that say their steps may (`steps_side_by_side`), on CPU, where every tensor is small enough
        that the pool gains little inside one op and computes each element alike at one thread and at all. Whether
        it does is tried (`TimedChoice`, the optimizer's `_side`): on 2 cores, bf16 LoRA, REMASTER's step takes
        ~0.6 s side by side and ~0.9 s in turn, Persona's ~0.4 s side by side and ~0.3 s with the helper, and
        with more cores the serial draws weigh more."""
        threads = torch.get_num_threads()
        return (self.steps_side_by_side and threads >= 2 and len(stepped) >= 2 and stream() is None and task() is None
                and os.environ.get("OPTINSPECT_SIDE_BY_SIDE") != "0"
                and all(p.device.type == "cpu" and p.numel() <= SIDE_BY_SIDE_MAX and p.is_contiguous()
                        and p.grad.is_contiguous() and splits_alike_at(p.numel(), threads) for p in stepped))
