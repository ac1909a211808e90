"""Streaming per-tensor statistics: one pass over fixed-size chunks, no full-size temporaries.

8-bit block-wise states are dequantized chunk by chunk (block-aligned) with optimizers/_quant.py's maps;
the log-magnitude histogram counts fp32 exponents (256 fixed bins: bin e holds |x| in [2^(e-127), 2^(e-126)),
bin 0 zeros and subnormals, bin 255 inf/nan), read straight from the bits.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

CHUNK = 1 << 20  # elements per chunk (a multiple of the 256-element quantization block)
HIST_BINS = 256


@dataclass
class QuantError:
    """Error bound of an 8-bit block-wise tensor, from the codebook spacing at each stored code."""

    kind: str  # "8-bit blockwise"
    block: int
    rms_bound: float  # RMS over elements of the per-element bound (absolute)
    max_bound: float
    rel_rms_bound: float  # rms_bound / RMS of the dequantized values
    floor_code_frac: float  # share of elements at the map's smallest-magnitude code (tiny values collapsed)


@dataclass
class TensorStats:
    key: str
    shape: list[int]
    dtype: str
    bytes: int
    numel: int
    mean: float = 0.0
    std: float = 0.0
    min: float = 0.0
    max: float = 0.0
    absmax: float = 0.0
    rms: float = 0.0
    l2: float = 0.0
    zero_frac: float = 0.0
    nan: int = 0
    inf: int = 0
    hist: list[int] = field(default_factory=list)
    dequantized: bool = False
    quant: QuantError | None = None

    @property
    def finite(self) -> bool:
        return self.nan == 0 and self.inf == 0


class _Acc:
    def __init__(self) -> None:
        self.n = 0
        self.s = 0.0
        self.ss = 0.0
        self.mn = math.inf
        self.mx = -math.inf
        self.zeros = 0
        self.nan = 0
        self.inf = 0
        self.hist = torch.zeros(HIST_BINS, dtype=torch.int64)

    def add(self, x: torch.Tensor) -> None:
        x = x.float().reshape(-1)
        if x.numel() == 0:
            return
        bits = x.view(torch.int32)
        expo = torch.bitwise_right_shift(bits, 23).bitwise_and_(0xFF)
        self.hist += torch.bincount(expo, minlength=HIST_BINS)
        bad = int(self.hist_bad(expo))
        if bad:
            nan_mask = torch.isnan(x)
            n_nan = int(nan_mask.sum())
            self.nan += n_nan
            self.inf += bad - n_nan
            x = x[torch.isfinite(x)]
            if x.numel() == 0:
                return
        self.n += x.numel()
        self.s += float(x.sum(dtype=torch.float64))
        self.ss += float(torch.dot(x, x))
        lo, hi = torch.aminmax(x)
        self.mn = min(self.mn, float(lo))
        self.mx = max(self.mx, float(hi))
        self.zeros += int((x == 0).sum())

    @staticmethod
    def hist_bad(expo: torch.Tensor) -> torch.Tensor:
        return (expo == 255).sum()


def _finish(acc: _Acc, st: TensorStats) -> TensorStats:
    n = max(acc.n, 1)
    st.mean = acc.s / n
    var = max(acc.ss / n - st.mean**2, 0.0)
    st.std = math.sqrt(var)
    st.min = acc.mn if acc.n else 0.0
    st.max = acc.mx if acc.n else 0.0
    st.absmax = max(abs(st.min), abs(st.max))
    st.l2 = math.sqrt(acc.ss)
    st.rms = math.sqrt(acc.ss / n)
    st.zero_frac = acc.zeros / n if acc.n else 0.0
    st.nan, st.inf = acc.nan, acc.inf
    st.hist = acc.hist.tolist()
    return st


def _dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).replace("torch.", "")


def tensor_stats(key: str, t: torch.Tensor, progress: Callable[[int], None] | None = None,
                 chunk: int = CHUNK) -> TensorStats:
    """Statistics of a plain tensor, read chunk by chunk."""
    st = TensorStats(key, list(t.shape), _dtype_name(t), t.numel() * t.element_size(), t.numel())
    acc = _Acc()
    flat = t.reshape(-1)
    for i in range(0, flat.numel(), chunk):
        part = flat[i:i + chunk]
        acc.add(part)
        if progress:
            progress(part.numel() * part.element_size())
    return _finish(acc, st)


def quantized_stats(key: str, codes: torch.Tensor, absmax: torch.Tensor, qmap: torch.Tensor,
                    progress: Callable[[int], None] | None = None, chunk: int = CHUNK) -> TensorStats:
    """Statistics of an 8-bit block-wise tensor, dequantized chunk by chunk, with its quantization error bound."""
    from optimizers._quant import code_error_bound, infer_block

    n = codes.numel()
    block = infer_block(n, absmax.numel())
    chunk = max(block, chunk - chunk % block)
    q = qmap.float()
    absmax = absmax.float().reshape(-1)
    floor_code = int(torch.argmin(q.abs().masked_fill(q == 0, math.inf)))
    st = TensorStats(key, list(codes.shape), "uint8", n + absmax.numel() * 4 + q.numel() * 4, n, dequantized=True)
    acc = _Acc()
    b_ss, b_max, floor_count = 0.0, 0.0, 0
    per_code = code_error_bound(torch.arange(256), q)  # bound / absmax for each code, computed once
    flat = codes.reshape(-1)
    for i in range(0, n, chunk):
        c = flat[i:i + chunk].long()
        m = c.numel()
        pad = (-m) % block
        blocks = absmax[i // block:(i + m + pad) // block, None]
        vals = q[c]
        bound = per_code[c]
        if pad:
            vals = torch.cat([vals, vals.new_zeros(pad)])
            bound = torch.cat([bound, bound.new_zeros(pad)])
        vals = (vals.view(-1, block) * blocks).view(-1)[:m]
        bound = (bound.view(-1, block) * blocks).view(-1)[:m]
        acc.add(vals)
        b_ss += float(torch.dot(bound, bound))
        b_max = max(b_max, float(bound.max()))
        floor_count += int((c == floor_code).sum())
        if progress:
            progress(m)
    st = _finish(acc, st)
    rms_b = math.sqrt(b_ss / max(n, 1))
    st.quant = QuantError("8-bit blockwise", block, rms_b, b_max, rms_b / st.rms if st.rms > 0 else 0.0,
                          floor_count / max(n, 1))
    return st


def ratio_stats(m: torch.Tensor, v: torch.Tensor, eps: float = 1e-30, chunk: int = CHUNK) -> tuple[float, float]:
    """Mean and max of |m| / sqrt(v) where v > 0: the effective per-element update scale of Adam-like rules."""
    fm, fv = m.reshape(-1), v.reshape(-1)
    s, count, mx = 0.0, 0, 0.0
    for i in range(0, fm.numel(), chunk):
        a, b = fm[i:i + chunk].float(), fv[i:i + chunk].float()
        ok = (b > 0) & torch.isfinite(a) & torch.isfinite(b)
        if not bool(ok.any()):
            continue
        r = a[ok].abs() / (b[ok].sqrt() + eps)
        s += float(r.sum(dtype=torch.float64))
        count += r.numel()
        mx = max(mx, float(r.max()))
    return (s / count if count else 0.0), mx


def factored_second_moment(row: torch.Tensor, col: torch.Tensor, chunk: int = CHUNK) -> TensorStats:
    """Adafactor's second moment reconstructed from its row/column statistics: v = row * col / mean(row)."""
    r = row.float()
    c = col.float()
    denom = r.mean(dim=-1, keepdim=True)
    shape = list(r.shape) + [c.shape[-1]]
    st = TensorStats("exp_avg_sq (reconstructed)", shape, "float32", 0, math.prod(shape))
    acc = _Acc()
    r2 = (r / denom).reshape(-1, r.shape[-1])  # slices x rows
    c2 = c.reshape(-1, c.shape[-1])  # slices x cols
    rows_per = max(1, chunk // max(c.shape[-1], 1))
    for sidx in range(r2.shape[0]):
        for j in range(0, r2.shape[1], rows_per):
            acc.add(r2[sidx, j:j + rows_per, None] * c2[sidx, None, :])
    return _finish(acc, st)
