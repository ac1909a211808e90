"""Finding the optimizer file: a file as given, or the one inside a checkpoint folder (DeepSpeed `latest`,
`global_step*/`, ZeRO partitions, HF/Accelerate `optimizer.pt`/`.bin`)."""

from __future__ import annotations

import glob
import os
import re

from optinspect.state.loaded import StateLoadError
from optinspect.state.unpickle import check_regular, read_small


# -- paths -------------------------------------------------------------------------------------------
def _more_optimizers(folder: str, first: str) -> list[str]:
    stem, ext = os.path.splitext(os.path.basename(first))
    return sorted((os.path.basename(p) for p in glob.glob(os.path.join(folder, f"{stem}_*{ext}"))
                   if re.fullmatch(rf"{re.escape(stem)}_\d+{re.escape(ext)}", os.path.basename(p))),
                  key=lambda n: int(re.sub(r"\D", "", n) or 0))


def resolve_path(path: str, depth: int = 0, optimizer: int = 0) -> tuple[str, str]:
    """A file, or the optimizer file inside a checkpoint folder; returns (file, how it was found)."""
    if not os.path.isdir(path):
        if not os.path.lexists(path):
            raise StateLoadError(f"{path}: no such file or folder")
        check_regular(path)
        return path, "file"
    if depth > 4:
        raise StateLoadError(f"{path}: checkpoint folders nest deeper than a checkpoint layout does")
    latest = os.path.join(path, "latest")
    if os.path.lexists(latest) and not os.path.isdir(latest):
        tag = read_small(latest, 256).decode("utf-8", "replace").strip()
        # a tag names a child folder (global_step1000), never `.`, `..` or a path elsewhere
        if tag and tag not in (".", "..") and os.sep not in tag and "/" not in tag \
                and os.path.isdir(os.path.join(path, tag)):
            f, how = resolve_path(os.path.join(path, tag), depth + 1, optimizer)
            return f, f"DeepSpeed `latest` -> {tag}/{how}"
    steps = sorted(glob.glob(os.path.join(path, "global_step*")), key=lambda p: int(re.sub(r"\D", "", p[-12:]) or 0))
    candidates = ["mp_rank_00_model_states.pt", "optimizer.pt", "optimizer.bin",
                  os.path.join("optimizer", "optimizer.pt")]
    for c in candidates:
        if os.path.lexists(os.path.join(path, c)) and not os.path.isdir(os.path.join(path, c)):
            check_regular(os.path.join(path, c))
            others = _more_optimizers(path, c)
            if others:  # Accelerate saves one file per prepared optimizer (UNet and text encoder, say)
                files = [c, *others]
                if not 0 <= optimizer < len(files):
                    raise StateLoadError(f"{path}: --optimizer {optimizer}, but the folder holds {len(files)} "
                                         f"optimizers ({', '.join(files)})")
                return os.path.join(path, files[optimizer]), (f"{files[optimizer]} (optimizer {optimizer} of "
                                                              f"{len(files)}: {', '.join(files)}; --optimizer N "
                                                              "picks another)")
            if optimizer:
                raise StateLoadError(f"{path}: --optimizer {optimizer}, but the folder holds one optimizer")
            return os.path.join(path, c), c
    zero = sorted(glob.glob(os.path.join(path, "*optim_states.pt")))
    if zero:
        return zero[0], os.path.basename(zero[0]) + (f" (1 of {len(zero)} ZeRO partitions)" if len(zero) > 1 else "")
    if steps:
        f, how = resolve_path(steps[-1], depth + 1, optimizer)
        return f, f"{os.path.basename(steps[-1])}/{how}"
    runs = sorted((d for d in glob.glob(os.path.join(path, "checkpoint-*")) if os.path.isdir(d)
                   and re.fullmatch(r"checkpoint-\d+", os.path.basename(d))),
                  key=lambda d: int(os.path.basename(d).split("-")[1]))
    if runs:  # a run's output folder (HF Trainer, Accelerate, kohya): its latest checkpoint by number
        f, how = resolve_path(runs[-1], depth + 1, optimizer)
        return f, f"{os.path.basename(runs[-1])} (the latest of {len(runs)} checkpoint folders)/{how}"
    found = sorted(glob.glob(os.path.join(path, "*.pt")) + glob.glob(os.path.join(path, "*.safetensors")))
    if len(found) == 1:
        return found[0], os.path.basename(found[0])
    raise StateLoadError(f"{path}: no optimizer file found in this folder (looked for latest, global_step*/, "
                         "checkpoint-N/, mp_rank_00_model_states.pt, *optim_states.pt, optimizer.pt, optimizer.bin)")
