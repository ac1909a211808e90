"""bitsandbytes-compatible 8-bit block-wise dynamic quantization, in pure torch.

One module for the optimizer (AdamW8bitKahan) and the state inspector. Codes, maps and per-block absmax
are laid out as bitsandbytes stores them, so states move between the two unchanged.

The quantizer reproduces bitsandbytes' CPU kernel, which is not plain nearest rounding: the normalised
value y = x / absmax is first snapped to a uniform 65536-point grid on [-1, 1], and the code is the map
entry nearest to that grid point (a lookup table). Exact zeros therefore become a small positive code.
"""

from __future__ import annotations

import functools
import math
import weakref

import torch

BLOCK = 256
_GRID = 32767.5
_LUTS: dict[tuple, torch.Tensor] = {}
_MAPS: dict[bool, torch.Tensor] = {}
_LUT_OF: dict[int, tuple] = {}  # id(map tensor) -> (a weak reference to it, its version, its table)

__all__ = ["BLOCK", "dynamic_map", "lookup", "quantize_blockwise", "dequantize_blockwise", "code_error_bound"]


def lookup(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """table[index] for uint8 codes or grid indices, flattened: index_select with an int32 index is ~3x faster
    than advanced indexing with an int64 one (whose conversion alone allocates 8 bytes per element)."""
    return torch.index_select(table, 0, index.reshape(-1).to(torch.int32))


def dynamic_map(signed: bool = True, device: torch.device | str | None = None) -> torch.Tensor:
    """bitsandbytes' 8-bit dynamic map (7 exponent bits): per decade 10^(i-6), the midpoints of
    linspace(0.1, 1, n_i); plus 0 and 1. Signed maps are symmetric without -1 (256 values either way)."""
    if signed not in _MAPS:
        values: list[torch.Tensor] = []
        for i in range(7):
            n = 2**i + 1 if signed else 2 ** (i + 1) + 1
            b = torch.linspace(0.1, 1, n, dtype=torch.float32)
            mid = (b[:-1] + b[1:]) / 2
            scaled = 10 ** (i - 6) * mid
            values.append(scaled)
            if signed:
                values.append(-scaled)
        values.append(torch.tensor([0.0, 1.0]))
        _MAPS[signed] = torch.sort(torch.cat(values)).values
    m = _MAPS[signed]
    return m.to(device, copy=True) if device is not None else m.clone()  # never the cached tensor itself


def _lut(qmap: torch.Tensor) -> torch.Tensor:
    """grid index -> code: the map entry nearest to k / 32767.5 - 1 (computed once per distinct map). A map
    tensor seen before, unchanged since (its version counter), skips reading its 256 values (twice per
    parameter per step: ~6 us each, ~13 ms of a 1000-tensor LoRA step)."""
    seen = _LUT_OF.get(id(qmap))
    if seen is not None and seen[0]() is qmap and seen[1] == qmap._version:
        return seen[2]
    key = (str(qmap.device), tuple(qmap.tolist()))
    lut = _LUTS.get(key)
    if lut is None:
        q = qmap.float()
        order = torch.argsort(q)
        qs = q[order]
        grid = torch.arange(65536, dtype=torch.float32, device=q.device) / _GRID - 1
        hi = torch.searchsorted(qs, grid).clamp(max=qs.numel() - 1)
        lo = (hi - 1).clamp(min=0)
        pick_lo = (grid - qs[lo]).abs() <= (qs[hi] - grid).abs()
        lut = order[torch.where(pick_lo, lo, hi)].to(torch.uint8)
        _LUTS[key] = lut
    _LUT_OF[id(qmap)] = (weakref.ref(qmap, functools.partial(_forget, id(qmap))), qmap._version, lut)
    return lut


def _forget(key: int, ref: weakref.ref) -> None:
    seen = _LUT_OF.get(key)
    if seen is not None and seen[0] is ref:  # not a newer tensor's entry under a reused id
        del _LUT_OF[key]


def _blocks(x: torch.Tensor, block: int) -> tuple[torch.Tensor, int]:
    flat = x.reshape(-1)
    n = flat.numel()
    pad = (-n) % block
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return flat.view(-1, block), n


def quantize_blockwise(x: torch.Tensor, qmap: torch.Tensor, block: int = BLOCK,
                       out: torch.Tensor | None = None, absmax: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes (uint8, shape of x) and per-block absmax (fp32), as bitsandbytes' CPU quantizer writes them."""
    blocks, n = _blocks(x.float(), block)
    amax = blocks.abs().nan_to_num_(nan=0.0).amax(dim=1)
    y = blocks * (1.0 / amax).unsqueeze(1)  # by the reciprocal, as bitsandbytes: x / absmax differs in the last bit
    # the grid index floor((y + 1) * 32767.5 + 0.5), in place on y (the same operations, no fresh temporaries)
    k = y.add_(1).mul_(_GRID).add_(0.5).floor_().nan_to_num_(nan=0.0).clamp_(0, 65535)
    codes = lookup(_lut(qmap.to(x.device)), k)[:n].view(x.shape)
    if out is not None:
        out.copy_(codes)
        codes = out
    if absmax is not None:
        absmax.copy_(amax)
        amax = absmax
    return codes, amax


def dequantize_blockwise(codes: torch.Tensor, absmax: torch.Tensor, qmap: torch.Tensor,
                         block: int | None = None) -> torch.Tensor:
    """fp32 values qmap[code] * absmax[block]; the block size is inferred from len(absmax) when not given."""
    n = codes.numel()
    if block is None:
        block = infer_block(n, absmax.numel())
    out = lookup(qmap.float(), codes)  # a fresh flat fp32 tensor: scaled in place, block by block
    scale = absmax.float().reshape(-1)
    full = n // block
    out[:full * block].view(full, block).mul_(scale[:full].unsqueeze(1))
    if n % block:  # a last, partial block
        out[full * block:].mul_(scale[full])
    return out.view(codes.shape)


def infer_block(n: int, n_absmax: int) -> int:
    """Block size implied by the absmax length (256 for bitsandbytes >= 0.44, 2048 for older releases)."""
    for b in (256, 2048, 4096, 1024, 512, 128, 64):
        if math.ceil(n / b) == n_absmax:
            return b
    return max(1, math.ceil(n / max(n_absmax, 1)))


def code_error_bound(codes: torch.Tensor, qmap: torch.Tensor, grid_snap: bool = True) -> torch.Tensor:
    """Per-element bound on |dequantized - original| / absmax: half the larger gap to a neighbouring code,
    plus half a grid step for the CPU quantizer (spec: holds for every input)."""
    q = qmap.float()
    order = torch.argsort(q)
    qs = q[order]
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device)
    gaps_up = torch.cat([qs[1:] - qs[:-1], qs.new_zeros(1)])
    gaps_down = torch.cat([qs.new_zeros(1), qs[1:] - qs[:-1]])
    half = torch.maximum(gaps_up, gaps_down) / 2
    per_code = half[rank] + (1 / 65535 if grid_snap else 0.0)
    return lookup(per_code, codes).view(codes.shape)
