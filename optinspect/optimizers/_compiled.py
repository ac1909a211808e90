"""Opt-in compiled elementwise chains (`torch.compile`): one generated loop per tensor for a chain of a dozen
operations, where eager mode makes a pass and a dispatch per operation. Not bit-identical to the eager chain:
the compiler neither fuses a multiply into an add where eager kernels do nor rounds each intermediate where
eager ones do not, so results differ in the last bit or two; the eager chain stays the default."""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable, Sequence

import torch

__all__ = ["CHUNK", "CompiledChain"]

# Tensors per call: a call costs ~10 us of guards and dispatch, so a dozen tensors share one; a chunk is padded to
# this length, so one compiled graph serves every call (and each tensor's length is a free symbol, never fixed).
CHUNK = 16
_PAD = 2  # elements of a padding tensor: sizes 0 and 1 would be specialised (a graph of their own)


class CompiledChain:
    """`fn(lists..., *scalars)` compiled once for lists of CHUNK contiguous 1-D tensors of any lengths (>= 2);
    callers pass flattened views. Where compiling fails (no C++ compiler, an unsupported platform), it says so once
    and answers False: the caller runs its eager chain, nothing having been touched."""

    def __init__(self, fn: Callable) -> None:
        self._fn = fn
        self._compiled: Callable | None = None
        self._pads: dict[tuple, list[torch.Tensor]] = {}
        self.unavailable: str | None = None

    @staticmethod
    def takes(t: torch.Tensor) -> bool:
        """Whether a working tensor can join a compiled chain: contiguous, fp32, two elements or more."""
        return t.dtype == torch.float32 and t.is_contiguous() and t.numel() >= _PAD

    def __call__(self, lists: Sequence[Sequence[torch.Tensor] | None], *scalars: object) -> bool:
        if self.unavailable is not None:
            return False
        n = len(next(x for x in lists if x is not None))
        flat = [None if x is None else [_flat_alias(t) for t in x] + self._pad(x[0], CHUNK - n, k)
                for k, x in enumerate(lists)]
        if self._compiled is None:
            self._compiled = torch.compile(self._fn, dynamic=True, fullgraph=True)
        import torch.fx.experimental._config as fx_config

        try:
            # Without duck shapes, lengths that happen to be equal are no guard: one graph for every mix of sizes.
            # without grad always: a step runs so, and the grad mode is part of what a graph is compiled for
            with fx_config.patch(use_duck_shape=False), torch.no_grad():
                self._compiled(*flat, *scalars)
        except Exception as e:  # noqa: BLE001 - any compiler failure: said once, then the eager chain
            if not _is_compile_failure(e):
                raise
            self.unavailable = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            warnings.warn(f"optinspect: compiled chain unavailable, running eager ({self.unavailable})",
                          RuntimeWarning, stacklevel=3)
            return False
        return True

    def _pad(self, like: torch.Tensor, count: int, slot: int) -> list[torch.Tensor]:
        """Padding tensors for one list position: their own memory (every list is written), kept per device."""
        if count <= 0:
            return []
        key = (like.device, slot)
        pads = self._pads.get(key)
        if pads is None:
            pads = self._pads[key] = [torch.zeros(_PAD, dtype=torch.float32, device=like.device)
                                      for _ in range(CHUNK)]
        for p in pads[:count]:  # a padding tensor starts at zero each call: no NaN or inf carried over
            p.zero_()
        return pads[:count]


# id(tensor) -> (a weak reference to it, its flat alias), dropped with the tensor: weights, moments and most
# gradients are the same tensors step after step, and making an alias costs ~2 us (8 ms of a 1000-tensor step)
_ALIASES: dict[int, tuple[weakref.ref, torch.Tensor]] = {}


def _flat_alias(t: torch.Tensor) -> torch.Tensor:
    """A 1-D tensor over t's memory that is no view: Dynamo guards a view on its base's layout, which would make a
    graph per mix of parameter ranks and padding."""
    key = id(t)
    entry = _ALIASES.get(key)
    if entry is not None and entry[0]() is t:
        alias = entry[1]
        if alias.data_ptr() == t.data_ptr() and alias.numel() == t.numel():  # not re-seated since
            return alias
    alias = torch.empty(0, dtype=t.dtype, device=t.device).set_(t.untyped_storage(), t.storage_offset(),
                                                                  (t.numel(),))
    _ALIASES[key] = (weakref.ref(t, lambda _, key=key: _ALIASES.pop(key, None)), alias)
    return alias


def _is_compile_failure(e: BaseException) -> bool:
    """Errors of the compiler stack (Dynamo, Inductor, the C++ build), as opposed to the chain's own."""
    module = type(e).__module__ or ""
    return (module.startswith(("torch._dynamo", "torch._inductor", "torch._subclasses"))
            or isinstance(e, (OSError, ImportError, NotImplementedError))
            or "compile" in type(e).__name__.lower())
