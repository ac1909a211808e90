"""Optimizer state size from parameter shapes alone: the layouts of spec/optimizers.md section 9.

Pure arithmetic (no torch), so `dry-run --shapes-from` can size a 9B-parameter model from its header.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def state_bytes(schema: str, table: dict, shape: Sequence[int], dtype: str = "float32") -> int:
    """Bytes of per-parameter optimizer state for one tensor (shared maps and group scalars excluded)."""
    n = math.prod(shape)
    pb = DTYPE_BYTES.get(dtype, 4)
    get = table.get
    if schema == "adafactor":
        total = 4  # RMS (0-d fp32)
        if get("beta1") is not None:
            total += 4 * n  # exp_avg in fp32 (the gradient is upcast)
        if len(shape) >= 2:
            total += 4 * (math.prod(shape[:-1]) + math.prod(shape[:-2]) * shape[-1])
        else:
            total += 4 * n
        return total
    if schema in ("scorn", "remaster"):
        k = 2 + (1 if schema == "scorn" and (get("focus_ratio") or 0) > 0 else 0)
        return k * n * pb
    if schema == "persona":
        return (2 + (1 if (get("focus_boost") or 0) > 0 else 0)) * n * pb
    if schema == "adamw8bitkahan" or schema == "adamw8bit":
        kahan = n * pb if schema == "adamw8bitkahan" else 0
        if n >= (get("min_8bit_size") or 4096):
            return 2 * n + 2 * 4 * _ceil_div(n, 256) + kahan
        return 2 * 4 * n + kahan
    if schema == "prodigy":
        return 4 * n * pb
    if schema in ("adamw", "offload", "adamw_optimi", "stableadamw"):
        kahan = n * pb if schema in ("adamw_optimi", "stableadamw") and pb == 2 and get("kahan_sum") is not False else 0
        step = 4 if schema == "adamw" else 0  # torch keeps `step` as a 0-d fp32 tensor
        return 2 * n * pb + kahan + step
    if schema == "sgd":
        return n * pb if (get("momentum") or 0) > 0 else 0
    if schema == "automagic":
        return 4 + (4 * (math.prod(shape[:-1]) + math.prod(shape[:-2]) * shape[-1]) if len(shape) >= 2 else 4 * n) + n
    raise KeyError(schema)


def adamw_fp32_bytes(shape: Sequence[int]) -> int:
    """The yardstick: torch AdamW with fp32 moments (8 bytes per parameter)."""
    return 8 * math.prod(shape)
