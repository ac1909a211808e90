"""Stochastic rounding of fp32 values into bf16/fp16 storage: the one copy every optimizer here uses."""

from __future__ import annotations

import torch

from ._ahead import HIGH, settle, stream

__all__ = ["copy_stochastic_", "is_low_precision"]

_BF16_MAX = torch.finfo(torch.bfloat16).max
_MASK = torch.tensor(-65536, dtype=torch.int32)


def is_low_precision(t: torch.Tensor) -> bool:
    return t.dtype in (torch.bfloat16, torch.float16)


def _random_bits(source: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    if generator is None:  # the originals draw from the device's global generator, one draw per call
        ahead = stream()
        if ahead is not None and source.device.type == "cpu":
            return ahead.take(source.numel()).view(source.shape)
        return torch.randint_like(source, dtype=torch.int32, low=0, high=HIGH)
    return torch.randint(0, HIGH, source.shape, dtype=torch.int32, device=source.device, generator=generator)


def _bf16_grid_(target: torch.Tensor, source: torch.Tensor, generator: torch.Generator | None,
                bound: float | None = None) -> None:
    # Adding 16 random bits below bf16's mantissa and truncating rounds up with probability
    # (discarded bits) / 2^16: unbiased, and the carry moves into the exponent correctly.
    bits = _random_bits(source, generator)
    bits.add_(source.view(dtype=torch.int32))
    bits.bitwise_and_(_MASK if bits.is_cpu else -65536)  # a 0-dim int32 tensor: no conversion per call
    result = bits.view(dtype=torch.float32)
    # A bound under half of bf16's largest (the other half is room for the bound's own rounding; NaN fails the
    # comparison) rules out NaNs and values that carry into infinity without a pass over the tensor.
    if not (bound is not None and bound < _BF16_MAX / 2) and _may_carry_badly(source):
        result = _keep_special(result, source)
    target.copy_(result)


def _may_carry_badly(source: torch.Tensor) -> bool:
    """Whether any element is NaN or beyond bf16's largest finite value: only those can carry badly.

    On CPU one min/max pass answers it (a NaN makes both comparisons false) and saves the five passes of
    the repair on the usual clean tensor; elsewhere the answer would cost a device sync, so repair always.
    """
    if source.device.type != "cpu":
        return True
    if source.numel() == 0:
        return False
    lo, hi = torch.aminmax(source)
    return not (-_BF16_MAX <= lo.item() and hi.item() <= _BF16_MAX)  # compared in Python: two dispatches fewer


def _keep_special(result: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """Where the carry went wrong: a finite value rounded up past bf16's largest becomes that largest value
    instead of inf, and a NaN (whose low payload bits can carry into inf, zero or the sign) or an infinity stays
    as it was. Everywhere else `result` is unchanged, so the originals' numbers are kept. Four passes: off CPU
    this runs on every rounded tensor (isfinite alone would be four)."""
    finite = source.abs() < float("inf")  # NaN compares false
    return torch.where(finite, result.clamp_(-_BF16_MAX, _BF16_MAX), source)


def _fp16_exact_(target: torch.Tensor, source: torch.Tensor, generator: torch.Generator | None) -> None:
    # Round to one of the two neighbouring fp16 values with probability proportional to proximity.
    near = source.to(torch.float16)
    near32 = near.float()
    toward = torch.where(near32 > source, torch.full_like(near, -float("inf")), torch.full_like(near, float("inf")))
    other = torch.nextafter(near, toward).float()
    lo = torch.minimum(near32, other)
    hi = torch.maximum(near32, other)
    gap = hi - lo
    p_hi = torch.where(gap > 0, (source - lo) / gap, torch.zeros_like(source))
    if generator is None:
        settle()
        u = torch.rand_like(source)
    else:
        u = torch.rand(source.shape, device=source.device, generator=generator)
    out = torch.where(u < p_hi, hi, lo)
    out = torch.where(torch.isfinite(source) & torch.isfinite(near32), out, near32)
    target.copy_(out)


def copy_stochastic_(target: torch.Tensor, source: torch.Tensor, *, generator: torch.Generator | None = None,
                     fp16_exact: bool = False, bound: float | None = None) -> None:
    """Write fp32 `source` into `target`, stochastically rounded when `target` is bf16 or fp16.

    fp16 targets keep the originals' behaviour by default (rounded on the bf16 grid, then copied: only 7
    mantissa bits survive); `fp16_exact=True` rounds to real fp16 neighbours. fp32 targets get a plain copy.
    `bound`: a number no |element| of source exceeds, where the caller knows one from what it computed anyway
    (the rounding then skips its own check for NaNs and values that would carry badly).
    """
    if target.dtype == torch.float32 or not is_low_precision(target):
        target.copy_(source)
        return
    src = source if source.dtype == torch.float32 else source.float()
    src = src.contiguous()
    if target.dtype == torch.float16 and fp16_exact:
        _fp16_exact_(target, src, generator)
    else:
        _bf16_grid_(target, src, generator, bound)
