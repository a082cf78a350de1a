"""augexpand: turn a small labelled ImageFolder into a larger, better one on disk, and fine-tune a CNN on it.

The Python API mirrors the CLI::

    from augexpand import expand, load_recipe
    summary = expand("src/", "dst/", recipe="heavy", seed=0, workers=4)

Heavy libraries (albumentations, OpenCV, imbalanced-learn, torch) are imported only when a function needs them.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["AugexpandError", "__version__", "expand", "load_recipe", "scan_image_folder"]

from augexpand.errors import AugexpandError


def __getattr__(name: str) -> Any:
    if name == "expand":
        from augexpand.expansion import expand

        return expand
    if name == "load_recipe":
        from augexpand.recipe import load_recipe

        return load_recipe
    if name == "scan_image_folder":
        from augexpand.folder import scan_image_folder

        return scan_image_folder
    raise AttributeError(f"module 'augexpand' has no attribute {name!r}")
