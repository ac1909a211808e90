"""Find and load saved optimizer state safely, whatever wrote it, into one neutral shape (a LoadedState).

locate (which file) -> unpickle or safetensors (read it safely) -> layouts (what it is) -> naming (which parameter
is which). The modules below hold each step; this one is the entry point.
"""

from __future__ import annotations

import os

from optinspect.state.layouts import has_mapped, interpret, load_safetensors, looks_like_safetensors
from optinspect.state.limits import MAX_TENSORS
from optinspect.state.loaded import LoadedState, ParamState, StateLoadError, materialize
from optinspect.state.locate import resolve_path
from optinspect.state.naming import names_from_hf_trainer, names_from_model, names_from_pipeline_layers
from optinspect.state.unpickle import is_zip, safe_torch_load

__all__ = ["LoadedState", "ParamState", "StateLoadError", "load_state", "materialize"]


def load_state(path: str, model: str | None = None, optimizer: int = 0, max_tensors: int = MAX_TENSORS,
               names_first: bool = False) -> LoadedState:
    """Read any supported optimizer state; `model` (safetensors) names parameters by order and shape; `optimizer`
    picks one of a checkpoint that holds several (Lightning's list, Accelerate's optimizer_N.bin); a file of more
    than `max_tensors` tensors is refused. `names_first`: return as soon as names and shapes are known, leaving
    where the bytes lie (and its checks) to `LoadedState.settle`, for a viewer that shows the rows first."""
    from optinspect.state import dcp

    folder = path if os.path.isdir(path) else os.path.dirname(path) or "."
    if dcp.is_dcp_folder(folder) and (os.path.isdir(path) or path.endswith((dcp.METADATA, ".distcp"))):
        ls = dcp.load_dcp(folder)
        ls.path, ls.source_file = path, os.path.join(folder, dcp.METADATA)
        if model:
            names_from_model(ls, model)
        return ls
    file, how = resolve_path(path, optimizer=optimizer)
    from optinspect.state import zero

    here = os.path.dirname(file) or "."
    if zero.zero_files(here) and (zero.OPTIM_FILE.match(os.path.basename(file))
                                  or file.endswith("model_states.pt")):
        meta = zero.model_states_file(here)
        if meta:  # every rank's partition, named by the model-states file's param_shapes
            ls = zero.load_zero(here, meta)
            ls.path, ls.source_file = path, here
            if "/" in how:  # how the folder was found (`latest` -> global_step3/...), without the file picked
                ls.layout = f"{how.rsplit('/', 1)[0]}/: {ls.layout}"
            if model:
                names_from_model(ls, model)
            return ls
    if file.endswith(".safetensors") or looks_like_safetensors(file):
        ls = load_safetensors(file, max_tensors)
    else:
        placements: list = []
        obj, skipped = safe_torch_load(file, max_tensors, placements if names_first else None)
        ls = interpret(obj, path, optimizer)
        ls.placements = placements
        ls.skipped = skipped
        ls.mapped = is_zip(file) and not has_mapped(ls)
        if skipped:
            ls.warnings.append(f"skipped non-tensor objects: {', '.join(skipped)}")
    ls.path = path
    ls.source_file = file
    if how != "file":
        ls.layout = f"{how}: {ls.layout}"
    if model and ls.names_from == "index" and names_from_hf_trainer(ls, os.path.dirname(file) or "."):
        ls.warnings.append("an HF Trainer checkpoint: named by the Trainer's own rule, not by --model (whose header "
                           "is sorted by name, not in the optimizer's order)")
    elif model:
        names_from_model(ls, model)
    elif ls.names_from == "index" and "DeepSpeed" in ls.layout:
        names_from_pipeline_layers(ls, file)
    elif ls.names_from == "index":
        names_from_hf_trainer(ls, os.path.dirname(file) or ".")
    return ls
