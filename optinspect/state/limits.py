"""Bounds on what one state file may make us do, whatever it claims (torch-free: the header reader uses them)."""

from __future__ import annotations

# Tensors read from one state unless the user asks for more. The largest real optimizer states hold tens of
# thousands (an MoE model's experts included); a file of millions of one-element tensors is an attack on time and
# memory (about 2 KB and 40 us per tensor, whatever the file's size), refused before its tensors are read.
MAX_TENSORS = 300_000


def too_many_tensors(path: str, count: str, limit: int) -> str:
    return (f"{path}: holds {count} tensors, past the limit of {limit:,} (a bound on time and memory; no optimizer "
            f"state of a real model comes near the default {MAX_TENSORS:,}); --max-tensors N raises it")
