"""What `orientation: auto` decides on real datasets, and the evidence: the leave-one-out 1-nearest-neighbour
accuracy of the originals and of their mirror images (augexpand/orientation.py), per dataset and seed.

Datasets (all real images that ship with scikit-learn and scikit-image):

- digits k-shot: scikit-learn's handwritten digits, k per class, 8x8 upscaled (bicubic) to 32 px (and 16 px);
- digits long-tailed: 100, 60, 36, 22, 13, 8, 5, 3, 2, 2 images of the ten digits;
- example: augexpand's built-in example photos (crops of 4 photos, 34 images);
- bench photos: bench/_photos.py's photo classes (10 photos in 4 classes, random crops, flips and colour jitter);
- skimage patches: 30 unflipped, overlapping patches of each of 10 scikit-image photos, one class per photo;
- sklearn crops: 60 unflipped crops of each of scikit-learn's two sample images (china, flower).

Prints a Markdown table; the decision is the one `augexpand expand -r light` makes (plan_expansion, nothing is
written). About a minute on 2 cores.

    python bench/orientation.py [--seeds 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

LONG_TAIL = [100, 60, 36, 22, 13, 8, 5, 3, 2, 2]


def _write(root: Path, images: list[np.ndarray], labels: list[str], ext: str = "png") -> Path:
    for i, (image, label) in enumerate(zip(images, labels)):
        (root / label).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / label / f"{i:04d}.{ext}"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return root


def digits(root: Path, counts: list[int], seed: int, side: int = 32) -> Path:
    from sklearn.datasets import load_digits

    d = load_digits()
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for label, k in enumerate(counts):
        for i in rng.choice(np.flatnonzero(d.target == label), k, replace=False):
            grey = cv2.resize((d.images[i] / 16 * 255).astype(np.uint8), (side, side), interpolation=cv2.INTER_CUBIC)
            images.append(np.dstack([grey] * 3))
            labels.append(f"d{label}")
    return _write(root, images, labels)


def _crops(photo: np.ndarray, n: int, rng: np.random.Generator, low: int, high: int, side: int = 64) -> list:
    h, w = photo.shape[:2]
    out = []
    for _ in range(n):
        s = int(rng.integers(low, min(high, h, w)))
        y, x = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
        out.append(cv2.resize(photo[y:y + s, x:x + s], (side, side), interpolation=cv2.INTER_AREA))
    return out


def skimage_patches(root: Path, seed: int) -> Path:
    from skimage import data

    rng = np.random.default_rng(seed)
    names = ["astronaut", "chelsea", "coffee", "rocket", "camera", "brick", "grass", "gravel", "moon", "page"]
    images, labels = [], []
    for name in names:
        photo = getattr(data, name)()
        photo = np.dstack([photo] * 3) if photo.ndim == 2 else photo[..., :3]
        for crop in _crops(photo, 30, rng, 64, min(photo.shape[:2]) // 2):
            images.append(crop)
            labels.append(name)
    return _write(root, images, labels, "jpg")


def sklearn_crops(root: Path, seed: int) -> Path:
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    sample = load_sample_images()
    images, labels = [], []
    for name, photo in zip(sample.filenames, sample.images):
        for crop in _crops(photo, 60, rng, 48, 200):
            images.append(crop)
            labels.append(Path(name).stem)
    return _write(root, images, labels, "jpg")


def bench_photos(root: Path, seed: int) -> Path:
    from _photos import make_image_folder

    return make_image_folder(root, 200, size=(160, 120), seed=seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    from augexpand.example import example_dir
    from augexpand.expansion import plan_expansion

    sets = [("digits 5-shot, 32 px", lambda r, s: digits(r, [5] * 10, s)),
            ("digits 5-shot, 16 px", lambda r, s: digits(r, [5] * 10, s, side=16)),
            ("digits 2-shot, 32 px", lambda r, s: digits(r, [2] * 10, s)),
            ("digits 1-shot, 32 px", lambda r, s: digits(r, [1] * 10, s)),
            ("digits long-tailed (100..2)", lambda r, s: digits(r, LONG_TAIL, s)),
            ("example photos (34)", lambda r, s: example_dir()),
            ("bench photos (200, 4 classes)", bench_photos),
            ("sklearn crops (2 x 60)", sklearn_crops),
            ("skimage patches (10 x 30)", skimage_patches)]
    print("| dataset | seed | images | original | mirrored | lost / gained | decision | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="orientation-") as tmp:
        for k, (name, make) in enumerate(sets):
            seeds = [0] if name.startswith("example") else range(args.seeds)
            for seed in seeds:
                src = make(Path(tmp) / f"{k}_{seed}", seed)
                start = time.perf_counter()
                o = plan_expansion(src, "light", workers=1).orientation
                took = time.perf_counter() - start
                acc = o["accuracy"]
                fmt = (lambda x: "-" if x is None else f"{x:.2f}")
                decision = "keep" if o["keep"] else "free"
                if acc["original"] is None or "not recognisable" in o["reason"]:
                    decision += " (undecidable)"
                print(f"| {name} | {seed} | {o['images']} | {fmt(acc['original'])} | {fmt(acc['mirrored'])} | "
                      f"{o['lost']} / {o['gained']} | {decision} | {took:.2f} |", flush=True)


if __name__ == "__main__":
    main()
