"""The training data path: splits and soft labels, a decoded uint8 cache, and batches with random crop and flip.

A split is read through its ``metadata.jsonl`` when it has one (soft labels in class order), or as a plain
ImageFolder (one-hot labels). Before the first epoch every image is decoded once (OpenCV, in worker processes),
fitted to the training resolution and written to a memory-mapped ``.npy`` cache of uint8 pixels; every epoch then
gathers whole batches from that cache and applies a random translation and flip with OpenCV. Batches leave the
workers as uint8 NHWC tensors: conversion to float and normalisation happen on the device, not in the workers.
On a GPU with room for it, :class:`DeviceBatches` holds the whole cache in GPU memory and makes the same batches
there, with no workers.

Randomness is drawn per batch from (seed, epoch, batch index), so the batches are the same with any number of
workers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from augexpand.errors import ImageReadError, TrainingError

__all__ = [
    "MAX_CARD_BYTES",
    "MAX_CLASSES",
    "MAX_METADATA_LINE",
    "CachedBatches",
    "DeviceBatches",
    "EpochPlan",
    "FileBatches",
    "Split",
    "augment_batch",
    "augment_draws",
    "augment_indices",
    "batch_count",
    "batch_rng",
    "build_cache",
    "epoch_batches",
    "find_splits",
    "fit_image",
    "probe_resolution",
    "read_classes",
    "read_split",
    "source_resolution",
]

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
METADATA = "metadata.jsonl"
CARD = "dataset.json"
# At most this many classes (ImageNet's 1000): evaluate's confusion matrix, its JSON, text and chart grow with the
# square (at 2000 classes a 15-image evaluation took 33 s and 1 GB; a crafted 100 000-class head, 80 GB).
MAX_CLASSES = 1000
MAX_CARD_BYTES = 64 << 20  # a dataset.json past this is left aside (expand's cards are kilobytes to a few MB)
MAX_METADATA_LINE = 1 << 20  # one metadata.jsonl line (a soft label of 1000 classes is about 20 KB)


@dataclass
class Split:
    """The images of one split and their targets: ``targets[i]`` is a probability vector over ``classes``."""

    root: Path
    classes: list[str]
    files: list[str]  # POSIX paths relative to root
    targets: np.ndarray  # (N, C) float32, rows sum to 1
    ops: list[str] = field(default_factory=list)
    soft: bool = False  # whether any target is not one-hot (read from metadata)
    rows: np.ndarray | None = None  # row of each image in the decoded cache, when some files failed to decode
    prefix: str = ""  # the root as seen from the folder the user named ("train/", "val/" or ""), for names shown
    skipped: list[dict] = field(default_factory=list)  # files left out: {"file": shown name, "reason": ...}

    def __len__(self) -> int:
        return len(self.files)

    @property
    def labels(self) -> np.ndarray:
        """The hard label of each image: the argmax of its soft label."""
        return self.targets.argmax(1)

    def shown(self, name: str) -> str:
        """A file's name as messages and summaries show it: relative to the folder the user named (as expand
        names a source relative to src), a byte that is not UTF-8 as %XX."""
        from augexpand.folder import display_name

        return display_name(self.prefix + name)

    def subset(self, keep: np.ndarray, reasons: dict[int, str] | None = None) -> Split:
        """The images whose index is in ``keep`` (used to drop files that failed to decode); ``reasons`` (index:
        why) are the files left out, added to ``skipped``."""
        ops = [self.ops[i] for i in keep] if self.ops else []
        rows = keep if self.rows is None else self.rows[keep]
        skipped = self.skipped + [{"file": self.shown(self.files[i]), "reason": r}
                                  for i, r in sorted((reasons or {}).items())]
        return Split(self.root, self.classes, [self.files[i] for i in keep], self.targets[keep], ops, self.soft, rows,
                     self.prefix, skipped)


def unreadable_reason(path: Path, exc: ImageReadError) -> str:
    """Why a file could not be decoded, in the words ``expand`` uses: what its header shows (an empty file, a
    truncated JPEG, not an image: expand finds these when it scans), else the decoder's own reason."""
    from augexpand.folder import pixel_limit, probe_image

    try:
        probe_image(path, max_pixels=pixel_limit())
    except ImageReadError as header:
        return str(header)
    return str(exc)


def _class_dirs(root: Path) -> list[Path]:
    """The class folders, sorted, with the scanner's rule for links (``augexpand.folder``): a class folder that is
    a link to the folder itself (or above it), or into another class, is left out (it would relabel images)."""
    from augexpand.folder import _class_folders

    dirs, passed = _class_folders(root)
    for s in passed:
        log.warning("skipped %s: %s", s.rel, s.reason)
    return dirs


def _card(data: Path) -> dict | None:
    """``data/dataset.json`` as a dict, or None when there is none, or it is not a readable JSON object (only a
    regular file is read: a FIFO of that name would block for ever)."""
    from augexpand.folder import open_regular

    try:
        with open_regular(Path(data) / CARD) as f:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_CARD_BYTES:
                return None
            value = json.loads(f.read(size + 1).decode("utf-8"))  # read(MAX_CARD_BYTES + 1) allocated 64 MB
    except (OSError, ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def read_classes(data: Path, train_root: Path) -> list[str]:
    """The class names in order: ``dataset.json``'s ``classes`` if there is one, else the sorted class folders."""
    card = data / CARD
    if card.is_file():
        classes = (_card(data) or {}).get("classes")
        if (isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes)
                and len(set(classes)) == len(classes)):
            return list(classes)
        log.warning("%s has no usable 'classes' list (distinct names); using the class folders of %s", card,
                    train_root)
    return [p.name for p in _class_dirs(train_root)]


def find_splits(data: Path, val: Path | None = None) -> tuple[Path, Path | None, list[str]]:
    """Where the training and validation images are, and the class list.

    ``data`` is an expanded dataset (``data/train``, optional ``data/val``) or a plain ImageFolder. ``val``
    overrides ``data/val``. Returns (train root, val root or None, classes).
    """
    data = Path(data)
    if not data.exists():
        raise TrainingError(f"dataset folder {data} does not exist")
    if not data.is_dir():
        raise TrainingError(f"dataset {data} is not a folder")
    if (data / "train").is_dir():
        train_root = data / "train"
        default_val = data / "val" if (data / "val").is_dir() else None
        if (data / ".augexpand").is_dir() and not (train_root / METADATA).is_file():
            # an expansion that was stopped, or shards without the final --resume: part of the images, and the mixed
            # ones without their soft labels (their folder's label instead)
            raise TrainingError(f"{data} is an unfinished augexpand expand (no train/{METADATA} yet)",
                                hint="finish it first: the same `augexpand expand` command with --resume, "
                                     "without --shard")
    elif (data / "val").is_dir() or (data / "test").is_dir():
        raise TrainingError(f"{data} has no train/ split (it has {', '.join(p.name for p in _class_dirs(data))})",
                            hint="train on an `augexpand expand` output, or on an ImageFolder of class folders")
    elif _class_dirs(data):
        train_root, default_val = data, None
    else:
        raise TrainingError(f"{data} has neither a train/ split nor class folders",
                            hint=f"expected {data}/train/<class>/<image> or {data}/<class>/<image>")
    classes = read_classes(data, train_root)
    if not classes:
        raise TrainingError(f"no class folders in {train_root}")
    if len(classes) > MAX_CLASSES:
        raise TrainingError(f"{data} has {len(classes)} classes; a classifier here has at most {MAX_CLASSES}")
    if val is not None:
        val = Path(val)
        if not val.is_dir():
            raise TrainingError(f"validation folder {val} does not exist" if not val.exists()
                                else f"validation path {val} is not a folder")
        return train_root, val, classes
    return train_root, default_val, classes


def _walk_images(folder: Path, prefix: str = "") -> tuple[list[Path], list[dict]]:
    """The images below a class folder, with the scanner's safety rules (``augexpand.folder.walk_class``): only
    regular files, folder links only inside their class and without loops; what was passed over is named, and
    returned as ``{"file", "reason"}`` (the name with ``prefix``, as ``Split.shown``)."""
    from augexpand.folder import walk_class

    files, passed = walk_class(folder, folder.parent)
    for s in passed:
        log.warning("skipped %s: %s", prefix + s.rel, s.reason)
    return files, [{"file": prefix + s.rel, "reason": s.reason} for s in passed]


def _mismatch(where: Path, unknown: list[str], classes: list[str]) -> TrainingError:
    shown = ", ".join(repr(u) for u in unknown[:3]) + (" ..." if len(unknown) > 3 else "")
    return TrainingError(f"class mismatch: {where} has class(es) {shown} that the training set does not have "
                         f"(its classes: {', '.join(classes)})")


def _soft_vector(soft, classes: list[str], where: str) -> np.ndarray:
    """A metadata line's ``soft_label``, checked: as many finite, non-negative numbers as classes, summing to 1."""
    try:
        vector = np.asarray(soft, dtype=np.float64)
    except (ValueError, TypeError, OverflowError):
        vector = None
    if vector is None or vector.ndim != 1:
        raise TrainingError(f"{where}: soft_label must be a list of {len(classes)} numbers (one per class: "
                            f"{', '.join(classes)}), got {str(soft)[:80]}")
    if len(vector) != len(classes):
        raise TrainingError(f"{where}: soft_label has {vector.size} values, the dataset has "
                            f"{len(classes)} classes ({', '.join(classes)})")
    if not np.isfinite(vector).all() or (vector < 0).any() or abs(vector.sum() - 1) > 1e-3:
        raise TrainingError(f"{where}: soft_label must be non-negative and sum to 1, got {str(soft)[:80]}")
    return vector / vector.sum()


def _metadata_name(rec: dict, root: Path, where: str) -> str:
    """A metadata line's ``file_name``: a relative path that stays inside the split (as ``expand`` writes it)."""
    name = rec["file_name"]
    if not isinstance(name, str):
        raise TrainingError(f"{where}: file_name must be a relative path (a string), got {str(name)[:80]}")
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts:
        raise TrainingError(f"{where}: file_name must be a relative path inside {root}, got {name[:200]!r}")
    return name


def _listed_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte
        return False


def _read_metadata(root: Path, classes: list[str]) -> tuple[list[str], np.ndarray, list[str], bool]:
    path = root / METADATA
    index = {c: i for i, c in enumerate(classes)}
    files, targets, ops, missing, unknown = [], [], [], [], []
    first_line: dict[str, int] = {}  # a name listed twice trained on its image twice, with the later label too
    from augexpand.folder import open_regular

    try:
        f = open_regular(path)
    except OSError as exc:
        raise TrainingError(f"cannot read {path}: {exc.strerror or exc}") from None
    with f:
        for n, raw in enumerate(iter(lambda: f.readline(MAX_METADATA_LINE + 1), b""), 1):
            where = f"{path}, line {n}"
            if len(raw) > MAX_METADATA_LINE:
                raise TrainingError(f"{where}: longer than {MAX_METADATA_LINE >> 20} MB; not a metadata line")
            try:
                line = raw.decode("utf-8-sig" if n == 1 else "utf-8")
            except UnicodeDecodeError:
                raise TrainingError(f"{where}: not UTF-8 text") from None
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                rec["file_name"]
            except (ValueError, KeyError, TypeError, IndexError, RecursionError):
                raise TrainingError(f"{where}: expected a JSON object with 'file_name'") from None
            if not isinstance(rec, dict):
                raise TrainingError(f"{where}: expected a JSON object with 'file_name'")
            name = _metadata_name(rec, root, where)
            key = str(PurePosixPath(name))  # d0/./a.png and d0//a.png are d0/a.png
            if first_line.setdefault(key, n) != n:
                raise TrainingError(f"{where}: {name[:200]!r} is listed again (first on line {first_line[key]}); "
                                    "an image has one line")
            label = rec.get("label", name.split("/", 1)[0] if "/" in name else None)
            if label is not None and not isinstance(label, str):
                raise TrainingError(f"{where}: label must be a class name (a string), got {str(label)[:80]}")
            soft = rec.get("soft_label")
            if soft is not None:
                vector = _soft_vector(soft, classes, where)
            elif label in index:
                vector = np.zeros(len(classes))
                vector[index[label]] = 1.0
            else:
                unknown.append(str(label))
                continue
            if label is not None and label not in index:
                unknown.append(str(label))
                continue
            if not _listed_file(root / name):
                missing.append(name)
                continue
            files.append(name)
            targets.append(vector)
            ops.append(str(rec.get("op", "original")))
    if unknown:
        raise _mismatch(path, sorted(set(unknown)), classes)
    if missing:
        there, gone = [], []
        for name in missing:  # a FIFO, a device, a folder is there, not "missing" (lexists: False on any error)
            (there if os.path.lexists(root / name) else gone).append(name)
        if gone:
            raise TrainingError(f"{len(gone)} file(s) listed in {path} do not exist, e.g. {gone[0][:200]!r}")
        raise TrainingError(f"{len(there)} file(s) listed in {path} are not regular files (a FIFO, a device or a "
                            f"folder), e.g. {there[0][:200]!r}")
    array = np.asarray(targets, dtype=np.float32).reshape(len(files), len(classes))
    soft = bool(len(array)) and bool((array.max(1) < 1 - 1e-6).any())
    return files, array, ops, soft


def read_split(root: Path, classes: list[str], prefix: str = "") -> Split:
    """Read a split: through ``root/metadata.jsonl`` if present, else as an ImageFolder with one-hot labels.

    A class (in metadata or as a folder) that is not in ``classes`` is a class mismatch; a split with no image
    is an error; a class with no image is only a warning (validation sets are often incomplete). ``prefix`` is
    ``root`` as seen from the folder the user named (``train/``), for the names of files left out.
    """
    root = Path(root)
    skipped = []
    if (root / METADATA).is_file():
        files, targets, ops, soft = _read_metadata(root, classes)
    else:
        dirs = _class_dirs(root)
        unknown = [d.name for d in dirs if d.name not in classes]
        if unknown:
            raise _mismatch(root, unknown, classes)
        index = {c: i for i, c in enumerate(classes)}
        files, labels = [], []
        for d in dirs:
            paths, passed = _walk_images(d, prefix)
            skipped += passed
            for path in paths:
                files.append(path.relative_to(root).as_posix())
                labels.append(index[d.name])
        targets = np.zeros((len(files), len(classes)), dtype=np.float32)
        targets[np.arange(len(files)), np.asarray(labels, dtype=np.int64)] = 1.0
        ops, soft = ["original"] * len(files), False
    if not files:
        raise TrainingError(f"no images in {root}",
                            hint=f"expected {root}/<class>/<image> with {', '.join(sorted(IMAGE_EXTENSIONS))} files")
    split = Split(root, list(classes), files, targets, ops, soft, prefix=prefix, skipped=skipped)
    counts = np.bincount(split.labels, minlength=len(classes))
    empty = [c for c, k in zip(classes, counts) if k == 0]
    if empty:
        log.warning("%s has no image of class(es) %s", root, ", ".join(empty))
    return split


def source_resolution(data: Path) -> tuple[int, int] | None:
    """(median short side, number of images) of the sources an expanded dataset was made from, or None.

    Read from ``data/dataset.json``'s ``source_sizes`` (``{"count": N, "short_side": {"median": ...}}``, written
    by ``augexpand expand``); None for a plain ImageFolder, an older card, or a value that is not a positive number.
    """
    card = Path(data) / CARD
    try:
        sizes = (_card(data) or {})["source_sizes"]
        median, count = sizes["short_side"]["median"], sizes.get("count", 0)
    except (AttributeError, KeyError, TypeError):
        return None
    if median is None:  # no source image was measured
        return None
    if isinstance(median, bool) or not isinstance(median, (int, float)) or not 1 <= median < 1e6:
        log.warning("%s: source_sizes.short_side.median is %r, not a size; reading the training images instead",
                    card, median)
        return None
    return round(median), int(count) if isinstance(count, int) else 0


def orientation_kept(data: Path) -> bool | None:
    """Whether ``data/dataset.json`` says the expansion kept orientation (``orientation.keep``: its recipe had
    ``orientation: keep``, or ``auto`` found that mirror images do not look like their class); None when there is
    no card or it does not say."""
    orientation = (_card(data) or {}).get("orientation")
    keep = orientation.get("keep") if isinstance(orientation, dict) else None
    return keep if isinstance(keep, bool) else None


def readable(split: Split) -> Split:
    """The split without the files whose header says they cannot be used (not an image, truncated, over the pixel
    limit in force: a decompression bomb), each named in a warning. For reading files as they are (``--no-cache``,
    evaluate); the cache build drops what fails to decode by itself."""
    from augexpand.folder import pixel_limit, probe_image

    limit = pixel_limit()
    keep, reasons = [], {}
    for i, name in enumerate(split.files):
        try:
            probe_image(split.root / name, max_pixels=limit)
            keep.append(i)
        except ImageReadError as exc:
            reasons[i] = str(exc)
            log.warning("skipped %s: %s", split.shown(name), exc)
    if not keep:
        raise TrainingError(f"no readable image in {split.root}")
    return split if len(keep) == len(split) else split.subset(np.array(keep), reasons)


def probe_resolution(split: Split, samples: int = 200) -> int:
    """The median short side of (up to ``samples``, evenly spread) images of the split, read from headers (a file
    that is not a regular image, or whose header claims more pixels than the limit in force, is left out)."""
    from augexpand.folder import pixel_limit, probe_image

    idx = np.unique(np.linspace(0, len(split) - 1, min(samples, len(split))).astype(int))
    sides = []
    limit = pixel_limit()
    for i in idx:
        try:
            _, width, height, _ = probe_image(split.root / split.files[i], max_pixels=limit)
            sides.append(min(width, height))
        except ImageReadError as exc:  # reported again when the cache is built
            log.debug("cannot read the size of %s: %s", split.files[i], exc)
    if not sides:
        raise TrainingError(f"no readable image in {split.root}")
    return int(np.median(sides))


LINEAR_SHRINK = 0.75  # fit_image: bilinear down to this scale, area-averaging below


def fit_image(image: np.ndarray, size: int) -> np.ndarray:
    """Scale the short side to ``size`` and centre-crop to size x size.

    Bilinear (INTER_LINEAR) up and for a shrink to 3/4 or more, area-averaging (INTER_AREA) below: OpenCV's area
    resize takes 6x longer at a ratio such as 0.93 (0.8 ms at 320x240, more than the decode), and bilinear is
    within 46 dB (median, real photos) of it down to 3/4. The files are decoded at the JPEG scale that keeps
    ``size`` (``decode_image(min_side=...)``), so a photo's shrink left here is mostly under 2x.

    An image longer than 2:1 is first cut to its middle 2:1 (which holds the crop): scaled whole, a 1x999999 PNG
    (3 KB on disk) would take 12 GB at size 64.
    """
    import cv2

    h, w = image.shape[:2]
    keep = 2 * min(h, w)
    if max(h, w) > keep:
        y, x = max(0, (h - keep) // 2), max(0, (w - keep) // 2)
        image = image[y:y + keep, x:x + keep]
        h, w = image.shape[:2]
    scale = size / min(h, w)
    if (h, w) != (size, size) and scale != 1:
        nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
        image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA if scale < LINEAR_SHRINK else cv2.INTER_LINEAR)
        h, w = nh, nw
    y, x = (h - size) // 2, (w - size) // 2
    return np.ascontiguousarray(image[y:y + size, x:x + size])


def batch_rng(seed: int, epoch: int, batch: int) -> np.random.Generator:
    """The generator of one training batch's translations and flips, the same for every loader and device."""
    return np.random.default_rng([seed, epoch, batch, 0xA06])


def augment_draws(b: int, rng: np.random.Generator, flip: bool, pad: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The random translation (top and left corner of the crop in the padded image) and flip of each of ``b``
    images, in the order both batch paths draw them (so the CPU and the GPU path make the same batch)."""
    ys = rng.integers(0, 2 * pad + 1, size=b)
    xs = rng.integers(0, 2 * pad + 1, size=b)
    flips = rng.random(b) < 0.5 if flip else np.zeros(b, dtype=bool)
    return ys, xs, flips


def augment_batch(batch: np.ndarray, rng: np.random.Generator, flip: bool, pad: int) -> np.ndarray:
    """Random translation (reflect-pad by ``pad`` then crop back) and horizontal flip of an (B, S, S, 3) batch.

    Returns a new array; ``batch`` is not changed. Per image, OpenCV pads and flips (8x faster than ``np.pad``
    over the batch and a strided numpy flip at 224x224: about 5000 images/s per core).
    """
    import cv2

    b, s = batch.shape[0], batch.shape[1]
    out = np.empty_like(batch)
    ys, xs, flips = augment_draws(b, rng, flip, pad)
    for i in range(b):
        image = cv2.copyMakeBorder(batch[i], pad, pad, pad, pad, cv2.BORDER_REFLECT_101) if pad else batch[i]
        crop = image[ys[i]:ys[i] + s, xs[i]:xs[i] + s]
        if flips[i]:
            cv2.flip(crop, 1, dst=out[i])
        else:
            out[i] = crop
    return out


def augment_indices(b: int, s: int, rng: np.random.Generator, flip: bool,
                    pad: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`augment_batch` as a gather: source rows (B, S) and columns (B, S) of each output pixel.

    ``out[i, r, c] = batch[i, rows[i, r], cols[i, c]]`` is exactly what OpenCV's reflect-101 padding, the crop and
    the flip make, for the same generator state. This is the form a GPU applies to a whole batch in one indexing.
    """
    ys, xs, flips = augment_draws(b, rng, flip, pad)
    grid = np.arange(s)

    def reflect(i: np.ndarray) -> np.ndarray:  # BORDER_REFLECT_101: -1 -> 1, s -> s - 2
        i = np.abs(i)
        return np.where(i > s - 1, 2 * (s - 1) - i, i)

    rows = reflect(ys[:, None] - pad + grid)
    cols = reflect(xs[:, None] - pad + grid)
    cols[flips] = cols[flips, ::-1]
    return rows, cols


def batch_count(n: int, batch_size: int) -> int:
    """Batches per training epoch: a last partial batch is kept only if it holds at least half a batch."""
    if n <= batch_size:
        return 1
    full, rest = divmod(n, batch_size)
    return full + (1 if rest >= batch_size / 2 else 0)


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, shuffle: bool = True,
                  repeats: int = 1) -> list[np.ndarray]:
    """The index arrays of one epoch's batches: a permutation drawn from (seed, epoch), cut into batches.

    With ``repeats`` > 1 (a tiny training set) the epoch is that many passes over the images, each its own
    permutation (pass p > 0 drawn from (seed, epoch, p)), joined and then cut into batches.
    """
    if not shuffle:
        order = np.arange(n)
        return [order[i:i + batch_size] for i in range(0, n, batch_size)]
    passes = [np.random.default_rng([seed, epoch, 0x5EED]).permutation(n)]
    passes += [np.random.default_rng([seed, epoch, p, 0x5EED]).permutation(n) for p in range(1, repeats)]
    order = np.concatenate(passes)
    k = batch_count(len(order), batch_size)
    return [order[i * batch_size:(i + 1) * batch_size] for i in range(k)]


class EpochPlan:
    """A DataLoader sampler that yields (epoch, batch index, indices) for the current epoch (``set_epoch``)."""

    def __init__(self, n: int, batch_size: int, seed: int, shuffle: bool = True, repeats: int = 1) -> None:
        self.n, self.batch_size, self.seed, self.shuffle, self.repeats = n, batch_size, seed, shuffle, repeats
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[int, int, np.ndarray]]:
        batches = epoch_batches(self.n, self.batch_size, self.seed, self.epoch, self.shuffle, self.repeats)
        for b, idx in enumerate(batches):
            yield self.epoch, b, idx

    def __len__(self) -> int:
        if not self.shuffle:
            return math.ceil(self.n / self.batch_size)
        return batch_count(self.n * self.repeats, self.batch_size)


class _BatchSource:
    """Common part of the batch datasets: targets, augmentation settings, and the per-batch generator."""

    def __init__(self, targets: np.ndarray, size: int, seed: int, augment: bool, flip: bool, crop_pad: float):
        self.targets = np.ascontiguousarray(targets, dtype=np.float32)
        self.size, self.seed, self.augment, self.flip = size, seed, augment, flip
        self.pad = round(crop_pad * size) if augment else 0

    def _pixels(self, idx: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _failed(self, idx: np.ndarray) -> list[int]:
        """Positions in the last ``_pixels(idx)`` batch that could not be decoded (none from a cache)."""
        return []

    def __getitem__(self, item: tuple[int, int, np.ndarray]):
        import torch

        epoch, b, idx = item
        idx = np.sort(np.asarray(idx))  # sorted reads from the memory map; targets follow the same order
        pixels = self._pixels(idx)
        targets = self.targets[idx]
        failed = self._failed(idx)
        if failed:  # an all-zero target: no loss, and evaluate() leaves the image out
            targets = targets.copy()
            targets[failed] = 0.0
        if self.augment:
            rng = batch_rng(self.seed, epoch, b)
            pixels = augment_batch(pixels, rng, self.flip, self.pad)
        return torch.from_numpy(pixels), torch.from_numpy(targets)


class CachedBatches(_BatchSource):
    """Whole batches gathered from the uint8 cache (memory-mapped, opened lazily in each worker)."""

    def __init__(self, cache_path: Path, split: Split, size: int, seed: int = 0, augment: bool = True,
                 flip: bool = True, crop_pad: float = 0.125) -> None:
        super().__init__(split.targets, size, seed, augment, flip, crop_pad)
        self.cache_path = Path(cache_path)
        self.rows = split.rows
        self._cache: np.ndarray | None = None

    def _pixels(self, idx: np.ndarray) -> np.ndarray:
        if self._cache is None:
            self._cache = np.load(self.cache_path, mmap_mode="r")
        return self._cache[idx if self.rows is None else self.rows[idx]]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_cache": None}  # each worker maps the file itself


class DeviceBatches:
    """The whole uint8 cache held in the training device's memory: each batch is gathered and augmented there.

    A drop-in for the DataLoader over :class:`CachedBatches` (it iterates ``plan`` and yields ``(pixels,
    targets)``, already on ``device``), for a GPU: no worker processes, shared memory or pinned copies stand
    between the cache and the model, which otherwise cap a fast GPU at about half its speed. Batches are the
    same as the loader's: the same sorted indices, and :func:`augment_indices` draws what :func:`augment_batch`
    draws.
    """

    def __init__(self, cache_path: Path, split: Split, size: int, plan, device, seed: int = 0, augment: bool = True,
                 flip: bool = True, crop_pad: float = 0.125, chunk: int = 1024) -> None:
        import torch

        self.plan, self.device, self.size, self.seed, self.augment, self.flip = plan, device, size, seed, augment, flip
        self.pad = round(crop_pad * size) if augment else 0
        cache = np.load(cache_path, mmap_mode="r")
        rows = np.arange(len(split)) if split.rows is None else split.rows
        self.pixels = torch.empty((len(rows), size, size, 3), dtype=torch.uint8, device=device)
        for start in range(0, len(rows), chunk):  # a bounded host buffer at a time, not the whole cache
            part = np.ascontiguousarray(cache[rows[start:start + chunk]])
            self.pixels[start:start + len(part)].copy_(torch.from_numpy(part))
        self.targets = torch.from_numpy(np.ascontiguousarray(split.targets, dtype=np.float32)).to(device)

    @staticmethod
    def nbytes(split: Split, size: int) -> int:
        return len(split) * size * size * 3

    def __len__(self) -> int:
        return len(self.plan)

    def __iter__(self):
        import torch

        for epoch, b, idx in self.plan:
            idx = np.sort(np.asarray(idx))
            index = torch.from_numpy(idx).to(self.device, non_blocking=True)
            pixels = self.pixels.index_select(0, index)
            if self.augment:
                rng = batch_rng(self.seed, epoch, b)
                rows, cols = augment_indices(len(idx), self.size, rng, self.flip, self.pad)
                rows = torch.from_numpy(rows).to(self.device, non_blocking=True)
                cols = torch.from_numpy(cols).to(self.device, non_blocking=True)
                i = torch.arange(len(idx), device=self.device)
                pixels = pixels[i[:, None, None], rows[:, :, None], cols[:, None, :]]
            yield pixels, self.targets.index_select(0, index)


class FileBatches(_BatchSource):
    """Whole batches decoded from the image files on every access (``--no-cache``)."""

    def __init__(self, split: Split, size: int, seed: int = 0, augment: bool = True, flip: bool = True,
                 crop_pad: float = 0.125) -> None:
        super().__init__(split.targets, size, seed, augment, flip, crop_pad)
        self.root, self.files, self.prefix = split.root, split.files, split.prefix

    def _pixels(self, idx: np.ndarray) -> np.ndarray:
        from augexpand.folder import decode_image, display_name

        out = np.zeros((len(idx), self.size, self.size, 3), np.uint8)
        self._bad = []
        for j, i in enumerate(idx):
            try:
                out[j] = fit_image(decode_image(self.root / self.files[i], min_side=self.size), self.size)
            except ImageReadError as exc:  # its header passed readable(): the pixels do not decode
                log.warning("skipped %s: %s", display_name(self.prefix + self.files[i]), exc)
                self._bad.append(j)
        return out

    def _failed(self, idx: np.ndarray) -> list[int]:
        return self._bad


class _DecodeChunks:
    """Decode and fit chunks of files (for the cache); a failed decode is returned as its reason."""

    def __init__(self, root: Path, files: list[str], size: int, chunk: int) -> None:
        self.root, self.files, self.size, self.chunk = root, files, size, chunk

    def __len__(self) -> int:
        return math.ceil(len(self.files) / self.chunk)

    def __getitem__(self, c: int):
        from augexpand.folder import decode_image

        start = c * self.chunk
        stop = min(start + self.chunk, len(self.files))
        pixels = np.zeros((stop - start, self.size, self.size, 3), np.uint8)
        errors = {}
        for j, i in enumerate(range(start, stop)):
            try:
                pixels[j] = fit_image(decode_image(self.root / self.files[i], min_side=self.size), self.size)
            except ImageReadError as exc:
                errors[i] = unreadable_reason(self.root / self.files[i], exc)
        return start, pixels, errors


def _worker_init(_: int) -> None:
    import cv2

    cv2.setNumThreads(1)


def _fingerprint(split: Split, size: int) -> str:
    # names are the file system's bytes (a name that is not UTF-8 holds surrogates): encoded back as they were
    h = hashlib.sha1(f"{split.root.resolve()}|{size}|{len(split)}".encode("utf-8", "surrogateescape"))
    for name in split.files:
        try:
            st = (split.root / name).stat()
            stamp = f"{st.st_size}|{st.st_mtime_ns}"
        except OSError:  # gone (or unreadable) since the split was read: its decode fails and names it
            stamp = "gone"
        h.update(f"{name}|{stamp}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def _cache_holds(path: Path, n: int, size: int) -> bool:
    """Whether the .npy at ``path`` is a cache of ``n`` images of ``size`` (a damaged or replaced file is made
    again: np.load's ValueError was a traceback)."""
    try:
        array = np.load(path, mmap_mode="r")
    except (OSError, ValueError):
        return False
    return array.dtype == np.uint8 and array.shape == (n, size, size, 3)


def _allocate(path: Path) -> None:
    """Give the cache file its disk blocks before it is written through a memory map: a page that a full disk has
    no room for was a SIGBUS ('Bus error', the run gone without a word); a failed allocation is one error."""
    import errno

    fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # a file system that cannot say: written as before
            raise TrainingError(f"cannot write the decoded cache {path} ({os.fstat(fd).st_size / 1e6:,.0f} MB): "
                                f"{exc.strerror or exc}", hint="free some space, or choose another --out") from None
    finally:
        os.close(fd)


def build_cache(split: Split, size: int, path: Path, workers: int = 0, progress: bool = False,
                desc: str = "decode", warn: bool = True) -> tuple[Path, Split]:
    """Decode every image of ``split`` once into ``path`` (an .npy of uint8 (N, size, size, 3)).

    An existing cache of the same files (names, sizes, mtimes) and size is reused. Files that cannot be decoded
    are logged (``warn``; again when the cache is reused, as expand names them on every run) and left out:
    returns the cache path and the split restricted to the decoded images.
    """
    import torch
    from tqdm import tqdm

    path = Path(path)
    meta_path = path.with_suffix(".json")
    key = _fingerprint(split, size)
    if path.is_symlink() or (os.path.lexists(path) and not path.is_file()):  # it is written in place, not renamed:
        # through a link it would overwrite the file the link leads to (and read it as the cache); a FIFO is "not
        # seekable"
        raise TrainingError(f"cannot write the decoded cache {path}: it is a link or not a regular file; remove it "
                            f"(the cache is made again)")
    meta = None
    if path.is_file() and meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            meta = None
    if meta and meta.get("key") == key and meta.get("complete") and _cache_holds(path, len(split), size):
        failed = {int(k): v for k, v in meta.get("failed", {}).items()}
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        meta_path.unlink(missing_ok=True)
        array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(len(split), size, size, 3))
        try:
            _allocate(path)
        except TrainingError:
            del array
            path.unlink(missing_ok=True)
            raise
        chunks = _DecodeChunks(split.root, split.files, size, chunk=32)
        loader = torch.utils.data.DataLoader(chunks, batch_size=None, shuffle=False, num_workers=workers,
                                             worker_init_fn=_worker_init if workers else None)
        failed = {}
        with tqdm(total=len(split), desc=desc, unit="img", disable=not progress, leave=False) as bar:
            for start, pixels, errors in loader:
                array[start:start + len(pixels)] = pixels
                failed.update(errors)
                bar.update(len(pixels))
        array.flush()
        del array
        from augexpand.folder import write_atomic

        write_atomic(meta_path, json.dumps({"key": key, "size": size, "n": len(split), "complete": True,
                                            "failed": {str(k): v for k, v in failed.items()}}))
    if warn:  # on every run, as expand names them: when the cache is reused too
        for i, reason in sorted(failed.items()):
            log.warning("skipped %s: %s", split.shown(split.files[i]), reason)
    if failed:
        if len(failed) == len(split):
            raise TrainingError(f"no image in {split.root} could be decoded")
        # The cache keeps every row (failed ones stay black); the returned split says which rows it uses.
        return path, split.subset(np.array([i for i in range(len(split)) if i not in failed]), failed)
    return path, split
