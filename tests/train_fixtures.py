"""Helpers for the training tests: tiny real-image datasets (scikit-learn's handwritten digits) on disk."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

__all__ = ["TINY", "digits", "tiny_run", "write_digits", "write_expanded"]

# Options that keep a training test to about a second on 2 CPU cores: 16 px, a narrow CNN, no worker processes.
TINY = {"size": 16, "model": "smallcnn", "width": 8, "workers": 0, "progress": False, "batch_size": 16,
        "flip": False, "warmup_epochs": 0.0}


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images * (255 / 16)).astype(np.uint8), d.target


def digits(label: int, n: int, offset: int = 0, size: int = 16) -> list[np.ndarray]:
    """``n`` real 8x8 handwritten digits of class ``label`` (from the ``offset``-th on), upscaled to RGB size x size."""
    images, target = _digits()
    picked = images[target == label][offset:offset + n]
    return [np.repeat(cv2.resize(im, (size, size), interpolation=cv2.INTER_CUBIC)[..., None], 3, 2) for im in picked]


def write_digits(root: Path, classes: tuple[int, ...] = (0, 1, 2), n: int = 8, offset: int = 0,
                 size: int = 16, ext: str = ".png") -> Path:
    """An ImageFolder ``root/d<k>/<i>.png`` of real digits."""
    for c in classes:
        (root / f"d{c}").mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(digits(c, n, offset, size)):
            cv2.imwrite(str(root / f"d{c}" / f"{c}_{offset + i}{ext}"), image[..., ::-1])
    return root


def write_expanded(dst: Path, classes: tuple[int, ...] = (0, 1, 2), n: int = 8, mixed: int = 4,
                   with_val: bool = True, size: int = 16) -> Path:
    """A dataset laid out as ``augexpand expand`` writes it: train/ with metadata.jsonl (one-hot originals plus
    ``mixed`` mixup images with soft labels), val/ of other digits, and dataset.json."""
    names = [f"d{c}" for c in classes]
    train = write_digits(dst / "train", classes, n, 0, size)
    records = []
    for k, c in enumerate(classes):
        for i in range(n):
            records.append({"file_name": f"d{c}/{c}_{i}.png", "label": f"d{c}",
                            "soft_label": [float(j == k) for j in range(len(classes))], "op": "original",
                            "sources": [f"d{c}/{c}_{i}.png"]})
    rng = np.random.default_rng(0)
    for m in range(mixed):
        a, b = rng.choice(len(classes), 2, replace=False)
        lam = float(rng.uniform(0.55, 0.9))
        ia, ib = digits(classes[a], 1, m, size)[0], digits(classes[b], 1, m + 1, size)[0]
        image = (lam * ia + (1 - lam) * ib).round().astype(np.uint8)
        name = f"d{classes[a]}/{classes[a]}_{m}__mixup_{m}.png"
        cv2.imwrite(str(train / name), image[..., ::-1])
        soft = [0.0] * len(classes)
        soft[a], soft[b] = lam, 1 - lam
        records.append({"file_name": name, "label": names[a], "soft_label": soft, "op": "mixup", "lam": lam,
                        "sources": [f"d{classes[a]}/x.png", f"d{classes[b]}/y.png"]})
    (train / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    if with_val:
        write_digits(dst / "val", classes, 6, 40, size)
    (dst / "dataset.json").write_text(json.dumps({"tool": "augexpand", "classes": names}), encoding="utf-8")
    return dst


def tiny_run(root: Path, options: list[str], *, n: int, mixed: int, epochs: int,
             test_n: int) -> tuple[Path, Path, Path]:
    """(dataset, run, test folder): ``augexpand train`` run for ``epochs`` on a write_expanded dataset of ``n``
    digits a class and ``mixed`` mixup images, and a test folder of ``test_n`` other digits a class."""
    from click.testing import CliRunner

    from augexpand.cli import cli

    dst = write_expanded(root / "dst", classes=(0, 1, 2), n=n, mixed=mixed)
    run = root / "run"
    result = CliRunner().invoke(cli, ["train", str(dst), "-o", str(run), "--epochs", str(epochs), *options, "-q"])
    assert result.exit_code == 0, result.output
    return dst, run, write_digits(root / "test", classes=(0, 1, 2), n=test_n, offset=60)
