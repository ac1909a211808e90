"""optinspect's pure-PyTorch re-implementations of the diffusion trainer's optimizers.

Installed, they live here, inside `optinspect` (`optinspect.optimizers.scorn.SCORN`): a package must never put a
generic top-level name such as `optimizers` into site-packages, where it would take precedence over a trainer's own
`optimizers/` folder (a namespace package in diffusion-pipe) and silently change the code a training run imports.

The repository's top-level `optimizers` folder is this same folder, kept as the drop-in for a trainer checkout: the
modules import each other only relatively, so copied over a trainer's `optimizers/` files they work there under
the trainer's import paths and class names (`optimizers.scorn.SCORN`, `optimizers.adafactor.EnhancedAdafactor`, ...).
"""

from __future__ import annotations

import importlib

# type name (lower-cased, as the trainer matches it) -> (module inside this package, class)
CLASSES = {
    "adafactor": ("adafactor", "EnhancedAdafactor"),
    "scorn": ("scorn", "SCORN"),
    "remaster": ("remaster", "REMASTER"),
    "persona": ("persona", "PersonaOptimizer"),
    "adamw8bitkahan": ("adamw_8bit", "AdamW8bitKahan"),
    "prodigy": ("prodigy", "Prodigy"),
}

__all__ = ["EnhancedAdafactor", "SCORN", "REMASTER", "PersonaOptimizer", "AdamW8bitKahan", "Prodigy", "CLASSES",
           "load_class"]


def load_class(type_key: str) -> type:
    """The class for a lower-cased type name, imported from this package wherever it sits (installed or copied)."""
    module, cls = CLASSES[type_key]
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)


def __getattr__(name: str):
    for key, (_module, cls) in CLASSES.items():
        if cls == name:
            return load_class(key)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
