"""Minority oversampling for images: how many per class (imbalanced-learn's own ``sampling_strategy``), compact
descriptors, and each image's nearest same-class neighbours.

The interpolation itself happens in pixel space, at full resolution (``mixing.smote_interpolate``); neighbours are
found on 16x16 thumbnails decoded at reduced scale, about a hundred times cheaper than on full pixels.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from augexpand.errors import RecipeError

__all__ = ["OVERSAMPLERS", "descriptor", "image_descriptor", "nearest_neighbours", "oversample_counts"]

# Which imbalanced-learn sampler each method's counts follow (both use "over-sampling" semantics).
OVERSAMPLERS = {"smote": "SMOTE", "random": "RandomOverSampler"}

DESCRIPTOR_SIDE = 16


def oversample_counts(class_counts: dict[str, int], sampling_strategy: Any) -> dict[str, int]:
    """How many synthetic images each class gets: exactly ``imblearn.utils.check_sampling_strategy``'s answer
    for these class counts (class names are the labels, so a dict strategy is keyed by class name)."""
    from imblearn.utils import check_sampling_strategy

    y = np.repeat(np.array(list(class_counts), dtype=object), list(class_counts.values()))
    strategy = dict(sampling_strategy) if isinstance(sampling_strategy, dict) else sampling_strategy
    if isinstance(strategy, dict):
        unknown = sorted(set(strategy) - set(class_counts))
        if unknown:
            raise RecipeError(f"oversample.sampling_strategy names class {unknown[0]!r}, which is not in the "
                              f"source (classes: {', '.join(class_counts)})")
    try:
        counts = check_sampling_strategy(strategy, y, "over-sampling")
    except ValueError as exc:
        raise RecipeError(f"oversample.sampling_strategy {sampling_strategy!r}: {exc}") from None
    return {name: int(counts.get(name, 0)) for name in class_counts}


def descriptor(image: np.ndarray) -> np.ndarray:
    """A compact image descriptor: a 16x16 RGB thumbnail (area-averaged), as float32 in [0, 1]."""
    import cv2

    thumb = cv2.resize(image, (DESCRIPTOR_SIDE, DESCRIPTOR_SIDE), interpolation=cv2.INTER_AREA)
    return thumb.astype(np.float32).reshape(-1) / 255.0


def image_descriptor(path: Path) -> np.ndarray | None:
    """The descriptor of an image file, decoded at reduced scale; None if it cannot be decoded."""
    from augexpand.errors import ImageReadError
    from augexpand.folder import decode_image

    try:
        image = decode_image(path, reduced=4)
    except ImageReadError:
        return None
    return descriptor(image)


def nearest_neighbours(descriptors: np.ndarray, k: int) -> np.ndarray:
    """For each row, the indices of its ``min(k, n - 1)`` nearest other rows (Euclidean), nearest first.

    A single image is its own only neighbour (its synthetic images are then copies of it).
    """
    n = len(descriptors)
    if n == 1:
        return np.zeros((1, 1), dtype=np.int64)
    from sklearn.neighbors import NearestNeighbors

    k = min(k, n - 1)
    index = NearestNeighbors(n_neighbors=k + 1).fit(descriptors)
    _, found = index.kneighbors(descriptors)
    # Drop each row itself (it is usually first, but duplicates can tie with it).
    out = np.empty((n, k), dtype=np.int64)
    for i, row in enumerate(found):
        others = [j for j in row if j != i]
        out[i] = others[:k]
    return out


def class_descriptors(paths: Sequence[Path], imap: Callable[[Callable, Iterable], Iterable]) -> list[np.ndarray | None]:
    """Descriptors of many files through ``imap`` (a pool's ordered imap, or the builtin map)."""
    return list(imap(image_descriptor, paths))
