"""What SCORN, REMASTER and PersonaOptimizer share: orthograd variants, the masks, SCORN's and REMASTER's step
(`EmaStepOptimizer`) and their multi-tensor forms, and the CPU slicing, scratch buffers and tensor batches."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from ._ahead import at_full_count, mean, reduction
from ._base import PerParameterOptimizer, working, write_back_
from ._rounding import is_low_precision
from ._spread import dot_is_serial, spread

A2 = 1.27323954474  # ~4/pi, as the originals write it


def norm2(t: torch.Tensor) -> torch.Tensor:
    """The L2 norm, for `reduction` (one function object: its thread-invariance is tried once per shape). On CPU
    and CUDA `t.norm(2)` is this very call behind a Python wrapper (~1.5 us a call)."""
    if (t.is_cpu or t.is_cuda) and t.layout == torch.strided:
        return torch.linalg.vector_norm(t, 2)
    return t.norm(2)


# id(parameter) -> its (w.g, w.w), made ahead for the step that is running. Shared by threads: a step run side by
# side takes them on the pool's threads (each parameter's once; a parameter is stepped by one optimizer at a time).
_DOTS: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}


@contextmanager
def orthograd_dots_ahead(opt: torch.optim.Optimizer, groups: list[tuple[dict, list[torch.Tensor]]]) -> Iterator[None]:
    """Within the block, orthograd takes the dot products w.g and w.w of the parameters it will project from a
    table made here, beside each other (`spread`), where torch computes them in one serial chain (bf16/fp16 at
    LoRA sizes, two per tensor: ~100 us each); the others as before, in turn. (An optimizer's `_ahead_of_step`:
    it runs before the step's helper draws random bits or the pool lends a thread.)"""
    todo = [p for group, params in groups if group.get("orthograd") for p in params
            if p.ndim >= 2 and p.dtype == p.grad.dtype and p.is_contiguous() and p.grad.is_contiguous()
            and dot_is_serial(p)]
    keys = list(map(id, todo))
    _DOTS.update(zip(keys, spread([lambda p=p: _weight_dots(p) for p in todo]), strict=True))
    try:
        yield
    finally:
        for key in keys:
            _DOTS.pop(key, None)


def _weight_dots(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    w = p.view(-1)
    return torch.dot(w, p.grad.view(-1)), torch.dot(w, w)


def weight_dots(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(w.g, w.w) of a parameter about to be projected: from the table made ahead, else computed now at the
    step's full count (dot products split their work by thread count)."""
    found = _DOTS.pop(id(p), None)
    if found is not None:
        return found
    return at_full_count(lambda: _weight_dots(p))


def orthograd_(p: torch.Tensor, floor: float) -> None:
    """Project p.grad off the weight direction (soft atan2 coefficient), renormalise to the old norm.

    SCORN uses floor 1e-6 and REMASTER 1e-3: with REMASTER's floor a gradient whose orthogonal part is
    smaller than 1e-3 is shrunk instead of renormalised (the original's behaviour).
    """
    w = p.view(-1)
    g = p.grad
    v = g.view(-1)
    proj = torch.atan2(*weight_dots(p)).mul(A2)
    v_orth = v.float().sub(w, alpha=proj.item())
    # in place on the gradient's norm: for a bf16 gradient the ratio is rounded to bf16, as the originals' div_
    # does (a plain division would promote it to fp32 and give other weights)
    v_orth.mul_(reduction(norm2, v).div_(reduction(norm2, v_orth).clamp(min=floor)))
    g.copy_(v_orth.view_as(g))


def orthograd_persona_(p: torch.Tensor, eps: float) -> None:
    """PersonaOptimizer's variant: skips near-zero weights and rescales only when both norms exceed eps."""
    w = p.view(-1)
    g = p.grad
    v = g.view(-1)
    w_dot_v, w_norm_sq = weight_dots(p)  # w.v is not needed where the weights are near zero: computed anyway
    if w_norm_sq < eps:
        return
    proj = torch.atan2(w_dot_v, w_norm_sq).mul(A2)
    v_orth = v.float().sub(w, alpha=proj.item())
    g_norm = reduction(norm2, v)
    o_norm = reduction(norm2, v_orth)
    if g_norm > eps and o_norm > eps:
        v_orth.mul_(g_norm / o_norm)
    g.copy_(v_orth.view_as(g).to(g.dtype))


def agreement_mask(a: torch.Tensor, b: torch.Tensor, minimum: float, floor: float, *,
                   inclusive: bool = False) -> torch.Tensor:
    """max(1[a*b > 0], minimum) normalised by max(mean, floor): the adaptive and cautious masks."""
    prod = a * b
    mask = (prod >= 0 if inclusive else prod > 0).to(a.dtype)
    mask.clamp_(min=minimum)
    mask.div_(mean(mask).clamp(min=floor))
    return mask


@functools.lru_cache(maxsize=1024)
def _number(x: float, dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor(x, dtype=dtype)


def number(x: float, like: torch.Tensor) -> torch.Tensor | float:
    """x as the second operand of an op on `like` (`like * x`, `like.add_(x)`; not `x / like`, which torch
    computes as a reciprocal times x for a Python number): a cached 0-dim tensor of like's dtype where like is an
    fp32 or fp64 CPU tensor, else x itself. torch wraps a Python number in a tensor and converts it on every call
    (~1 us, a third of a small op); a 0-dim tensor of the same dtype gives the kernel the same value. Elsewhere it
    would not always: a 0-dim bf16 tensor with a 0-dim fp32 one promotes to fp32. Never modify what this returns."""
    if like.is_cpu and (like.dtype is torch.float32 or like.dtype is torch.float64):
        return _number(float(x), like.dtype)
    return x


def rms_clip_(g: torch.Tensor) -> torch.Tensor:
    """Divide by the gradient's RMS when it exceeds 1 (SCORN/REMASTER)."""
    return g.div_(mean(g.pow(2)).sqrt().clamp(min=1))


# Multi-tensor forms of the steps above, for the chains off CPU (`tensor_batches`): the elementwise work is one
# torch._foreach_* call per list, and each tensor's reductions stay its own (a mean or norm of each, as the
# per-tensor path takes it, so each rounds alike). Per-tensor scalars are 0-dim tensors on the device, never
# Python numbers: no host sync. sqrt, clamp and where round correctly, so stacking the scalars changes no bit.

def agreement_masks(a: list[torch.Tensor], b: list[torch.Tensor], minimum: float, floor: float, *,
                    inclusive: bool = False) -> list[torch.Tensor]:
    """`agreement_mask` of each pair (a[i], b[i])."""
    masks = [(prod >= 0 if inclusive else prod > 0).to(prod.dtype) for prod in torch._foreach_mul(a, b)]
    torch._foreach_clamp_min_(masks, minimum)
    torch._foreach_div_(masks, torch.stack([mean(m) for m in masks]).clamp_(min=floor).unbind())
    return masks


def rms_clip_multi_(gs: list[torch.Tensor]) -> None:
    """`rms_clip_` of each tensor."""
    squares = torch._foreach_pow(gs, 2)
    torch._foreach_div_(gs, torch.stack([mean(s) for s in squares]).sqrt_().clamp_(min=1).unbind())


def adopt_atan2(g: torch.Tensor, ema: torch.Tensor, v: torch.Tensor, amp: float, bias_correction: float,
                bias_correction_sqrt: float, slow_beta2: float) -> torch.Tensor:
    """SCORN's and REMASTER's shared core: c = g + amp * ema / bc, the second moment's update with c, and
    atan2(c, sqrt(v_old) / bc_sqrt) (returned)."""
    c = g.add(ema / bias_correction, alpha=amp)
    denom = v.sqrt().div_(bias_correction_sqrt)
    v.mul_(slow_beta2).addcmul_(c, c, value=1 - slow_beta2)
    return torch.atan2(c, denom)


def adopt_atan2_multi(gs: list[torch.Tensor], emas: list[torch.Tensor], vs: list[torch.Tensor], amp: float,
                      bias_correction: float, bias_correction_sqrt: float, slow_beta2: float) -> list[torch.Tensor]:
    """`adopt_atan2` over lists (the results in c's memory). atan2 has no multi-tensor form: per tensor."""
    cs = torch._foreach_add(gs, torch._foreach_div(emas, bias_correction), alpha=amp)
    denoms = torch._foreach_sqrt(vs)
    torch._foreach_div_(denoms, bias_correction_sqrt)
    torch._foreach_mul_(vs, slow_beta2)
    torch._foreach_addcmul_(vs, cs, cs, value=1 - slow_beta2)
    for c, d in zip(cs, denoms, strict=True):
        c.atan2_(d)
    return cs


class EmaStep:
    """One SCORN/REMASTER parameter's step in flight: its state, whether it is upcast, the working tensors (an
    fp32 copy of a bf16/fp16 one when upcast) and k, the step its bias corrections use."""

    __slots__ = ("p", "state", "upcast", "g", "p_w", "ema", "v", "pbar", "k")

    def __init__(self, p: torch.Tensor, state: dict, upcast: bool) -> None:
        self.p, self.state, self.upcast = p, state, upcast
        self.g = p.grad.float() if upcast else p.grad.clone()
        self.p_w = working(p, upcast)
        self.ema = working(state["ema"], upcast)
        self.v = working(state["ema_squared"], upcast)
        self.pbar: torch.Tensor | None = None
        self.k = 0


def begin_ema_step(opt, p: torch.Tensor, group: dict, orthograd_floor: float) -> EmaStep:
    """The start of a SCORN/REMASTER step: orthograd (it replaces p.grad), the state on first use, and the
    working tensors. With stochastic_fp, bf16/fp16 tensors are worked on in fp32 copies; otherwise the parameter
    and the state themselves are updated in place and only the gradient is copied (the originals clone every one
    of them)."""
    if group["orthograd"] and p.ndim >= 2:
        orthograd_(p, orthograd_floor)
    state = opt.state[p]
    if len(state) == 0:
        opt._init_state(p, group)
    return EmaStep(p, state, is_low_precision(p) and group["stochastic_fp"])


def end_ema_step(w: EmaStep, group: dict) -> None:
    """The write-back of an upcast step (ema, ema_squared, pbar, then the weights: the random draws in the
    originals' order) and the reset counter."""
    state = w.state
    pairs = [(state["ema"], w.ema), (state["ema_squared"], w.v)]
    if w.pbar is not None:
        pairs.append((state["pbar"], w.pbar))
    write_back_([*pairs, (w.p, w.p_w)], fp16_exact=group["fp16_rounding"])
    if group["reset_interval"] > 0:
        state["steps_since_reset"] += 1


class EmaStepOptimizer(PerParameterOptimizer):
    """The step SCORN and REMASTER share: orthograd's dot products made ahead, parameters prepared
    (`_prepare`: orthograd, state, counters), updated (`_update`) and written back in order, and consecutive
    ones at the same k run as one multi-tensor chain (`_update_multi`) where `tensor_batches` joins them."""

    _ahead_of_step = orthograd_dots_ahead
    steps_side_by_side = True

    def _begin_group(self, group: dict) -> None:
        group["step"] = group.get("step", 0) + 1  # counted, as in the originals; the math uses per-parameter steps

    def _prepare(self, p: torch.Tensor, group: dict) -> EmaStep:
        raise NotImplementedError

    @staticmethod
    def _update(w: EmaStep, group: dict) -> None:
        raise NotImplementedError

    @staticmethod
    def _update_multi(work: list[EmaStep], group: dict) -> None:
        raise NotImplementedError

    def _step_param(self, p: torch.Tensor, group: dict) -> None:
        w = self._prepare(p, group)
        self._update(w, group)
        end_ema_step(w, group)

    def _step_group(self, group: dict, params: list[torch.Tensor]) -> None:
        """Where the step is not run side by side. The preparation draws no random bits, so preparing a whole
        batch before its updates leaves the draws as tensor by tensor."""
        up = torch.float32 if group["stochastic_fp"] else None  # what bf16/fp16 tensors are worked on in
        for batch in tensor_batches(params, working=up):
            work = [self._prepare(params[i], group) for i in batch]
            if len(work) > 1 and len({w.k for w in work}) == 1:
                self._update_multi(work, group)
            else:
                for w in work:
                    self._update(w, group)
            for w in work:
                end_ema_step(w, group)


def reset_period(group: dict, times: int) -> int:
    """Steps until the next reset: interval + increment * resets so far, plus one after the first reset when
    `exact_reset_period` asks for the documented schedule (the originals reset one step early)."""
    period = group["reset_interval"] + group["reset_increment"] * times
    if group["exact_reset_period"] and times > 0:
        period += 1
    return period


def advance_counters(state: dict, group: dict, reset: Callable[[], None]) -> int:
    """SCORN/REMASTER step counting: with resets on, `steps_since_reset` is the step and a due reset calls
    `reset()` first; otherwise the per-parameter `step` counts. Returns k for the bias corrections."""
    if group["reset_interval"] > 0:
        if state["steps_since_reset"] // reset_period(group, state["times_zero"]) > 0:
            reset()
            state["times_zero"] += 1
            state["steps_since_reset"] = 1
        return state["steps_since_reset"]
    state["step"] += 1
    return state["step"]


def adopt_scalars(beta1: float, beta2: float, k: int) -> tuple[float, float, float]:
    """The debiased second-moment decay (ADOPT-like, -0.0 at k = 1) and the two bias corrections."""
    slow_beta2 = (beta2**k - beta2) / (beta2**k - 1)
    return slow_beta2, 1 - beta1**k, (1 - slow_beta2**k) ** 0.5


# Elements per slice for long elementwise chains on CPU: 2 MiB of fp32 per tensor, so a dozen passes over
# p, grad, both moments and two scratch slices stay in cache instead of streaming ~60 MB tensors from memory
# a dozen times. A multiple of 64 keeps every slice on whole vector widths, so each element is computed by
# the same vectorised code as in a whole-tensor op. On accelerators one kernel per op is faster: no slicing.
CPU_SLICE = 1 << 19


def slice_length(t: torch.Tensor) -> int:
    """How many elements an elementwise chain on `t` should take at once (the whole tensor off CPU)."""
    n = t.numel()
    return min(n, CPU_SLICE) if t.is_cpu else n


def flat_slices(tensors: list[torch.Tensor | None], length: int
                ) -> Iterator[tuple[int, list[torch.Tensor | None]]]:
    """(start, the same [start, start + length) window of each contiguous tensor, flattened); None passes."""
    flat = [None if t is None else t.view(-1) for t in tensors]
    n = next(t for t in flat if t is not None).numel()
    for start in range(0, n, length):
        stop = min(start + length, n)
        yield start, [None if t is None else t[start:stop] for t in flat]


MULTI_TENSOR = 1 << 24  # elements per multi-tensor batch off CPU: bounds the batch's temporaries
# On CPU a chain tensor by tensor wins: each tensor's chain runs in cache, with reused scratch buffers; a
# multi-tensor chain walks the whole batch once per operation and allocates its temporaries (LoRA fp32, 1000
# tensors of 49k: Prodigy 203 ms per step batched, 127 ms tensor by tensor). Tests switch it on to check that
# both paths give the same bits.
MULTI_TENSOR_ON_CPU = False


def tensor_batches(tensors: list[torch.Tensor], working: torch.dtype | None = None) -> list[list[int]]:
    """Indices of consecutive tensors to run as one multi-tensor (torch._foreach_*) chain: tensors of one device
    and dtype that each fit a single window (`windows`), up to a slice's worth of elements together on CPU
    (the in-cache size; only with MULTI_TENSOR_ON_CPU) or MULTI_TENSOR off it, where each operation is one kernel
    launch per batch instead of one per tensor;
    the per-element operations and their roundings are the per-tensor path's. Tensors that need slicing come
    alone, and so do bf16/fp16 ones: torch._foreach_mul_ rounds its scalar to the tensors' dtype first, where
    mul_ multiplies by the fp32 value (another result in the last bit). `working`: the dtype the chain computes in
    where it is not the tensors' own (Persona's fp32 copies of bf16 weights)."""
    if not MULTI_TENSOR_ON_CPU and all(t.is_cpu for t in tensors):  # one by one (the loop costs 1 ms at 1000)
        return [[i] for i in range(len(tensors))]
    out: list[list[int]] = []
    total, joinable = 0, False  # elements in the last batch, and whether more may join it
    for i, t in enumerate(tensors):
        cap = CPU_SLICE if t.is_cpu else MULTI_TENSOR
        batchable = ((not t.is_cpu or MULTI_TENSOR_ON_CPU)
                     and (working or t.dtype) in (torch.float32, torch.float64) and len(windows([t])) == 1)
        prev = tensors[out[-1][-1]] if out else None
        if joinable and batchable and total + t.numel() <= cap and (prev.device, prev.dtype) == (t.device, t.dtype):
            out[-1].append(i)
            total += t.numel()
        else:
            out.append([i])
            total, joinable = t.numel(), batchable
    return out


def windows(tensors: list[torch.Tensor | None], multiple: int = 1
            ) -> list[tuple[int, list[torch.Tensor | None]]]:
    """The (start, windows) an elementwise chain over same-sized tensors should take, one by one: in-cache
    slices on CPU (a multiple of `multiple` elements, e.g. whole quantization blocks), or a single window of
    the tensors themselves where slicing does not apply: off CPU, no longer than a slice, or not contiguous
    (a resumed checkpoint may carry other strides)."""
    first = next(t for t in tensors if t is not None)
    n = first.numel()
    if n <= CPU_SLICE:  # one window, on any device (the common case of many small tensors, made quick)
        return [(0, tensors)]
    length = slice_length(first) // multiple * multiple
    if not 0 < length < n or not all(t.is_contiguous() for t in tensors if t is not None):
        return [(0, tensors)]
    return list(flat_slices(tensors, length))


_SCRATCH = threading.local()


def scratch(slot: int, like: torch.Tensor) -> torch.Tensor | None:
    """A reused buffer shaped like `like` for a step's temporaries on CPU, where a fresh multi-MB temporary
    costs its page faults on every step (glibc maps and unmaps large blocks: for Prodigy's two full-size
    temporaries, a third of a 15M-parameter fp32 step); None (let the op allocate) off CPU, where the caching
    allocator already reuses memory, and for a non-contiguous `like` (a fresh result would keep its strides,
    and a later reduction its order). A slot's buffer grows to the largest tensor it served and is held: on
    CPU that is what the originals' own temporaries take at their peak. Per thread, so optimizers stepped from
    different threads never share one. Its views are kept per shape: a LoRA step asks 3000 times, and a fresh
    view each time cost more than the allocation it saves."""
    if not like.is_cpu or not like.is_contiguous():
        return None
    bufs = _SCRATCH.__dict__.setdefault("bufs", {})
    entry = bufs.get((slot, like.dtype))  # (buffer, {shape: view of it})
    shape = like.shape
    if entry is not None and (view := entry[1].get(shape)) is not None:
        return view
    n = like.numel()
    if entry is None or entry[0].numel() < n:  # the old views go with the old buffer
        entry = bufs[(slot, like.dtype)] = (torch.empty(max(n, CPU_SLICE), dtype=like.dtype), {})
    view = entry[1][shape] = entry[0][:n].view(shape)
    return view
