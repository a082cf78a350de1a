"""Sample-mixing methods: SamplePairing, mixup, CutMix, RICAP, and SMOTE's pixel interpolation.

The pixel and label mathematics are pure functions on uint8 RGB arrays of equal shape that never change their
inputs. ``MIXERS`` registers each method by the name a recipe uses; a mixer draws its parameters from the row's
generator and returns the mixed image, its soft label and the parameters to record in metadata.jsonl.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

__all__ = [
    "MIXERS",
    "Mixer",
    "blend",
    "cutmix",
    "cutmix_box",
    "mixup",
    "ricap",
    "ricap_boundary",
    "sample_pairing",
    "smote_interpolate",
    "soft_label",
]


def blend(a: np.ndarray, b: np.ndarray, weight_a: float) -> np.ndarray:
    """``weight_a * a + (1 - weight_a) * b``, rounded to the nearest integer (a convex blend stays in range).

    OpenCV's addWeighted: 10x faster than the same expression in numpy float32.
    """
    if a.shape != b.shape:
        raise ValueError(f"images to blend must have the same shape, got {a.shape} and {b.shape}")
    return cv2.addWeighted(a, float(weight_a), b, 1.0 - float(weight_a), 0.0)


def mixup(a: np.ndarray, b: np.ndarray, lam: float) -> np.ndarray:
    """mixup's image: ``lam * a + (1 - lam) * b``."""
    return blend(a, b, lam)


def sample_pairing(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """SamplePairing's image: the pixel average of ``a`` and ``b`` (its label is ``a``'s alone)."""
    return blend(a, b, 0.5)


def smote_interpolate(a: np.ndarray, b: np.ndarray, gap: float) -> np.ndarray:
    """SMOTE's synthetic sample in pixel space: ``a + gap * (b - a)``, with ``gap`` in [0, 1]."""
    return blend(a, b, 1.0 - gap)


def cutmix_box(height: int, width: int, lam: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A box covering about ``1 - lam`` of the image, centred uniformly and clipped to it (as timm's rand_bbox).

    Returns (y0, y1, x0, x1); the clipped area can be smaller than asked, so labels use the exact area.
    """
    ratio = np.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
    y0, y1 = int(np.clip(cy - cut_h // 2, 0, height)), int(np.clip(cy + cut_h // 2, 0, height))
    x0, x1 = int(np.clip(cx - cut_w // 2, 0, width)), int(np.clip(cx + cut_w // 2, 0, width))
    return y0, y1, x0, x1


def cutmix(a: np.ndarray, b: np.ndarray, box: tuple[int, int, int, int]) -> tuple[np.ndarray, float]:
    """Paste ``b[box]`` into a copy of ``a``. Returns the image and ``lam``: the exact share of ``a`` left."""
    if a.shape != b.shape:
        raise ValueError(f"images to cut-mix must have the same shape, got {a.shape} and {b.shape}")
    y0, y1, x0, x1 = box
    out = a.copy()
    out[y0:y1, x0:x1] = b[y0:y1, x0:x1]
    return out, 1.0 - (y1 - y0) * (x1 - x0) / float(a.shape[0] * a.shape[1])


def ricap_boundary(height: int, width: int, beta: float, rng: np.random.Generator) -> tuple[int, int]:
    """RICAP's boundary point (h, w): each coordinate ~ Beta(beta, beta) of the side, rounded."""
    return int(round(height * rng.beta(beta, beta))), int(round(width * rng.beta(beta, beta)))


def ricap(images: list[np.ndarray], boundary: tuple[int, int],
          rng: np.random.Generator) -> tuple[np.ndarray, list[float], list[tuple[int, int]]]:
    """Tile four crops around ``boundary``: top-left from images[0], top-right [1], bottom-left [2], bottom-right [3].

    Each crop is taken at a uniformly drawn position inside its image. Returns the image, the four area shares
    (summing to 1) and the crops' (y, x) offsets in their source images.
    """
    if len(images) != 4:
        raise ValueError(f"RICAP takes 4 images, got {len(images)}")
    height, width = images[0].shape[:2]
    if any(im.shape != images[0].shape for im in images):
        raise ValueError("RICAP images must have the same shape")
    bh, bw = boundary
    sizes = [(bh, bw), (bh, width - bw), (height - bh, bw), (height - bh, width - bw)]
    places = [(0, 0), (0, bw), (bh, 0), (bh, bw)]
    out = np.empty_like(images[0])
    offsets = []
    for image, (h, w), (py, px) in zip(images, sizes, places):
        y = int(rng.integers(0, height - h + 1))
        x = int(rng.integers(0, width - w + 1))
        out[py:py + h, px:px + w] = image[y:y + h, x:x + w]
        offsets.append((y, x))
    areas = [h * w / float(height * width) for h, w in sizes]
    return out, areas, offsets


def soft_label(labels: list[int], weights: list[float], n_classes: int) -> list[float]:
    """A soft label: the weights of the inputs summed per class, in class order."""
    target = np.zeros(n_classes, dtype=np.float64)
    for label, weight in zip(labels, weights):
        target[label] += weight
    total = target.sum()
    return (target / total).tolist()


# --------------------------------------------------------------------------------------------------------------
# Registry: what a recipe's `mix:` names run


MixResult = tuple[np.ndarray, list[float], dict[str, Any]]


@dataclass(frozen=True)
class Mixer:
    """A mixing method: how many images it takes, and how it mixes them with parameters drawn from ``rng``."""

    n_inputs: int
    mix: Callable[[list[np.ndarray], list[int], int, Any, np.random.Generator], MixResult]


def _samplepairing(images, labels, n_classes, spec, rng) -> MixResult:
    return sample_pairing(images[0], images[1]), soft_label(labels[:1], [1.0], n_classes), {"lam": 0.5}


def _mixup(images, labels, n_classes, spec, rng) -> MixResult:
    lam = float(rng.beta(spec.alpha, spec.alpha))
    return mixup(images[0], images[1], lam), soft_label(labels, [lam, 1.0 - lam], n_classes), {"lam": lam}


def _cutmix(images, labels, n_classes, spec, rng) -> MixResult:
    drawn = float(rng.beta(spec.alpha, spec.alpha))
    box = cutmix_box(images[0].shape[0], images[0].shape[1], drawn, rng)
    image, lam = cutmix(images[0], images[1], box)
    params = {"lam": lam, "lam_drawn": drawn, "box": list(box)}
    return image, soft_label(labels, [lam, 1.0 - lam], n_classes), params


def _ricap(images, labels, n_classes, spec, rng) -> MixResult:
    boundary = ricap_boundary(images[0].shape[0], images[0].shape[1], spec.beta, rng)
    image, areas, offsets = ricap(images, boundary, rng)
    params = {"lam": areas[0], "areas": areas, "boundary": list(boundary), "offsets": [list(o) for o in offsets]}
    return image, soft_label(labels, areas, n_classes), params


MIXERS: dict[str, Mixer] = {
    "samplepairing": Mixer(2, _samplepairing),
    "mixup": Mixer(2, _mixup),
    "cutmix": Mixer(2, _cutmix),
    "ricap": Mixer(4, _ricap),
}
