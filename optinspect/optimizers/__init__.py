"""optinspect's pure-PyTorch re-implementations of the diffusion trainer's optimizers.

Installed, they live here, inside `optinspect` (`optinspect.optimizers.scorn.SCORN`): a package must never put a
generic top-level name such as `optimizers` into site-packages, where it would take precedence over a trainer's own
`optimizers/` folder (a namespace package in diffusion-pipe) and silently change the code a training run imports.

The repository's top-level `optimizers` folder is this same folder, kept as the drop-in for a trainer checkout: the
modules import each other only relatively (and nothing from optinspect), so copied over a trainer's `optimizers/`
files they work there under the trainer's import paths and class names (`optimizers.scorn.SCORN`,
`optimizers.adafactor.EnhancedAdafactor`, ...). Which type name builds which class is optinspect's registry's
business (`optinspect.specs`); this package only says where each class lives.
"""

from __future__ import annotations

import importlib

# class -> module inside this package; imported on first use, so importing the package stays cheap
MODULES = {
    "EnhancedAdafactor": "adafactor",
    "SCORN": "scorn",
    "REMASTER": "remaster",
    "PersonaOptimizer": "persona",
    "AdamW8bitKahan": "adamw_8bit",
    "Prodigy": "prodigy",
}

__all__ = [*MODULES, "MODULES"]


def __getattr__(name: str):
    if name in MODULES:
        return getattr(importlib.import_module(f"{__name__}.{MODULES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
