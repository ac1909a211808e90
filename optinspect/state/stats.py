"""Streaming per-tensor statistics: one pass over fixed-size chunks, no full-size temporaries.

8-bit block-wise states are dequantized chunk by chunk (block-aligned) with optimizers/_quant.py's maps;
the log-magnitude histogram counts fp32 exponents (256 fixed bins: bin e holds |x| in [2^(e-127), 2^(e-126)),
bin 0 zeros and subnormals, bin 255 inf/nan), read straight from the bits.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from optinspect.optimizers._quant import code_error_bound, dequantize_blockwise, infer_block
from optinspect.state.mapped import MappedTensor, gather, positions, release_tensor

CHUNK = 1 << 19  # elements per chunk (a multiple of the 256-element quantization block)
HIST_BINS = 256
# Pages of a mapped file are given back every this many elements (in order, from the caller's thread): each
# madvise interrupts the other core (TLB shootdown), so one call per 4 chunks instead of one per chunk.
RELEASE_EVERY = 4 * CHUNK


@dataclass(slots=True)
class QuantError:
    """Error bound of an 8-bit block-wise tensor, from the codebook spacing at each stored code."""

    kind: str  # "8-bit blockwise"
    block: int
    rms_bound: float  # RMS over elements of the per-element bound (absolute)
    max_bound: float
    rel_rms_bound: float  # rms_bound / RMS of the dequantized values
    floor_code_frac: float  # share of elements at the map's smallest-magnitude code (tiny values collapsed)


@dataclass(slots=True)
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
    zero_frac: float = 0.0  # exact zeros and subnormals (|x| < 2^-126), read off the histogram
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
        self.hist: torch.Tensor | None = None  # the first part's, then summed (no zeros tensor per tensor)

    def add(self, x: torch.Tensor) -> None:
        self.merge(_chunk(x))

    def merge(self, part: tuple) -> None:
        n, s, ss, mn, mx, zeros, nan, inf, hist = part
        self.n += n
        self.s += s
        self.ss += ss
        self.mn = min(self.mn, mn)
        self.mx = max(self.mx, mx)
        self.zeros += zeros
        self.nan += nan
        self.inf += inf
        hist = hist.cpu()  # counted where the data lives (CPU here; a no-op copy then)
        self.hist = hist.clone() if self.hist is None else self.hist.add_(hist)


def _chunk(x: torch.Tensor, hist: torch.Tensor | None = None) -> tuple:
    """Partial statistics of one chunk: (finite count, sum, sum of squares, min, max, zeros, nan, inf, hist).

    Four reductions over a cache-sized chunk (amin, amax, sum, dot); zeros are read off the exponent histogram
    (bin 0: zero or subnormal).
    `hist` may be passed in when it was counted together with another tensor's (see `_pair_hists`).
    """
    x = x.reshape(-1)
    if x.dtype != torch.float32:
        x = x.float()
    if x.numel() == 0:
        return 0, 0.0, 0.0, math.inf, -math.inf, 0, 0, 0, torch.zeros(HIST_BINS, dtype=torch.int64)
    if hist is None:
        expo = torch.bitwise_right_shift(x.view(torch.int32), 23, out=_scratch("e", x))
        expo = _scratch("e8", x, torch.uint8).copy_(expo.bitwise_and_(0xFF))
        hist = torch.bincount(expo, minlength=HIST_BINS)  # uint8 input: ~40% faster than int32
    bad = int(hist[255])
    nan = inf = 0
    if bad:
        nan = int(torch.isnan(x).sum())
        inf = bad - nan
        x = x[torch.isfinite(x)]
        if x.numel() == 0:
            return 0, 0.0, 0.0, math.inf, -math.inf, 0, nan, inf, hist
    lo, hi = float(x.amin()), float(x.amax())  # two plain reductions beat one aminmax here
    if 1e-18 < max(-lo, hi) < 1e18:  # x*x and the chunk's sums stay far inside fp32
        s, ss = float(x.sum()), float(torch.dot(x, x))
    else:  # exploding values, or tiny ones (x*x would underflow to an RMS of 0): accumulate in float64
        s, ss = float(x.sum(dtype=torch.float64)), float(torch.linalg.vector_norm(x, dtype=torch.float64)) ** 2
    return x.numel(), s, ss, lo, hi, int(hist[0]), nan, inf, hist


def _pair_hists(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both exponent histograms from one bincount over (exp_b << 8 | exp_a): a quarter less time than two."""
    ea = torch.bitwise_right_shift(a.view(torch.int32), 23, out=_scratch("e", a)).bitwise_and_(0xFF)
    eb = torch.bitwise_right_shift(b.view(torch.int32), 15, out=_scratch("e2", b)).bitwise_and_(0xFF00)
    joint = torch.bincount(ea.bitwise_or_(eb), minlength=HIST_BINS * HIST_BINS).view(HIST_BINS, HIST_BINS)
    return joint.sum(0), joint.sum(1)


_LOCAL = threading.local()


def _scratch(name: str, like: torch.Tensor, dtype: torch.dtype = torch.int32) -> torch.Tensor:
    """A per-thread buffer for like.numel() elements of dtype on like's device, reused chunk after chunk: a fresh
    multi-MB temporary per op costs its page faults every time (more than the op itself at these sizes).
    Buffers are bytes, so one name can serve different dtypes in turn (the ratio reuses the exponent buffer once
    the histogram is counted), which keeps each worker's chunk and scratch inside the shared cache."""
    bufs = _LOCAL.__dict__.setdefault("bufs", {})
    nbytes = like.numel() * dtype.itemsize
    key = (name, like.device)
    buf = bufs.get(key)
    if buf is None or buf.numel() < nbytes:
        buf = bufs[key] = torch.empty(max(nbytes, CHUNK * 4), dtype=torch.uint8, device=like.device)
    return buf[:nbytes].view(dtype)


_POOL = None
_POOL_LOCK = threading.Lock()


def _pool():
    """Two workers, each running its ops on one intra-op thread: two chunks in flight use both cores, where
    two workers each asking OpenMP for two threads oversubscribe them (~25% slower here).

    torch.set_num_threads(1) in a worker also changes what threads started later get, so the workers set it
    while the caller waits at a barrier, then the caller restores its own setting for everyone else."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            from concurrent.futures import ThreadPoolExecutor

            keep = torch.get_num_threads()
            ready = threading.Barrier(3)

            def one_thread_per_op() -> None:
                torch.get_num_threads()  # runs torch's once-per-thread init now, so it cannot undo the next line
                torch.set_num_threads(1)
                try:
                    ready.wait(timeout=30)
                except threading.BrokenBarrierError:  # the caller gave up waiting: it has restored its setting
                    pass

            pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="optinspect-stats",
                                      initializer=one_thread_per_op)
            for _ in range(2):
                pool.submit(int)
            try:
                ready.wait(timeout=30)
            except threading.BrokenBarrierError:  # a worker did not start in time: still correct, maybe slower
                pass
            torch.set_num_threads(keep)
            _POOL = pool
    return _POOL


def scan(chunks, acc: _Acc, progress: Callable[[int], None] | None = None, threads: bool = True) -> None:
    """Reduce (chunk, release) pairs into `acc`, two chunks in flight at a time (torch releases the GIL)."""
    def work(item):
        x, release = item
        part = _chunk(x)
        nbytes = x.numel() * x.element_size()
        if release:
            release()
        return part, nbytes

    if not threads:
        for item in chunks:
            part, nbytes = work(item)
            acc.merge(part)
            if progress:
                progress(nbytes)
        return
    pool = _pool()
    pending = []
    for item in chunks:
        pending.append(pool.submit(work, item))
        if len(pending) >= 3:
            part, nbytes = pending.pop(0).result()
            acc.merge(part)
            if progress:
                progress(nbytes)
    for f in pending:
        part, nbytes = f.result()
        acc.merge(part)
        if progress:
            progress(nbytes)


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
    st.hist = SparseHist.of(acc.hist)
    return st


class SparseHist(Sequence):
    """A 256-bin histogram kept as its non-empty bins when there are few (a one-element tensor has one): a
    million small tensors' histograms as lists would take gigabytes. Reads as the list of 256 counts."""

    __slots__ = ("bins", "counts")
    MAX = 16  # beyond this many non-empty bins the plain list is smaller

    def __init__(self, bins: tuple[int, ...], counts: tuple[int, ...]) -> None:
        self.bins, self.counts = bins, counts

    @classmethod
    def of(cls, hist: torch.Tensor | None) -> list[int] | SparseHist:
        if hist is None:
            return cls((), ())
        nz = torch.nonzero(hist).reshape(-1)
        if nz.numel() > cls.MAX:
            return hist.tolist()
        return cls(tuple(nz.tolist()), tuple(hist[nz].tolist()))

    def __len__(self) -> int:
        return HIST_BINS

    def __getitem__(self, i):
        full = self.tolist()
        return full[i]

    def __iter__(self):
        return iter(self.tolist())

    def tolist(self) -> list[int]:
        out = [0] * HIST_BINS
        for b, c in zip(self.bins, self.counts, strict=True):
            out[b] = c
        return out

    def __eq__(self, other: object) -> bool:
        return list(self) == list(other) if isinstance(other, (list, tuple, SparseHist)) else NotImplemented

    __hash__ = None


def _dtype_name(t) -> str:
    return str(t.dtype).replace("torch.", "")


def numel_of(obj) -> int:
    """Elements of a state tensor, in memory or mapped."""
    return obj.numel if isinstance(obj, MappedTensor) else obj.numel()



def _part(obj, i: int, n: int) -> torch.Tensor:
    return obj.view(i, n) if isinstance(obj, MappedTensor) else obj.reshape(-1)[i:i + n]


def _release(obj, i: int, n: int, mapped: bool) -> None:
    if isinstance(obj, MappedTensor):
        obj.release(i, n)
    elif mapped:
        release_tensor(obj.reshape(-1)[i:i + n])


def value_chunks(t, chunk: int = CHUNK, mapped: bool = False, quant: tuple | None = None):
    """fp32 1-D chunks of a state tensor (mapped or in memory) with a page-release callback each; 8-bit codes
    are dequantized when `quant` = (absmax, qmap). Two tensors of one shape chunk alike, so they can be compared
    chunk by chunk without either being read whole. CHUNK is a multiple of every quantization block."""
    n = numel_of(t)
    if quant is not None:
        scale, table = quant[0].float().reshape(-1), quant[1].float()
        block = infer_block(n, scale.numel())
        chunk = max(block, chunk - chunk % block)
    for i in range(0, n, chunk):
        k = min(chunk, n - i)
        part = _part(t, i, k)
        values = _dequant(table, part, scale, i, block) if quant is not None else part.float()
        yield values, (lambda i=i, k=k: _release(t, i, k, mapped))


def tensor_chunks(t: torch.Tensor, chunk: int = CHUNK, mapped: bool = False):
    """(chunk view, page release or None) over a tensor; `mapped` = the tensor lives in a file mapping."""
    flat = t.reshape(-1)
    for i in range(0, flat.numel(), chunk):
        part = flat[i:i + chunk]
        yield part, ((lambda part=part: release_tensor(part)) if mapped else None)


def tensor_stats(key: str, t, progress: Callable[[int], None] | None = None, chunk: int = CHUNK,
                 mapped: bool = False) -> TensorStats:
    """Statistics of a tensor (or a lazily mapped file tensor with `.chunks()`), read chunk by chunk."""
    if isinstance(t, MappedTensor):
        st = TensorStats(key, list(t.shape), t.dtype_name, t.nbytes, t.numel)
        chunks = t.chunks(chunk)
    else:
        st = TensorStats(key, list(t.shape), _dtype_name(t), t.numel() * t.element_size(), t.numel())
        chunks = tensor_chunks(t, chunk, mapped)
    acc = _Acc()
    scan(chunks, acc, progress, threads=st.numel > chunk)
    return _finish(acc, st)


def quantized_stats(key: str, codes, absmax: torch.Tensor, qmap: torch.Tensor,
                    progress: Callable[[int], None] | None = None, chunk: int = CHUNK, mapped: bool = False
                    ) -> TensorStats:
    """Statistics of an 8-bit block-wise tensor, dequantized chunk by chunk, with its quantization error bound."""
    n = numel_of(codes)
    block = infer_block(n, absmax.numel())
    chunk = max(block, chunk - chunk % block)
    q, scale = qmap.float(), absmax.float().reshape(-1)

    def values():
        for i in range(0, n, chunk):
            k = min(chunk, n - i)
            yield _dequant(q, _part(codes, i, k), scale, i, block), \
                (lambda i=i, k=k: _release(codes, i, k, mapped))

    st = TensorStats(key, list(codes.shape), "uint8", n, n, dequantized=True)
    acc = _Acc()
    scan(values(), acc, progress, threads=n > chunk)
    return attach_quant_bound(_finish(acc, st), codes, scale, q, mapped=mapped)


def _ratio_chunk(a: torch.Tensor, b: torch.Tensor, clean: bool = False) -> tuple[float, float]:
    """Sum and max of |a| / sqrt(b) over elements with b > 0: elements with b = 0 (inf) or b < 0 / NaN (nan)
    become 0. No boolean masks: they cost more than the arithmetic here.

    `clean`: a is finite and b > 0 and finite everywhere (known from their statistics): no element needs zeroing
    unless a*rsqrt(b) overflows, which the sum shows."""
    if not b.numel():
        return 0.0, 0.0
    r = torch.rsqrt(b, out=_scratch("e", b, torch.float32))
    r.mul_(a).abs_()  # rsqrt(b) >= 0 or NaN: |a * r| == |a| * r
    if clean:
        total = float(r.sum())
        if math.isfinite(total):
            return total, float(r.amax())
    r.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
    return float(r.sum()), float(r.amax())  # amax: half the time of max() here


def moment_pair_stats(m_key: str, m, v_key: str, v, progress: Callable[[int], None] | None = None,
                      chunk: int = CHUNK, mapped: bool = False, quant: dict | None = None
                      ) -> tuple[TensorStats, TensorStats, float, float]:
    """First and second moment in one joint pass: both tensors' statistics and the update scale, each chunk
    read once. `quant` = {"q1", "a1", "q2", "a2"} dequantizes bitsandbytes 8-bit codes block-aligned."""
    n = numel_of(m)
    sm = TensorStats(m_key, list(m.shape), getattr(m, "dtype_name", None) or _dtype_name(m),
                     state_nbytes(m), n, dequantized=quant is not None)
    sv = TensorStats(v_key, list(v.shape), getattr(v, "dtype_name", None) or _dtype_name(v),
                     state_nbytes(v), n, dequantized=quant is not None)
    if quant is not None:
        block = infer_block(n, quant["a1"].numel())
        chunk = max(block, chunk - chunk % block)

    def work(i: int) -> tuple:
        k = min(chunk, n - i)
        a, b = _part(m, i, k), _part(v, i, k)
        nbytes = a.numel() * a.element_size() + b.numel() * b.element_size()
        if quant is not None:
            a = _dequant(quant["q1"], a, quant["a1"], i, block)
            b = _dequant(quant["q2"], b, quant["a2"], i, block)
        a, b = a.float().reshape(-1), b.float().reshape(-1)
        ha, hb = _pair_hists(a, b)
        pa, pb = _chunk(a, ha), _chunk(b, hb)
        # pb: (finite count, sum, sum of squares, min, max, zeros, nan, inf, hist)
        clean = pa[6] == pa[7] == pb[6] == pb[7] == 0 and pb[3] > 0 and pb[5] == 0
        rs, rm = _ratio_chunk(a, b, clean)
        valid = pb[0] - pb[5]  # finite and not zero (second moments are >= 0)
        return pa, pb, (rs, valid, rm), nbytes, k

    am, av = _Acc(), _Acc()
    s, count, mx = 0.0, 0, 0.0
    pool = _pool() if n > chunk else None
    starts = list(range(0, n, chunk))
    results = (pool.map(work, starts) if pool else map(work, starts))
    done = released = 0  # results arrive in order: [released, done) is read and not yet given back
    for pm, pv, (rs, rc, rm), nbytes, k in results:
        am.merge(pm)
        av.merge(pv)
        s, count, mx = s + rs, count + rc, max(mx, rm)
        done += k
        if done - released >= RELEASE_EVERY or done == n:
            _release(m, released, done - released, mapped)
            _release(v, released, done - released, mapped)
            released = done
        if progress:
            progress(nbytes)
    return _finish(am, sm), _finish(av, sv), (s / count if count else 0.0), mx


BATCH_MAX = 4096  # tensors of at most this many elements are counted together with others (see batch_stats)
BATCH_ELEMENTS = 1 << 20  # elements per batch


def job_tensors(job: tuple) -> tuple:
    """The tensors of a batch job: ("one", key, t) -> (t,); ("pair", m_key, m, v_key, v) -> (m, v)."""
    return (job[2],) if job[0] == "one" else (job[2], job[4])


def _sparse_hists(hist: torch.Tensor) -> list:
    """Per row of a (tensors x 256) histogram matrix, its SparseHist (or the full list when it has many bins),
    from one nonzero over the whole matrix instead of one per tensor."""
    rows, bins = hist.nonzero(as_tuple=True)
    per_row = torch.bincount(rows, minlength=hist.shape[0]).tolist()
    bins_l, counts_l = bins.tolist(), hist[rows, bins].tolist()
    out, at = [], 0
    for i, k in enumerate(per_row):
        out.append(SparseHist(tuple(bins_l[at:at + k]), tuple(counts_l[at:at + k])) if k <= SparseHist.MAX
                   else hist[i].tolist())
        at += k
    return out


def _segment_stats(flat: torch.Tensor, lengths: torch.Tensor, tensors: list, keys: list[str]
                   ) -> tuple[list[TensorStats], list[int]]:
    """`tensor_stats` for many tensors laid end to end in `flat` (`lengths` each), in a fixed number of
    whole-batch operations instead of a dozen per tensor; the figures are formed as `_finish` forms them, in
    float64, so they equal its results. Also returns each tensor's count of finite non-zero elements."""
    count = len(tensors)
    seg = torch.repeat_interleave(torch.arange(count), lengths)
    expo = torch.bitwise_right_shift(flat.view(torch.int32), 23).bitwise_and_(0xFF)
    hist = torch.bincount(seg * HIST_BINS + expo, minlength=count * HIST_BINS).view(count, HIST_BINS)
    finite = torch.isfinite(flat)
    bad = hist[:, 255]
    nan = torch.bincount(seg, weights=torch.isnan(flat).to(torch.float64), minlength=count).long()
    x = torch.where(finite, flat, torch.zeros((), dtype=flat.dtype)).double()
    s = torch.zeros(count, dtype=torch.float64).index_add_(0, seg, x)
    ss = torch.zeros(count, dtype=torch.float64).index_add_(0, seg, x * x)
    lo = torch.full((count,), math.inf).scatter_reduce_(0, seg, torch.where(finite, flat, math.inf), "amin").double()
    hi = torch.full((count,), -math.inf).scatter_reduce_(0, seg, torch.where(finite, flat, -math.inf), "amax").double()
    n = lengths - bad
    some = n > 0
    nd = n.clamp(min=1).double()
    mean = s / nd
    lo, hi = torch.where(some, lo, 0.0), torch.where(some, hi, 0.0)
    cols = zip(keys, n.tolist(), mean.tolist(), (ss / nd - mean * mean).clamp(min=0.0).sqrt().tolist(), lo.tolist(),
               hi.tolist(), torch.maximum(lo.abs(), hi.abs()).tolist(), ss.sqrt().tolist(), (ss / nd).sqrt().tolist(),
               torch.where(some, hist[:, 0] / nd, 0.0).tolist(), nan.tolist(), (bad - nan).tolist(),
               _sparse_hists(hist), tensors, strict=True)
    stats = [TensorStats(key, list(t.shape), getattr(t, "dtype_name", None) or _dtype_name(t), state_nbytes(t),
                         numel_of(t), mean=m, std=sd, min=a, max=b, absmax=am, rms=rms, l2=l2, zero_frac=zf, nan=nn,
                         inf=inf, hist=h)
             for key, _, m, sd, a, b, am, l2, rms, zf, nn, inf, h, t in cols]
    return stats, (n - hist[:, 0]).tolist()


def batch_stats(jobs: list[tuple]) -> list:
    """Statistics of many small tensors at once. Each job is ("one", key, t) -> TensorStats, or
    ("pair", m_key, m, v_key, v) -> (first, second, update-scale mean, update-scale max), as `tensor_stats` and
    `moment_pair_stats` give them (sums in float64, so the last digits may differ from theirs)."""
    tensors = [t for job in jobs for t in job_tensors(job)]
    keys = [k for job in jobs for k in ((job[1],) if job[0] == "one" else (job[1], job[3]))]
    flat = gather(tensors)
    lengths = torch.tensor([numel_of(t) for t in tensors])
    stats, nonzero = _segment_stats(flat, lengths, tensors, keys)
    offsets = (lengths.cumsum(0) - lengths).tolist()
    pairs, at = [], 0  # (index of m among the tensors) for each pair job
    for job in jobs:
        if job[0] == "pair":
            pairs.append(at)
        at += len(job_tensors(job))
    ratios: list[tuple[float, float]] = []
    if pairs:  # |m| / sqrt(v) where v > 0, per pair
        idx = torch.tensor(pairs)
        lens = lengths[idx]
        a = flat[positions(torch.tensor([offsets[i] for i in pairs]), lens)]
        b = flat[positions(torch.tensor([offsets[i + 1] for i in pairs]), lens)]
        pseg = torch.repeat_interleave(torch.arange(len(pairs)), lens)
        r = torch.rsqrt(b).mul_(a).abs_().nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0).double()
        rsum = torch.zeros(len(pairs), dtype=torch.float64).index_add_(0, pseg, r)
        rmax = torch.zeros(len(pairs), dtype=torch.float64).scatter_reduce_(0, pseg, r, "amax")
        ratios = list(zip(rsum.tolist(), rmax.tolist(), strict=True))
    out: list = []
    at = pi = 0
    for job in jobs:
        if job[0] == "one":
            out.append(stats[at])
            at += 1
        else:
            sm, sv = stats[at], stats[at + 1]
            valid = nonzero[at + 1]  # second moments are >= 0: where v > 0
            rs, rm = ratios[pi]
            out.append((sm, sv, rs / valid if valid else 0.0, rm))
            at += 2
            pi += 1
    return out


def _dequant(table: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor, start: int, block: int
             ) -> torch.Tensor:
    """table[code] * scale[block of the element] for the codes of elements start.. (start is block-aligned)."""
    first = start // block
    return dequantize_blockwise(codes, scale[first:first + -(-codes.numel() // block)], table, block)


def state_nbytes(t) -> int:
    """Bytes of a state tensor, in memory or mapped."""
    return t.nbytes if isinstance(t, MappedTensor) else t.numel() * t.element_size()


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


def attach_quant_bound(st: TensorStats, codes, absmax: torch.Tensor, qmap: torch.Tensor,
                       mapped: bool = False) -> TensorStats:
    """Give the statistics of a dequantized 8-bit tensor its error bound (relative to its RMS) and count the
    block scales and the map in its bytes."""
    st.quant = code_bound_only(codes, absmax, qmap, mapped=mapped)
    st.quant.rel_rms_bound = st.quant.rms_bound / st.rms if st.rms > 0 else 0.0
    st.bytes += (absmax.numel() + qmap.numel()) * 4
    return st


def code_bound_only(codes, absmax: torch.Tensor, qmap: torch.Tensor, chunk: int = CHUNK,
                    mapped: bool = False) -> QuantError:
    """The 8-bit error bound of a code tensor: per element, half the larger gap from its code to the
    neighbouring codes plus half a grid step, times the block's absmax (optimizers/_quant.py)."""
    n = numel_of(codes)
    block = infer_block(n, absmax.numel())
    chunk = max(block, chunk - chunk % block)
    q = qmap.float()
    per_code = code_error_bound(torch.arange(q.numel()), q)  # 256 codes, or torchao 4-bit's 16
    floor_code = int(torch.argmin(q.abs().masked_fill(q == 0, math.inf)))
    ss, mx, floor = 0.0, 0.0, 0
    for i in range(0, n, chunk):
        k = min(chunk, n - i)
        c = _part(codes, i, k)
        bound = _dequant(per_code, c, absmax.float().reshape(-1), i, block)
        ss += float(torch.dot(bound, bound))
        mx = max(mx, float(bound.amax()))
        floor += int((c == floor_code).sum())
        _release(codes, i, k, mapped)
    rms = math.sqrt(ss / max(n, 1))
    return QuantError("8-bit blockwise", block, rms, mx, 0.0, floor / max(n, 1))
