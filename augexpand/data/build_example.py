"""Build the built-in example dataset (run once by the maintainers; the JPEGs it writes ship in the package).

Real photos that ship with scikit-image and scikit-learn, cut into a few dozen small, varied crops in four
deliberately imbalanced classes: cat 14, coffee 10, rocket 6, flower 4.

    python -m augexpand.data.build_example   # needs scikit-image and scikit-learn (the dev extra)
"""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np

CLASSES = {"cat": 14, "coffee": 10, "rocket": 6, "flower": 4}
LONG_SIDE = 160


def _photos() -> dict[str, np.ndarray]:
    from skimage import data
    from sklearn.datasets import load_sample_images

    flower = load_sample_images().images[1]
    return {"cat": data.chelsea(), "coffee": data.coffee(), "rocket": data.rocket(), "flower": flower}


def build(out: Path, seed: int = 2026) -> None:
    rng = np.random.default_rng(seed)
    if out.exists():
        shutil.rmtree(out)
    for name, photo in _photos().items():
        folder = out / name
        folder.mkdir(parents=True)
        h, w = photo.shape[:2]
        for k in range(CLASSES[name]):
            side = int(min(h, w) * rng.uniform(0.5, 0.95))
            ch = side
            cw = min(w, int(side * rng.uniform(0.8, 1.4)))
            y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            crop = photo[y:y + ch, x:x + cw]
            scale = LONG_SIDE / max(crop.shape[:2])
            crop = cv2.resize(crop, (round(crop.shape[1] * scale), round(crop.shape[0] * scale)),
                              interpolation=cv2.INTER_AREA)
            cv2.imwrite(str(folder / f"{name}_{k:02d}.jpg"), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR),
                        [cv2.IMWRITE_JPEG_QUALITY, 88])


if __name__ == "__main__":
    build(Path(__file__).parent / "example")
