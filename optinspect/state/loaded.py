"""Saved optimizer state in one neutral shape, whatever wrote it: parameters with their state entries, and the
param groups. Every layout reader produces a LoadedState; every engine reads one."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from optinspect.state.mapped import CorruptData, MappedTensor, is_tensor


class StateLoadError(Exception):
    """The input cannot be read as optimizer state; the message says why (exit 2)."""


@dataclass(slots=True)
class ParamState:
    index: int
    name: str
    group: int
    entries: dict[str, Any]  # key -> tensor or scalar (bitsandbytes' nested quant state flattened)
    shape: tuple[int, ...] | None = None
    name_certain: bool = True  # False where the name was matched by shape among tensors of the same shape


@dataclass
class LoadedState:
    path: str
    layout: str
    params: list[ParamState]
    groups: list[dict[str, Any]]
    source_file: str = ""
    key_used: str | None = None
    skipped: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    names_from: str = "index"
    extra: dict[str, Any] = field(default_factory=dict)
    mapped: bool = False  # tensors are views of a read-only file mapping (their pages may be released)
    placements: list = field(default_factory=list)  # where tensors' bytes lie, still to be settled

    def settle(self) -> None:
        """Find where every tensor's bytes lie, checking each against the file, if `load_state(names_first=True)`
        left that for later: done before statistics, so a corrupt file fails before any figure."""
        for place in self.placements:
            try:
                place()
            except CorruptData as e:
                raise CorruptData(f"{self.source_file}: {e}") from None
        self.placements = []

    @property
    def tensor_bytes(self) -> int:
        """Bytes of every state tensor (mapped lazily or not): the total a progress bar counts towards."""
        return sum(int(v.nbytes) if isinstance(v, MappedTensor) else v.numel() * v.element_size()
                   for p in self.params for v in p.entries.values() if is_tensor(v))


def materialize(v: Any) -> Any:
    """A real tensor for a mapped one (read fully: only for small tensors or diffs); anything else as is."""
    return v.load() if isinstance(v, MappedTensor) else v
