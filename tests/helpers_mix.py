"""Shared helpers for the mixing, oversampling, preview and inspect tests: real photos at tiny sizes, written as
lossless PNG ImageFolders whose images already have the output size (so no resizing is involved)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import cv2
import numpy as np

from augexpand.folder import decode_image
from augexpand.manifest import read_metadata

__all__ = ["NO_PIPELINE", "crops", "decoded", "params_of", "photo", "png_folder", "records"]

# A recipe fragment: no single-image transforms, lossless output at the sources' own size.
NO_PIPELINE = {"pipeline": [], "copies": 0, "keep_originals": False, "output": {"size": 32, "format": "png"}}


@cache
def photo(name: str) -> np.ndarray:
    """A scikit-image photo (astronaut, coffee, chelsea, rocket, ...) at 160 px on its long side."""
    from skimage import data

    image = getattr(data, name)()
    h, w = image.shape[:2]
    scale = 160 / max(h, w)
    return cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)


def crops(name: str, n: int, seed: int, size: int = 32) -> list[np.ndarray]:
    """``n`` different square crops of a photo, resized to ``size`` x ``size``."""
    image = photo(name)
    rng = np.random.default_rng(seed)
    h, w = image.shape[:2]
    out = []
    for _ in range(n):
        side = int(min(h, w) * rng.uniform(0.4, 0.9))
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        out.append(cv2.resize(image[y:y + side, x:x + side], (size, size), interpolation=cv2.INTER_AREA))
    return out


def png_folder(root: Path, classes: dict[str, tuple[str, int]], size: int = 32) -> Path:
    """An ImageFolder of PNG crops: ``{"cat": ("chelsea", 5), ...}`` gives cat/cat_0.png ... cat_4.png."""
    for k, (name, (source, n)) in enumerate(sorted(classes.items())):
        (root / name).mkdir(parents=True, exist_ok=True)
        for j, image in enumerate(crops(source, n, seed=k + 11, size=size)):
            cv2.imwrite(str(root / name / f"{name}_{j}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return root


def records(dst: Path, split: str = "train") -> list[dict]:
    return read_metadata(dst / split / "metadata.jsonl")


def decoded(root: Path, rel: str) -> np.ndarray:
    return decode_image(root / rel).astype(np.int32)


def params_of(record: dict) -> dict:
    """A record's parameters: ``lam`` and the JSON object in ``params``."""
    return {"lam": record["lam"], **json.loads(record["params"])}
