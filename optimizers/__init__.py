"""optinspect's pure-PyTorch re-implementations of the diffusion trainer's optimizers.

Import paths and class names are the trainer's (`optimizers.scorn.SCORN`, `optimizers.adafactor.EnhancedAdafactor`,
...), so this package is a drop-in. `OPTINSPECT_BUNDLED` marks it: a trainer's own `optimizers/` folder earlier
on `sys.path` shadows it, and optinspect checks this marker to tell the two apart.
"""

from __future__ import annotations

OPTINSPECT_BUNDLED = True

# type name (lower-cased, as the trainer matches it) -> (module, class)
CLASSES = {
    "adafactor": ("optimizers.adafactor", "EnhancedAdafactor"),
    "scorn": ("optimizers.scorn", "SCORN"),
    "remaster": ("optimizers.remaster", "REMASTER"),
    "persona": ("optimizers.persona", "PersonaOptimizer"),
    "adamw8bitkahan": ("optimizers.adamw_8bit", "AdamW8bitKahan"),
    "prodigy": ("optimizers.prodigy", "Prodigy"),
}

__all__ = ["EnhancedAdafactor", "SCORN", "REMASTER", "PersonaOptimizer", "AdamW8bitKahan", "Prodigy", "CLASSES"]


def __getattr__(name: str):
    for module, cls in CLASSES.values():
        if cls == name:
            import importlib

            return getattr(importlib.import_module(module), cls)
    raise AttributeError(f"module 'optimizers' has no attribute {name!r}")
