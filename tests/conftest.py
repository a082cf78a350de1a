"""Shared fixtures: small ImageFolders of real photos (scikit-image, scikit-learn), clean and deliberately messy."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two uint8 images, in dB (99 when identical)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


@contextlib.contextmanager
def jpeg_decodes():
    """The shapes of the images simplejpeg decodes in this process while the block runs (a list, filled as it goes)."""
    import simplejpeg

    shapes, decode = [], simplejpeg.decode_jpeg

    def recording(*args, **kwargs):
        image = decode(*args, **kwargs)
        shapes.append(image.shape)
        return image

    simplejpeg.decode_jpeg = recording
    try:
        yield shapes
    finally:
        simplejpeg.decode_jpeg = decode


def _resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="session")
def photos() -> dict[str, np.ndarray]:
    """Real RGB photos that ship with scikit-image and scikit-learn, at about 160 px."""
    from skimage import data
    from sklearn.datasets import load_sample_images

    china, flower = load_sample_images().images
    raw = {"astronaut": data.astronaut(), "coffee": data.coffee(), "chelsea": data.chelsea(),
           "rocket": data.rocket(), "china": china, "flower": flower}
    out = {}
    for name, image in raw.items():
        h, w = image.shape[:2]
        scale = 160 / max(h, w)
        out[name] = _resize(image, round(w * scale), round(h * scale))
    return out


def crops(photo: np.ndarray, n: int, seed: int, size: tuple[int, int] = (48, 40)) -> list[np.ndarray]:
    """``n`` different crops of a photo, resized to (width, height)."""
    rng = np.random.default_rng(seed)
    h, w = photo.shape[:2]
    out = []
    for _ in range(n):
        ch, cw = int(h * rng.uniform(0.5, 0.9)), int(w * rng.uniform(0.5, 0.9))
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        out.append(_resize(photo[y:y + ch, x:x + cw], *size))
    return out


def save_rgb(path: Path, image: np.ndarray, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, **kwargs)
    return path


@pytest.fixture
def small_src(tmp_path: Path, photos) -> Path:
    """A clean, imbalanced ImageFolder of real photo crops: cat 5, coffee 3, rocket 2 (48x40 JPEGs)."""
    root = tmp_path / "src"
    for name, photo, n in (("cat", "chelsea", 5), ("coffee", "coffee", 3), ("rocket", "rocket", 2)):
        for k, image in enumerate(crops(photos[photo], n, seed=len(name))):
            save_rgb(root / name / f"{name}_{k}.jpg", image, quality=92)
    return root


MESSY_BAD = {
    "cat/empty.jpg": "empty file",
    "cat/half.jpg": "truncated JPEG",
    "coffee/fake.png": "not an image",
    "broken/only.jpg": "truncated",
    "root.jpg": "outside any class folder",
}


@pytest.fixture
def messy_src(tmp_path: Path, photos) -> Path:
    """A real-world mess: nested folders, odd extensions, every colour mode, EXIF rotation, bad files.

    Readable: cat 4 (one EXIF-rotated, one nested two levels deep with an upper-case extension),
    coffee 8 (grayscale, RGBA, palette, 16-bit, CMYK, TIFF, WebP, BMP), rocket 2.
    Skipped (MESSY_BAD): a zero-byte file, two truncated JPEGs, a text file named .png, an image at the root.
    Ignored: notes.txt, .DS_Store, a hidden folder. The class `broken` has no readable image.
    """
    root = tmp_path / "messy"
    cat = crops(photos["chelsea"], 4, seed=1, size=(56, 40))
    save_rgb(root / "cat" / "a.jpg", cat[0], quality=90)
    save_rgb(root / "cat" / "sub" / "deeper" / "IMG_1.JPG", cat[1], quality=90)
    rotated = Image.fromarray(cat[2])
    exif = rotated.getexif()
    exif[0x0112] = 6  # stored landscape, displayed rotated 90 degrees clockwise
    rotated.save(root / "cat" / "rotated.jpeg", quality=90, exif=exif.tobytes())
    save_rgb(root / "cat" / "d.png", cat[3])
    good = _jpeg_bytes(cat[0])
    (root / "cat" / "empty.jpg").write_bytes(b"")
    (root / "cat" / "half.jpg").write_bytes(good[: len(good) // 2])
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "cat" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    save_rgb(root / "cat" / ".thumbs" / "hidden.jpg", cat[0])

    cof = crops(photos["coffee"], 8, seed=2, size=(48, 40))
    (root / "coffee").mkdir()
    Image.fromarray(cof[0]).convert("L").save(root / "coffee" / "gray.jpg")
    rgba = np.dstack([cof[1], np.full(cof[1].shape[:2], 128, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(root / "coffee" / "rgba.png")
    Image.fromarray(cof[2]).convert("P").save(root / "coffee" / "palette.png")
    gray16 = (cv2.cvtColor(cof[3], cv2.COLOR_RGB2GRAY).astype(np.uint16) * 257)
    Image.fromarray(gray16).save(root / "coffee" / "deep16.png")
    Image.fromarray(cof[4]).convert("CMYK").save(root / "coffee" / "cmyk.jpg", quality=95)
    save_rgb(root / "coffee" / "scan.TIF", cof[5])
    save_rgb(root / "coffee" / "web.webp", cof[6], quality=90)
    save_rgb(root / "coffee" / "old.bmp", cof[7])
    (root / "coffee" / "fake.png").write_bytes(b"this is text, not a PNG")

    for k, image in enumerate(crops(photos["rocket"], 2, seed=3)):
        save_rgb(root / "rocket" / f"r{k}.jpg", image, quality=90)
    (root / "broken").mkdir()
    (root / "broken" / "only.jpg").write_bytes(good[:300])
    save_rgb(root / "root.jpg", cat[0])
    return root


def _jpeg_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file below root (hidden ones too), by relative path."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def tiny_recipe(tmp_path: Path) -> Path:
    """A fast recipe for tests: crop to 32x32, flip, colour; two copies; mixup; PNG output."""
    path = tmp_path / "tiny.yaml"
    path.write_text(
        "seed: 7\n"
        "copies: 2\n"
        "pipeline:\n"
        "  - RandomResizedCrop: {size: [32, 32], scale: [0.5, 1.0]}\n"
        "  - HorizontalFlip: {p: 0.5}\n"
        "  - RandomBrightnessContrast: {p: 0.5}\n"
        "mix:\n"
        "  mixup: {alpha: 0.4, count: 1}\n"
        "  cutmix: {count: 0.5}\n"
        "output: {size: 32, format: png}\n"
    )
    return path
