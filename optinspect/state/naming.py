"""Naming parameters a state file knows only by index: from a model .safetensors (by order and shape), or
from DeepSpeed pipeline layer files beside the state."""

from __future__ import annotations

import glob
import os
import re

from optinspect.state.header import HeaderError, read_header
from optinspect.state.loaded import LoadedState, StateLoadError
from optinspect.state.unpickle import safe_torch_load


def _natural(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def names_from_model(ls: LoadedState, model: str) -> None:
    """Name state entries after a model file's tensors (see `assign_names`)."""
    try:
        header = read_header(model)
    except (OSError, HeaderError) as e:
        raise StateLoadError(f"--model: {e}") from None
    floats = [t for t in header.tensors if t.dtype in ("F32", "F16", "BF16", "F64")]
    assign_names(ls, [(t.name, tuple(t.shape)) for t in sorted(floats, key=lambda t: _natural(t.name))],
                 "--model", "model file (shape, then order)")


def assign_names(ls: LoadedState, candidates: list[tuple[str, tuple]], what: str, source: str) -> None:
    """Match state entries to named tensors by shape, in the candidates' order.

    Unique shapes are certain; tensors that share a shape are assigned in order and may be swapped, which is
    reported. Frozen tensors (no state) are skipped because no state entry asks for their shape.
    """
    pool: dict[tuple, list[str]] = {}
    for name, shape in candidates:
        pool.setdefault(tuple(shape), []).append(name)
    wanted: dict[tuple, int] = {}
    for p in ls.params:
        if p.shape is not None:
            wanted[tuple(p.shape)] = wanted.get(tuple(p.shape), 0) + 1
    unmatched, ambiguous = 0, 0
    for p in ls.params:
        names = pool.get(tuple(p.shape)) if p.shape is not None else None
        if not names:
            unmatched += 1
            continue
        if len(names) > 1 or wanted.get(tuple(p.shape), 0) > 1:
            ambiguous += 1
            p.name_certain = False
        p.name = names.pop(0)
    if unmatched:
        ls.warnings.append(f"{what}: {unmatched} of {len(ls.params)} state entries found no tensor of their shape; "
                           "those keep their index names")
    if ambiguous:
        ls.warnings.append(f"{what}: {ambiguous} state entries share their shape with other tensors; they were named "
                           "in order and may be swapped (marked `?` beside their names)")
    ls.names_from = source


def names_from_pipeline_layers(ls: LoadedState, file: str) -> None:
    """DeepSpeed pipeline checkpoints keep parameter names and shapes only in their layer files."""
    folder = os.path.dirname(file)
    layers = glob.glob(os.path.join(folder, "layer_*-model_states.pt")) + \
        glob.glob(os.path.join(folder, "layer_*-model_*-model_states.pt"))
    if not layers:
        return
    candidates: list[tuple[str, tuple]] = []
    for path in sorted(set(layers), key=lambda f: _natural(os.path.basename(f))):
        try:
            obj, _ = safe_torch_load(path)
        except StateLoadError as e:
            ls.warnings.append(f"layer file skipped: {e}")
            continue
        layer = os.path.basename(path).split("-", 1)[0]
        if isinstance(obj, dict):
            for key, v in obj.items():
                if hasattr(v, "shape"):
                    candidates.append((f"{layer}.{key}", tuple(v.shape)))
    if candidates:
        assign_names(ls, candidates, "layer files", "DeepSpeed layer files (shape, then order)")


HF_TRAINER_FILES = ("config.json", "trainer_state.json")


def names_from_hf_trainer(ls: LoadedState, folder: str) -> bool:
    """An HF Trainer checkpoint's parameters by the Trainer's own rule: its optimizer has a group of the
    parameters with weight decay, then one of the others, each in module order. The model's safetensors header
    is sorted by name and cannot give that order; the model class named in config.json, built on the meta device
    by the installed transformers (no weights, no code from the checkpoint), can. Names are kept only where the
    count, the group sizes and every shape agree; otherwise why not is said."""
    import importlib.util
    import warnings

    if not all(os.path.isfile(os.path.join(folder, f)) for f in HF_TRAINER_FILES):
        return False
    if importlib.util.find_spec("transformers") is None:
        ls.warnings.append("an HF Trainer checkpoint: with transformers installed its parameters are named by the "
                           "Trainer's grouping rule")
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import torch
            import transformers

            config = transformers.AutoConfig.from_pretrained(folder, trust_remote_code=False)
            arch = (getattr(config, "architectures", None) or [None])[0]
            klass = getattr(transformers, str(arch), None) if arch else None
            if klass is None:
                ls.warnings.append(f"an HF Trainer checkpoint of {arch!r}, a model class transformers does not "
                                   "have: parameters keep their index")
                return False
            with torch.device("meta"):
                model = klass(config)
            decay = set(transformers.Trainer.get_decay_parameter_names(None, model))
    except Exception as e:  # noqa: BLE001 - naming is a courtesy; the state is read either way
        ls.warnings.append(f"an HF Trainer checkpoint whose model could not be rebuilt to name parameters "
                           f"({type(e).__name__}: {str(e)[:120]})")
        return False
    named = [(n, tuple(p.shape)) for n, p in model.named_parameters() if p.requires_grad]
    groups = [[x for x in named if x[0] in decay], [x for x in named if x[0] not in decay]]
    order = [x for g in groups for x in g]
    sizes = [sum(1 for p in ls.params if p.group == g) for g in range(len(ls.groups))]
    if len(order) != len(ls.params) or sizes != [len(g) for g in groups if g]:
        ls.warnings.append(f"the Trainer's rule gives {len(order)} parameters in groups of "
                           f"{[len(g) for g in groups]}; the state has {len(ls.params)} in {sizes}: names kept by "
                           "index (a custom optimizer or optim_target_modules?)")
        return False
    wrong = [(p.name, n) for p, (n, s) in zip(ls.params, order, strict=True) if p.shape and tuple(p.shape) != s]
    if wrong:
        ls.warnings.append(f"{len(wrong)} parameter(s) do not have the shape the Trainer's rule gives them (first: "
                           f"{wrong[0][0]} would be {wrong[0][1]}): names kept by index")
        return False
    for p, (n, _) in zip(ls.params, order, strict=True):
        p.name = n
    ls.names_from = f"HF Trainer rule ({arch} from config.json: decayed parameters, then the rest, in module order)"
    return True
