"""optinspect: check diffusion-trainer optimizer configs, run the bundled optimizers, inspect saved state.

Importing this package is cheap: torch is imported only by what needs it (build_optimizer, state, dry-run).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:  # lazy: `optinspect.build_optimizer` imports torch only when used
    if name in ("build_optimizer", "InvalidConfig"):
        from optinspect import build

        return getattr(build, name)
    raise AttributeError(f"module 'optinspect' has no attribute {name!r}")
