"""torchao's low-bit optimizer states (AdamW8bit, AdamW4bit, AdamWFp8), read without torchao.

torchao saves each large moment as a tensor subclass rebuilt through `_rebuild_from_type_v2`, whose data sit in
plain tensors among its attributes: `codes` (uint8 of the parameter's shape; 4-bit: two codes per byte, the high
nibble first, flattened; fp8: float8_e4m3fn), `scale` (one float32 per block of the flattened tensor) and, for 8
and 4 bits, the code book `qmap`. The value of element i is qmap[code_i] * scale[i // block] (fp8: the code's own
value times the scale). torchao itself is never imported: its class names map to markers in our reader.

A `LowBitTensor` stands where the moment was: to the statistics engine it is a float32 tensor of the parameter's
shape whose chunks are dequantized as they are read; its `nbytes` are what the file stores.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from optinspect.state.mapped import CorruptData, MappedTensor, is_tensor

if TYPE_CHECKING:
    import torch

# the subclasses' import paths (older torchao kept them under prototype.low_bit_optim) -> kind
CLASSES = {f"{mod}.subclass_{kind}.OptimState{name}": kind
           for mod in ("torchao.optim", "torchao.prototype.low_bit_optim")
           for kind, name in (("8bit", "8bit"), ("4bit", "4bit"), ("fp8", "Fp8"))}
FP8_HALF_ULP_REL = 2.0**-4  # e4m3 keeps 3 mantissa bits: rounding to nearest errs by at most half an ulp


class Marker:
    """What the reader returns for a torchao class name: only `_rebuild_from_type_v2` may use it."""

    def __init__(self, kind: str):
        self.kind = kind


def _tensor(x: Any, what: str):
    if is_tensor(x):
        return x
    raise CorruptData(f"a torchao state's {what} is not a tensor")


def _numel(t) -> int:
    return t.numel if isinstance(t, MappedTensor) else t.numel()


def _read(t, start: int, count: int) -> torch.Tensor:
    return t.view(start, count) if isinstance(t, MappedTensor) else t.reshape(-1)[start:start + count]


class LowBitTensor(MappedTensor):
    """A torchao low-bit moment, dequantized chunk by chunk as it is read."""

    __slots__ = ("kind", "codes", "scale", "qmap", "block", "signed")

    def __init__(self, kind: str, shape: tuple[int, ...], attrs: dict):
        # not a view of one mapping: the MappedTensor fields describe the logical float32 tensor
        super().__init__(None, 0, "float32", tuple(int(s) for s in shape))
        self.kind = kind
        self.codes = _tensor(attrs.get("codes"), "codes")
        self.scale = _tensor(attrs.get("scale"), "scale")
        self.qmap = _tensor(attrs["qmap"], "qmap") if kind != "fp8" else None
        self.signed = bool(attrs.get("signed", True))
        per_byte = 2 if kind == "4bit" else 1
        n, blocks = self.numel, _numel(self.scale)
        if _numel(self.codes) * per_byte != n or blocks == 0 or n % blocks:
            raise CorruptData(f"a torchao {kind} state of {n:,} elements with {_numel(self.codes):,} code bytes and "
                              f"{blocks:,} scales does not add up")
        self.block = n // blocks
        stored = attrs.get("block_size")
        if isinstance(stored, int) and stored != self.block:
            raise CorruptData(f"a torchao {kind} state says block {stored} but holds blocks of {self.block}")

    @property
    def nbytes(self) -> int:
        return _numel(self.codes) + 4 * _numel(self.scale) + (4 * _numel(self.qmap) if self.qmap is not None else 0)

    @property
    def dtype_name(self) -> str:
        return {"8bit": "uint8", "4bit": "uint4", "fp8": "float8_e4m3fn"}[self.kind]

    @property
    def contiguous(self) -> bool:
        return True

    def codes_view(self, start: int, count: int) -> torch.Tensor:
        """Elements [start, start + count) as codes (uint8; 4-bit unpacked, high nibble first)."""
        import torch

        if self.kind != "4bit":
            return _read(self.codes, start, count)
        lo, hi = start // 2, (start + count + 1) // 2
        packed = _read(self.codes, lo, hi - lo)
        both = torch.stack([packed >> 4, packed & 0xF], dim=1).reshape(-1)
        return both[start - 2 * lo:start - 2 * lo + count]

    def view(self, start: int, count: int) -> torch.Tensor:
        scale = _read(self.scale, start // self.block, math.ceil((start + count) / self.block) - start // self.block)
        per = scale.float().repeat_interleave(self.block)
        offset = start - (start // self.block) * self.block
        per = per[offset:offset + count]
        codes = self.codes_view(start, count)
        if self.kind == "fp8":  # the codes are float8_e4m3fn values (the reader gives them their dtype)
            return codes.float() * per
        q = self.qmap.load().float() if isinstance(self.qmap, MappedTensor) else self.qmap.float()
        return q[codes.long()] * per

    def release(self, start: int, count: int) -> None:
        if isinstance(self.codes, MappedTensor) and self.kind != "4bit":
            self.codes.release(start, count)

    def load(self) -> torch.Tensor:
        return self.view(0, self.numel).reshape(self.shape)

    def quant_parts(self) -> tuple[Any, torch.Tensor, torch.Tensor] | None:
        """(codes as one code per element, block scales, code book) for the error bound; None for fp8."""
        if self.kind == "fp8":
            return None
        scale = self.scale.load() if isinstance(self.scale, MappedTensor) else self.scale
        qmap = self.qmap.load() if isinstance(self.qmap, MappedTensor) else self.qmap
        return _Codes(self), scale, qmap


class _Codes(MappedTensor):
    """A low-bit tensor's codes, one per element, for the error bound's pass over them."""

    __slots__ = ("owner",)

    def __init__(self, owner: LowBitTensor):
        super().__init__(None, 0, "uint8", owner.shape)
        self.owner = owner

    @property
    def contiguous(self) -> bool:
        return True

    def view(self, start: int, count: int) -> torch.Tensor:
        return self.owner.codes_view(start, count)

    def release(self, start: int, count: int) -> None:
        self.owner.release(start, count)


def rebuild(func: Any, new_type: Any, args: Any, state: Any) -> Any:
    """`torch._tensor._rebuild_from_type_v2` for torchao's subclasses: a LowBitTensor of the parameter's shape."""
    if not isinstance(new_type, Marker) or not isinstance(state, dict) or not isinstance(args, tuple) \
            or len(args) < 3:
        raise CorruptData("a tensor subclass that is not one of torchao's optimizer states")
    shape = state.get("_shape", args[2])
    if not isinstance(shape, (tuple, list)) or not all(type(s) is int and s >= 0 for s in shape):
        raise CorruptData("a torchao state with a malformed shape")
    return LowBitTensor(new_type.kind, tuple(shape), state)
