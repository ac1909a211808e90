"""torch.distributed.checkpoint (DCP) folders: `.metadata` and `__<rank>_<n>.distcp` files, read without
torch.distributed and without executing anything.

`.metadata` is one plain pickle of DCP's dataclasses; a restricted unpickler binds each to an inert record. Its
`state_dict_metadata` names every item by dotted path (`optimizer.state.<param fqn>.<key>`,
`optimizer.param_groups.<g>.<key>`), `planner_data` gives each path as a tuple (parameter names contain dots),
and `storage_data` says where each item's bytes are: with DCP's default writer every item is a complete
torch.save archive at [offset, offset + length) of a .distcp file, read here by the same safe reader as a .pt
file, its tensors mapped, not loaded.
"""

from __future__ import annotations

import glob
import os
import pickle
import sys
from typing import Any

from optinspect.state.loaded import LoadedState, StateLoadError
from optinspect.state.mapped import CorruptData, MappedFile
from optinspect.state.ptindex import is_torch_dtype

METADATA = ".metadata"
_DCP = "torch.distributed.checkpoint"
_RECORD_CLASSES = {(f"{_DCP}.metadata", n) for n in ("Metadata", "TensorStorageMetadata", "BytesStorageMetadata",
                                                       "ChunkStorageMetadata", "TensorProperties", "MetadataIndex",
                                                       "StorageMeta", "_MEM_FORMAT_ENCODING")} | {
    (f"{_DCP}.filesystem", "_StorageInfo")}
MAX_METADATA = 256 * 2**20


class Record:
    """An inert stand-in for one of DCP's dataclasses: its fields, nothing callable."""

    _name = "record"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.__dict__.update(kwargs)

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, dict):
            self.__dict__.update(state)
        elif isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):  # (None, slots)
            self.__dict__.update(state[1])
        else:
            self.state = state


_RECORDS = {key: type(key[1], (Record,), {"_name": key[1]}) for key in _RECORD_CLASSES}


class _MetadataReader(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _RECORDS:
            return _RECORDS[(module, name)]
        if (module, name) == ("torch", "Size"):
            return tuple
        if module == "torch" and is_torch_dtype(name):
            return getattr(sys.modules["torch"], name)
        if (module, name) == ("torch.serialization", "_get_layout"):
            return str
        if module == "pathlib" and name.endswith("Path"):  # the absolute path it was saved at: not shown
            return lambda *parts: "<path>"
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a checkpoint's metadata")


def is_dcp_folder(path: str) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, METADATA))


def _metadata(folder: str) -> Any:
    path = os.path.join(folder, METADATA)
    size = os.path.getsize(path)
    if size > MAX_METADATA:
        raise StateLoadError(f"{path}: {size:,} bytes of metadata; more than a checkpoint's index holds")
    with open(path, "rb") as fh:
        try:
            md = _MetadataReader(fh).load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
                RecursionError) as e:
            raise StateLoadError(f"{path}: not a readable DCP metadata file ({e})") from None
    if not all(isinstance(getattr(md, f, None), dict) for f in ("state_dict_metadata", "storage_data")):
        raise StateLoadError(f"{path}: DCP metadata without its item tables")
    return md


def load_dcp(folder: str) -> LoadedState:
    """The optimizer part of a DCP folder as a LoadedState (parameters named by their fully qualified names)."""
    from optinspect.state.layouts import from_state_dict
    from optinspect.state.ptindex import Unsupported, load_index
    from optinspect.state.unpickle import HARMLESS_GLOBALS, check_regular

    md = _metadata(folder)
    planner = md.planner_data if isinstance(getattr(md, "planner_data", None), dict) else {}
    where = {}
    for index, info in md.storage_data.items():
        fqn = getattr(index, "fqn", None)
        if isinstance(fqn, str):
            where.setdefault(fqn, []).append((getattr(index, "offset", None), info))
    files: dict[str, MappedFile] = {}

    def item(fqn: str) -> Any:
        places = where.get(fqn)
        if not places:
            raise StateLoadError(f"{folder}: item {fqn!r} is listed but has no data")
        if len(places) > 1:
            raise StateLoadError(f"{folder}: {fqn!r} is sharded in {len(places)} chunks; sharded DCP items are not "
                                 "read yet (save with one rank, or consolidate with dcp_to_torch_save)")
        _, info = places[0]
        if getattr(info, "transform_descriptors", None):
            raise StateLoadError(f"{folder}: {fqn!r} is stored transformed ({info.transform_descriptors}); not read")
        name = getattr(info, "relative_path", "")
        if not isinstance(name, str) or os.path.basename(name) != name or not name.endswith(".distcp"):
            raise CorruptData(f"{folder}: an item stored in {str(name)[:60]!r}, not a .distcp file of the folder")
        if name not in files:
            check_regular(os.path.join(folder, name))
            files[name] = MappedFile(os.path.join(folder, name))
        offset, length = getattr(info, "offset", None), getattr(info, "length", None)
        if type(offset) is not int or type(length) is not int:
            raise CorruptData(f"{folder}: item {fqn!r} has no byte range")
        try:
            obj, _ = load_index(os.path.join(folder, name), HARMLESS_GLOBALS, mapped=files[name], base=offset,
                                end=offset + length)
        except Unsupported as e:
            raise StateLoadError(f"{folder}: item {fqn!r} is not a torch.save archive DCP writes ({e})") from None
        return obj

    state: dict[str, dict[str, Any]] = {}
    groups: dict[int, dict[str, Any]] = {}
    for fqn in md.state_dict_metadata:
        path = planner.get(fqn)
        if not isinstance(path, tuple) or len(path) < 3 or path[0] != "optimizer":
            continue
        if path[1] == "state" and len(path) == 4:
            state.setdefault(str(path[2]), {})[str(path[3])] = item(fqn)
        elif path[1] == "param_groups" and len(path) == 4 and isinstance(path[2], int):
            groups.setdefault(path[2], {})[str(path[3])] = item(fqn)
    if not groups:
        raise StateLoadError(f"{folder}: a DCP checkpoint without optimizer state (its items: "
                             f"{', '.join(list(md.state_dict_metadata)[:6])}, …)")
    ordered = [groups[i] for i in sorted(groups)]
    for g in ordered:
        if not isinstance(g.get("params"), list):
            g["params"] = []
    sd = {"state": state, "param_groups": ordered}
    names = [str(p) for g in ordered for p in g["params"]]
    ls = from_state_dict(sd, folder, "torch.distributed.checkpoint folder", names)
    ls.names_from = "checkpoint (fully qualified names)"
    ls.mapped = True
    ranks = sorted(glob.glob(os.path.join(folder, "*.distcp")))
    if len(ranks) > 1:
        ls.warnings.append(f"{len(ranks)} .distcp files")
    return ls
