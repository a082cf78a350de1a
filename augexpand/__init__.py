"""augexpand: turn a small labelled ImageFolder into a larger, better one on disk, and fine-tune a CNN on it.

The Python API mirrors the CLI::

    from augexpand import expand, plan_expansion
    plan = plan_expansion("src/", recipe="heavy", seed=0)           # scan and plan; nothing written
    summary = expand("src/", "dst/", recipe="heavy", seed=0, workers=4, on_progress=print)

Errors are ``AugexpandError`` subclasses (exported here). Heavy libraries (albumentations, OpenCV,
imbalanced-learn, torch, Ray) are imported only when a function needs them.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

from augexpand.errors import (
    AugexpandError,
    DestinationError,
    ExpandError,
    ImageReadError,
    RecipeError,
    SourceError,
    TrainingError,
)

__all__ = [
    "AugexpandError",
    "DestinationError",
    "ExpandError",
    "ExpansionPlan",
    "ImageReadError",
    "RecipeError",
    "SourceError",
    "TrainingError",
    "__version__",
    "expand",
    "load_recipe",
    "plan_expansion",
    "scan_image_folder",
]

# Imported on first use (``augexpand.expand``): where each public function lives.
_LAZY = {
    "expand": "augexpand.expansion",
    "plan_expansion": "augexpand.expansion",
    "ExpansionPlan": "augexpand.expansion",
    "load_recipe": "augexpand.recipe",
    "scan_image_folder": "augexpand.folder",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'augexpand' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function; no submodule is named like a function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
