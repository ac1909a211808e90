"""Reading `.pt` files safely: only regular files, `torch.load(weights_only=True)` (or our faster index reader),
harmless objects replaced by inert stubs, any other global refused by name. Nothing here ever unpickles with
code execution, and what a file claims (sizes, storages, nesting) is checked against what it holds."""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import stat
import struct
import warnings
import zipfile
from typing import Any

from optinspect.state.limits import MAX_TENSORS
from optinspect.state.loaded import StateLoadError
from optinspect.state.mapped import CorruptData, check_extent
from optinspect.state.ptindex import Unsupported, load_index, stub_for

# globals that checkpoints carry and that hold no optimizer state: replaced by inert stubs
HARMLESS_GLOBALS = re.compile(r"""^(
    argparse\.Namespace
  | pathlib\.(Posix|Windows|Pure\w*)Path
  | numpy\.(core\.|_core\.)?multiarray\.scalar | numpy\.dtype | numpy\.dtypes\.\w+DType
  | deepspeed\.runtime\.fp16\.loss_scaler\.(Dynamic)?LossScaler
  | deepspeed\.runtime\.zero\.config\.ZeroStageEnum
  | deepspeed\.utils\.tensor_fragment\.fragment_address
  | deepspeed\.checkpoint\.\w+(\.\w+)*
  | omegaconf\.(listconfig\.ListConfig|dictconfig\.DictConfig|base\.(ContainerMetadata|Metadata)|nodes\.\w+)
  | typing\.Any
  | collections\.defaultdict
  | torch\.torch_version\.TorchVersion
  | transformers\.trainer_utils\.\w+
  | enum\.Enum
)$""", re.X)


TORCHAO = re.compile(r"^torchao\.")
RNG_FILE = re.compile(r"^(rng_state(_\d+)?\.pth|random_states_\d+\.pkl)$")  # what trainers save beside the state


# -- reading files -----------------------------------------------------------------------------------
def check_regular(path: str) -> int:
    """The size of `path` if it is a regular file (links followed); a FIFO, device or socket is refused by name
    before anything opens it (opening a FIFO blocks, and a device never ends)."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise StateLoadError(f"{path}: cannot read ({e.strerror or e})") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode) else \
            "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "a socket" \
            if stat.S_ISSOCK(st.st_mode) else "not a regular file"
        raise StateLoadError(f"{path}: {kind}, not a file; only regular files are read")
    return st.st_size


def read_small(path: str, limit: int) -> bytes:
    """A small regular file (DeepSpeed's `latest`), read up to `limit` bytes whatever its size claims."""
    check_regular(path)
    with open(path, "rb") as fh:
        return fh.read(limit)


def safe_torch_load(path: str, max_tensors: int = MAX_TENSORS, placements: list | None = None
                    ) -> tuple[Any, list[str]]:
    """torch.load(weights_only=True), with harmless globals stubbed; returns (object, skipped global names).
    `placements`: see `load_index`."""
    check_regular(path)
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except OSError as e:
        raise StateLoadError(f"{path}: cannot read ({e.strerror or e})") from None
    if not magic:
        raise StateLoadError(f"{path}: empty file")
    is_zip = magic == b"PK\x03\x04"
    if not is_zip and magic[:1] != b"\x80":  # torch.save writes a zip, or (legacy) a pickle of protocol >= 2
        raise StateLoadError(f"{path}: not a PyTorch checkpoint (neither a torch.save zip nor a pickle) and not "
                             f"safetensors; it starts with {magic!r}")
    if is_zip:
        try:
            return load_index(path, HARMLESS_GLOBALS, max_tensors=max_tensors, placements=placements)
        except Unsupported:
            pass  # torch's own weights-only loader decides (and refuses what must be refused)
        except CorruptData as e:
            raise StateLoadError(f"{path}: {e}") from None
        try:  # the central directory sits at the end: a truncated file fails here, without reading the data
            with zipfile.ZipFile(path) as z:
                z.infolist()
        except (zipfile.BadZipFile, ValueError, EOFError, struct.error, IndexError, NotImplementedError,
                OverflowError) as e:  # zipfile's errors on a mangled directory (names that are not UTF-8 ...)
            raise StateLoadError(f"{path}: truncated or corrupt torch file ({type(e).__name__}: {e})") from None
    skipped: list[str] = []
    try:
        return _checked(path, _load(path, is_zip, [])), skipped
    except pickle.UnpicklingError as e:
        names = _unsafe_globals(path, is_zip, str(e))
    refused = [n for n in names if not HARMLESS_GLOBALS.match(n)]
    ao = [n for n in refused if TORCHAO.match(n)]
    if ao:  # our own reader maps torchao's optimizer states; reaching here means another torchao object
        raise StateLoadError(f"{path}: holds torchao objects optinspect does not read ({', '.join(ao[:3])}); its "
                             "optimizer states (AdamW8bit, AdamW4bit, AdamWFp8) it reads without torchao")
    if refused and RNG_FILE.match(os.path.basename(path)):
        raise StateLoadError(f"{path}: random-number-generator state saved beside the checkpoint (HF Trainer, "
                             "Accelerate), not optimizer state; pass the checkpoint folder or its optimizer file")
    if refused:
        raise StateLoadError(f"{path}: refused: loading it would need the global(s) {', '.join(refused)}, which "
                             "could execute code; optinspect never unpickles those")
    stubs = [(stub_for(n), n) for n in names if HARMLESS_GLOBALS.match(n)]
    try:
        obj = _load(path, is_zip, stubs)
    except pickle.UnpicklingError as e:
        raise StateLoadError(f"{path}: refused: {_first_line(str(e))}") from None
    return _checked(path, obj), [n for _, n in stubs]


def _checked(path: str, obj: Any) -> Any:
    """What torch.load built, held to the reader's bounds: no tensor may claim more elements than its storage
    holds (a stride-0 view of a few bytes would otherwise be streamed as a huge tensor)."""
    import torch

    seen = 0
    stack = [(obj, 0)]
    storages: dict[int, int] = {}
    while stack:
        node, depth = stack.pop()
        seen += 1
        if seen > 1_000_000 or depth > 200:
            raise StateLoadError(f"{path}: the object graph is too large or too deep to be optimizer state")
        if isinstance(node, torch.Tensor):
            storages[node.untyped_storage().data_ptr()] = node.untyped_storage().nbytes()
            storage = node.untyped_storage().nbytes() // max(1, node.element_size())
            try:
                check_extent(tuple(node.shape), tuple(node.stride()), node.storage_offset(), storage)
            except CorruptData as e:
                raise StateLoadError(f"{path}: {e}") from None
        elif isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, (list, tuple)):
            stack.extend((v, depth + 1) for v in node)
    claimed, size = sum(storages.values()), os.path.getsize(path)
    if claimed > size:  # every byte of every storage is in the file (stored, never compressed)
        raise StateLoadError(f"{path}: its tensors claim {claimed:,} bytes but the file holds {size:,} "
                             "(truncated or corrupt)")
    return obj


def is_zip(path: str) -> bool:
    with open(path, "rb") as fh:
        return fh.read(4) == b"PK\x03\x04"


def _first_line(msg: str) -> str:
    for line in msg.splitlines():
        if "GLOBAL" in line or "Unsupported" in line:
            return line.strip()
    return msg.splitlines()[0] if msg else "weights-only load failed"


def _load(path: str, is_zip: bool, stubs: list) -> Any:
    import torch  # here, not at the top: our own index reader needs no torch

    ctx = torch.serialization.safe_globals(stubs) if stubs else contextlib.nullcontext()
    with ctx, warnings.catch_warnings():  # torch warns about odd protocols and such: our error line says it all
        warnings.simplefilter("ignore")
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
        except pickle.UnpicklingError:
            raise
        except (RuntimeError, EOFError, ValueError, OSError, KeyError, IndexError, TypeError, MemoryError,
                AssertionError, AttributeError, OverflowError, RecursionError, struct.error,
                zipfile.BadZipFile) as e:
            raise StateLoadError(f"{path}: truncated or corrupt torch file ({_first_line(str(e))})") from None


def _unsafe_globals(path: str, is_zip: bool, message: str) -> list[str]:
    if is_zip:
        import torch

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
        except Exception:  # noqa: BLE001 - fall back to what torch's message names
            pass
    found = re.findall(r"GLOBAL ([\w.]+) was not an allowed global", message)
    found += re.findall(r"Unsupported global: GLOBAL ([\w.]+)", message)
    if not found:
        raise StateLoadError(f"{path}: refused: {_first_line(message)}")
    return sorted(set(found))
