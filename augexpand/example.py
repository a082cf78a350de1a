"""The built-in example dataset: real photos in four imbalanced classes, shipped inside the package."""

from __future__ import annotations

import shutil
from pathlib import Path

from augexpand.errors import DestinationError
from augexpand.folder import unwritable

__all__ = ["example_dir", "write_example"]


def example_dir() -> Path:
    """The example ImageFolder inside the installed package (read it, never write to it)."""
    return Path(__file__).parent / "data" / "example"


def write_example(dst: str | Path) -> dict[str, int]:
    """Copy the example ImageFolder to ``dst`` (which must not exist or be empty). Returns images per class."""
    dst = Path(dst)
    if dst.exists() and not dst.is_dir():
        raise DestinationError(f"{dst} exists and is not a folder; choose a new folder for the example")
    if dst.exists() and any(dst.iterdir()):
        raise DestinationError(f"{dst} is not empty; choose a new folder for the example")
    counts = {}
    try:
        for folder in sorted(p for p in example_dir().iterdir() if p.is_dir()):
            (dst / folder.name).mkdir(parents=True, exist_ok=True)
            files = sorted(folder.glob("*.jpg"))
            for f in files:
                shutil.copyfile(f, dst / folder.name / f.name)
            counts[folder.name] = len(files)
    except OSError as exc:  # under a file, no permission, a full disk: one line
        raise unwritable(dst, exc) from None
    return counts
