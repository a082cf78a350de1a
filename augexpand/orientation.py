"""Orientation: whether a recipe may mirror and turn the images, decided from the data when it says ``auto``.

A recipe's ``orientation`` is ``free`` (the pipeline as written), ``keep`` (``strip_orientation``: no flip,
transpose, 90-degree turn or D4 symmetry, rotations and shears within ``UPRIGHT_ANGLE`` degrees, and an upright
policy) or ``auto``: decided at plan time from the training source images (``decide_orientation``).

The test behind ``auto`` asks whether a mirror image still looks like its class. Each image (at most
``MAX_IMAGES`` of them, a seeded sample) becomes a small descriptor: a 16x16 grey thumbnail (JPEGs decoded at
reduced scale), described by histograms of gradient orientation in 4x4 cells (HOG-like: tolerant of small shifts,
but a mirror turns a stroke's slant the other way), each feature standardised. A leave-one-out 1-nearest-neighbour
classifier then names the class of each original against the other originals, and of each *mirrored* original
against the other (unmirrored) originals. Digits and text lose most of their accuracy when mirrored (5-shot
digits: 80 % to 20 %); photos keep it (a photo class holds left- and right-facing instances). Orientation is kept
when the drop is clear: significant in a paired test (McNemar: images right as they are but wrong mirrored, b,
against the reverse, c: ``b - c >= Z * sqrt(b + c)``) and large (mirrored accuracy at most ``1 - MIN_DROP`` of
the original's). With too few images to tell (fewer than ``MIN_IMAGES`` in classes of two or more, or an original
accuracy not clearly above chance) orientation is kept: a recipe without flips never makes a label wrong, while a
flip on digits or text does (docs/orientation.md has the measurements behind these choices).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["MAX_IMAGES", "ORIENTATIONS", "UPRIGHT_ANGLE", "OrientationDecision", "decide_from_files",
           "decide_orientation", "describe", "evidence", "needs_decision", "orientation_note", "resolve_orientation",
           "strip_orientation", "thumbnail"]

ORIENTATIONS = ("auto", "free", "keep")
UPRIGHT_ANGLE = 10.0  # degrees: the largest rotation and shear that `keep` leaves
# The test looks at this many training images at most (a seeded sample): a clear verdict either way, and for
# 12-megapixel photos without an EXIF thumbnail, whose decodes the rows reuse, within what is kept (114 of 128 MB).
MAX_IMAGES = 200
MIN_IMAGES = 10  # fewer images in classes of two or more: too few to tell (orientation kept)
THUMB_SIDE = 16
CELLS = 4  # 4x4 cells of 4x4 pixels
BINS = 8  # unsigned gradient orientations (0..180 degrees)
Z = 2.5  # McNemar's statistic needed (one-sided p < 0.01)
MIN_DROP = 0.2  # and mirrored accuracy at most 80 % of the original's

# What `keep` removes (mirrors and quarter turns) and which parameters it clamps (rotations and shears).
MIRRORS = ("HorizontalFlip", "VerticalFlip", "Transpose", "RandomRotate90", "D4", "SquareSymmetry")
ROTATION_KEYS = {"Affine": ("rotate", "shear"), "Rotate": ("limit",), "SafeRotate": ("limit", "rotate", "shear"),
                 "ShiftScaleRotate": ("rotate_limit", "rotate", "shear")}
SYMMETRIC_LIMITS = ("limit", "rotate_limit")  # a number v is the range [-v, v] (Affine's rotate and shear: v itself)
DEFAULT_LIMITS = {"Rotate": "limit", "SafeRotate": "limit", "ShiftScaleRotate": "rotate_limit"}  # default > 10
SELECTING = ("OneOf", "SomeOf", "RandomOrder", "OneOrOther")  # a removed child becomes a NoOp: odds unchanged


# --------------------------------------------------------------------------------------------------------------
# keep: the pipeline without mirrors and large turns


def _clamp(value: Any, symmetric: bool) -> Any:
    """A rotation or shear parameter clamped to +-UPRIGHT_ANGLE: a number, a [low, high] range or an {x:, y:}
    mapping of either (a number under a ``limit`` key means [-v, v])."""
    a = UPRIGHT_ANGLE
    if isinstance(value, dict):
        return {k: _clamp(v, False) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [min(a, max(-a, float(v))) if isinstance(v, (int, float)) and not isinstance(v, bool) else v
                for v in value]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return min(a, abs(float(value))) if symmetric else min(a, max(-a, float(value)))
    return value


def _upright_params(name: str, params: dict[str, Any], compact: bool) -> dict[str, Any]:
    params = dict(params)
    for key in ROTATION_KEYS.get(name, ()):
        if key in params and params[key] is not None:
            params[key] = _clamp(params[key], key in SYMMETRIC_LIMITS)
    if compact and name in DEFAULT_LIMITS and DEFAULT_LIMITS[name] not in params:
        params[DEFAULT_LIMITS[name]] = [-UPRIGHT_ANGLE, UPRIGHT_ANGLE]  # their defaults turn by 45 or 90 degrees
    return params


def _strip_compact(items: list, selecting: bool) -> list:
    out = []
    for item in items:
        name, params = (item, {}) if isinstance(item, str) else next(iter(item.items())) \
            if isinstance(item, dict) and len(item) == 1 else (None, None)
        if name is None:  # not a transform entry: left for the recipe's own validation to name
            out.append(item)
            continue
        params = params if isinstance(params, dict) else ({} if params is None else params)
        if name in MIRRORS:
            if selecting:
                p = params.get("p") if isinstance(params, dict) else None
                out.append({"NoOp": {} if p is None else {"p": p}})
            continue
        if isinstance(params, dict) and isinstance(params.get("transforms"), list):
            inner = _strip_compact(params["transforms"], name in SELECTING)
            if not inner or all(_is_noop(t) for t in inner):
                continue
            out.append({name: {**params, "transforms": inner}})
        elif isinstance(params, dict):
            out.append({name: _upright_params(name, params, True)} if name in ROTATION_KEYS else item)
        else:
            out.append(item)
    return out


def _is_noop(item: Any) -> bool:
    if isinstance(item, str):
        return item == "NoOp"
    if isinstance(item, dict):
        if "__class_fullname__" in item:
            return str(item["__class_fullname__"]).rsplit(".", 1)[-1] == "NoOp"
        return len(item) == 1 and next(iter(item)) == "NoOp"
    return False


def _strip_serialized(node: dict[str, Any], selecting: bool) -> dict[str, Any] | None:
    name = str(node.get("__class_fullname__", "")).rsplit(".", 1)[-1]
    if name in MIRRORS:
        return {"__class_fullname__": "NoOp", "p": node.get("p", 0.5)} if selecting else None
    node = dict(node)
    if isinstance(node.get("transforms"), list):
        inner = [t for t in (_strip_serialized(t, name in SELECTING) if isinstance(t, dict) else t
                             for t in node["transforms"]) if t is not None]
        if name != "Compose" and (not inner or all(_is_noop(t) for t in inner)):
            return None
        node["transforms"] = inner
        return node
    return _upright_params(name, node, False) if name in ROTATION_KEYS else node


def strip_orientation(pipeline: Any) -> Any:
    """The pipeline (compact list or albumentations' serialized form) with nothing that mirrors the image or
    turns it by more than UPRIGHT_ANGLE degrees, at any depth of OneOf/SomeOf/Sequential.

    HorizontalFlip, VerticalFlip, Transpose, RandomRotate90, D4 and SquareSymmetry are removed (inside a OneOf,
    SomeOf or OneOrOther they become a NoOp of the same ``p``, so the others keep their odds; a OneOf left with
    nothing else is removed); Affine's ``rotate`` and ``shear``, Rotate's and SafeRotate's ``limit`` and
    ShiftScaleRotate's ``rotate_limit`` are clamped to +-UPRIGHT_ANGLE (where left out, the last three default to
    +-45 or +-90 degrees: they are set to +-10). Everything else is returned as it was; the input is not changed.
    """
    if isinstance(pipeline, list):
        return _strip_compact(pipeline, False)
    if isinstance(pipeline, dict):
        if "transform" in pipeline and isinstance(pipeline["transform"], dict):
            return {**pipeline, "transform": _strip_serialized(pipeline["transform"], False)}
        if "__class_fullname__" in pipeline:
            stripped = _strip_serialized(pipeline, False)
            return stripped if stripped is not None else {"__class_fullname__": "Compose", "p": 1.0,
                                                          "transforms": []}
    return pipeline


# --------------------------------------------------------------------------------------------------------------
# auto: the test on the training images


def thumbnail(path: Path | str, reduced: int = 1, size: tuple[int, int] | None = None) -> np.ndarray | None:
    """A THUMB_SIDE x THUMB_SIDE grey thumbnail (float32) of an image file, decoded at 1/``reduced`` scale
    (JPEG); None when it cannot be decoded. A photo large enough to decode at 1/8 (``size``: its upright width and
    height) is read from the thumbnail its EXIF block carries, when it has one of the photo's shape: camera files
    do, and it saves a decode of 20 ms for 12 megapixels (as much as the photo's own decode for a 224 output)."""
    return _thumbnail_task((str(path), reduced, size, False))[0]


def _grey(image: np.ndarray) -> np.ndarray:
    import cv2

    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    return cv2.resize(grey, (THUMB_SIDE, THUMB_SIDE), interpolation=cv2.INTER_AREA).astype(np.float32)


def _thumbnail_task(item: tuple[str, int, tuple[int, int] | None, bool]) -> tuple[np.ndarray | None, Any]:
    """(thumbnail, decoded image or None) of (path, reduced, size, keep): ``keep`` returns the image decoded at
    1/``reduced`` with its thumbnail, for the rows to use (when the EXIF thumbnail serves the test, nothing is
    decoded and nothing is returned). The thumbnail is the same either way."""
    from augexpand.errors import ImageReadError
    from augexpand.folder import _open_regular, decode_image, exif_thumbnail

    path, reduced, size, keep = item
    try:
        if reduced == 8 and size is not None:
            f, _ = _open_regular(Path(path))
            with f:
                head = f.read(65536 + 4)
            small = exif_thumbnail(head, size[0], size[1], min_side=2 * THUMB_SIDE)
            if small is not None:
                return _grey(small), None
        image = decode_image(Path(path), reduced=reduced)
    except (ImageReadError, OSError):
        return None, None
    return _grey(image), (image if keep else None)


def describe(thumbs: np.ndarray) -> np.ndarray:
    """HOG-like descriptors of grey thumbnails, (n, side, side) -> (n, CELLS * CELLS * BINS) (one thumbnail:
    one descriptor): per cell of CELLS x CELLS, a histogram of unsigned gradient orientation in BINS bins
    (linearly interpolated between the two nearest), weighted by gradient magnitude (central differences, as
    OpenCV's Sobel with ksize=1, replicated border); each L2-normalised."""
    t = np.asarray(thumbs, np.float32)
    single = t.ndim == 2
    t = t[None] if single else t
    n, side = t.shape[0], t.shape[1]
    padded = np.pad(t, ((0, 0), (1, 1), (1, 1)), mode="reflect")  # OpenCV's default border (BORDER_REFLECT_101)
    gx = padded[:, 1:-1, 2:] - padded[:, 1:-1, :-2]
    gy = padded[:, 2:, 1:-1] - padded[:, :-2, 1:-1]
    magnitude = np.hypot(gx, gy)
    angle = (np.arctan2(gy, gx) % np.pi) / np.pi * BINS
    low = np.floor(angle)
    frac = angle - low
    low = low.astype(np.int64) % BINS
    high = (low + 1) % BINS
    cell = (np.arange(side) * CELLS // side)
    index = (cell[:, None] * CELLS + cell[None, :]) * BINS  # (side, side): first bin of each pixel's cell
    size = CELLS * CELLS * BINS
    offset = (np.arange(n) * size)[:, None, None]
    hist = np.bincount((offset + index + low).ravel(), (magnitude * (1 - frac)).ravel(), minlength=n * size)
    hist += np.bincount((offset + index + high).ravel(), (magnitude * frac).ravel(), minlength=n * size)
    hist = hist.reshape(n, size)
    hist /= np.linalg.norm(hist, axis=1, keepdims=True) + 1e-6
    hist = hist.astype(np.float32)
    return hist[0] if single else hist


@dataclass(frozen=True)
class OrientationDecision:
    """What the test found: ``keep`` orientation or not, the two accuracies, how many images it looked at, the
    paired counts (``lost``: right as they are, wrong mirrored; ``gained``: the reverse) and why."""

    keep: bool
    original: float | None
    mirrored: float | None
    images: int
    lost: int = 0
    gained: int = 0
    reason: str = ""

    def card(self, mode: str = "auto") -> dict[str, Any]:
        """As dataset.json and the summary record it."""
        return {"mode": mode, "keep": self.keep,
                "accuracy": {"original": _round(self.original), "mirrored": _round(self.mirrored)},
                "images": self.images, "lost": self.lost, "gained": self.gained, "reason": self.reason}


def _round(x: float | None) -> float | None:
    return None if x is None else round(float(x), 4)


def _nearest_labels(queries: np.ndarray, refs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The label of each query's nearest reference (squared Euclidean; the query's own index excluded)."""
    d = (queries * queries).sum(1)[:, None] + (refs * refs).sum(1)[None, :] - 2.0 * queries @ refs.T
    np.fill_diagonal(d, np.inf)
    return labels[np.argmin(d, axis=1)]


def decide_orientation(thumbs: Sequence[np.ndarray], labels: Sequence[int]) -> OrientationDecision:
    """The test on grey thumbnails and their class labels (module docstring): keep orientation or not."""
    labels = np.asarray(labels, np.int64)
    counts = np.bincount(labels) if len(labels) else np.zeros(0, np.int64)
    usable = counts[labels] >= 2 if len(labels) else np.zeros(0, bool)  # a class of one has no neighbour
    n = int(usable.sum())
    if n < MIN_IMAGES or int((counts >= 2).sum()) < 2:
        return OrientationDecision(True, None, None, n, reason=f"too few images to tell ({n} in classes of two "
                                   f"or more; at least {MIN_IMAGES} in two classes needed)")
    kept = np.stack([np.asarray(t, np.float32) for t, u in zip(thumbs, usable) if u])
    y = labels[usable]
    originals = describe(kept).astype(np.float64)
    mirrors = describe(kept[:, :, ::-1]).astype(np.float64)
    mean, std = originals.mean(0), originals.std(0) + 1e-6  # each feature standardised (the originals' statistics)
    originals, mirrors = (originals - mean) / std, (mirrors - mean) / std
    right = _nearest_labels(originals, originals, y) == y
    right_mirrored = _nearest_labels(mirrors, originals, y) == y
    original, mirrored = float(right.mean()), float(right_mirrored.mean())
    lost, gained = int((right & ~right_mirrored).sum()), int((~right & right_mirrored).sum())
    chance = float(np.bincount(y).max()) / n
    if original <= chance + 2.0 * math.sqrt(chance * (1.0 - chance) / n):
        return OrientationDecision(True, original, mirrored, n, lost, gained,
                                   f"the images are not recognisable enough to tell ({original:.0%} of them by "
                                   f"their nearest neighbour, chance {chance:.0%})")
    significant = lost - gained >= Z * math.sqrt(max(1, lost + gained))
    large = mirrored <= (1.0 - MIN_DROP) * original
    keep = significant and large
    return OrientationDecision(keep, original, mirrored, n, lost, gained,
                               "mirror images are recognised clearly less often" if keep else
                               "mirror images are recognised about as often")


def sample_indices(indices: Sequence[int], seed: int, limit: int = MAX_IMAGES) -> list[int]:
    """At most ``limit`` of ``indices``, a seeded sample in their order (the same for any number of workers)."""
    indices = list(indices)
    if len(indices) <= limit:
        return indices
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(seed) >> 32, 0x0E1E])
    return sorted(indices[i] for i in rng.choice(len(indices), limit, replace=False))


def _reduction(width: int, height: int) -> int:
    """The largest JPEG scale 1/r that leaves at least twice the thumbnail's side."""
    short = min(width, height)
    return next((r for r in (8, 4, 2) if short // r >= 2 * THUMB_SIDE), 1)


def decide_from_scan(scan: Any, indices: Sequence[int], seed: int,
                     imap: Callable[[Callable, Iterable], Iterable] = map,
                     kept: dict[int, np.ndarray] | None = None,
                     keep_scales: Callable[[list[int]], Sequence[int]] | None = None,
                     keep_bytes: int = 0) -> OrientationDecision:
    """The test on the sources ``indices`` of a scan (the training sources), at most MAX_IMAGES of them.

    ``kept``: a dict that receives, for sources sampled here whose thumbnail is decoded at the scale their rows
    will decode them at (``keep_scales(indices)``: those sources' scales; a camera photo made 224 px wide is
    decoded at 1/8 for both), that decoded image, up to ``keep_bytes`` in all, so that the rows do not decode it a
    second time. The thumbnails, and so the decision, are the same with or without. Only for a ``map`` in this
    process: the images come back through ``imap``."""
    from augexpand.folder import decoded_size

    chosen = sample_indices(indices, seed)
    budget = keep_bytes if kept is not None and keep_scales is not None else 0
    scales = keep_scales(chosen) if budget > 0 else [0] * len(chosen)  # of the sample only
    items = []
    for i, scale in zip(chosen, scales):
        s = scan.sources[i]
        reduced, keep = _reduction(s.width, s.height), False
        if budget > 0 and scale == reduced:
            h, w = decoded_size(s.width, s.height, reduced)
            need = 3 * h * w
            keep = need <= budget
            budget -= need if keep else 0
        items.append((str(scan.root / s.rel), reduced, (s.width, s.height), keep))
    results = list(imap(_thumbnail_task, items))
    if kept is not None:
        kept.update((i, image) for i, (_, image) in zip(chosen, results) if image is not None)
    ok = [k for k, (t, _) in enumerate(results) if t is not None]
    return decide_orientation([results[k][0] for k in ok], [scan.sources[chosen[k]].label for k in ok])


def decide_from_files(paths: Sequence[Path], labels: Sequence[int], seed: int) -> OrientationDecision:
    """The test on image files and their labels (an ImageFolder made by someone else, say), at most MAX_IMAGES of
    them, a seeded sample; a file whose header or pixels do not read is left out."""
    from augexpand.errors import ImageReadError
    from augexpand.folder import pixel_limit, probe_image

    items, kept = [], []
    limit = pixel_limit()
    for i in sample_indices(range(len(paths)), seed):
        try:
            _, width, height, _ = probe_image(Path(paths[i]), max_pixels=limit)
        except ImageReadError:
            continue
        items.append((str(paths[i]), _reduction(width, height), (width, height), False))
        kept.append(int(labels[i]))
    thumbs = [_thumbnail_task(item)[0] for item in items]
    return decide_orientation([t for t in thumbs if t is not None], [y for t, y in zip(thumbs, kept) if t is not None])


def needs_decision(recipe: Any) -> bool:
    """Whether the recipe's orientation (or its policy's) is ``auto``: decided from the images."""
    return recipe.orientation == "auto" or (recipe.policy is not None and recipe.policy.keep_orientation == "auto")


def resolve_orientation(recipe: Any, scan: Any = None, val_fraction: float = 0.0,
                        imap: Callable[[Callable, Iterable], Iterable] = map,
                        **keep: Any) -> tuple[Any, dict[str, Any]]:
    """The recipe with its orientation made concrete, and what the summary and dataset.json record.

    ``orientation: auto`` (or a policy's ``keep_orientation: auto``) is decided from the training sources of
    ``scan`` (those make_plan keeps with this ``val_fraction`` and the recipe's seed). Kept orientation strips the
    pipeline (``strip_orientation``) and makes the policy upright; the resolved recipe says ``keep`` or ``free``.
    Without a scan, ``auto`` stays as it is. Resolving twice is harmless. ``keep``: ``kept``, ``keep_scales`` and
    ``keep_bytes`` of ``decide_from_scan``."""
    from augexpand.recipe import Recipe

    mode = recipe.orientation
    decision = None
    if needs_decision(recipe):
        if scan is None:
            return recipe, {"mode": "auto", "keep": None}
        from augexpand.plan import _split_val

        train, _ = _split_val(scan, val_fraction, recipe.seed)
        decision = decide_from_scan(scan, train, recipe.seed, imap, **keep)
    keep_all = mode == "keep" or (mode == "auto" and decision is not None and decision.keep)
    data = recipe.model_dump()
    data["pipeline"] = strip_orientation(recipe.pipeline) if keep_all else recipe.pipeline
    data["orientation"] = "keep" if keep_all else "free"
    if recipe.policy is not None:
        written = recipe.policy.keep_orientation
        data["policy"]["keep_orientation"] = bool(keep_all or written is True or (
            written == "auto" and decision is not None and decision.keep))
    resolved = Recipe.model_validate({**data, "source": recipe.source})
    info = decision.card("auto") if decision is not None and mode == "auto" else {"mode": mode, "keep": keep_all}
    if decision is not None and mode != "auto":  # only the policy followed the data
        info["policy"] = decision.card("auto")
    return resolved, info


def orientation_note(info: dict[str, Any]) -> str | None:
    """One line for the summary: what ``orientation: auto`` decided, and on what evidence."""
    if info.get("mode") != "auto" or info.get("keep") is None:
        return None
    verdict, effect = ("kept", "no flips, rotations within 10 deg") if info["keep"] else \
        ("free", "flips and rotations as the recipe says")
    return f"orientation: {verdict} - {evidence(info)}: {effect}"


def evidence(info: dict[str, Any]) -> str:
    """What a decision (``OrientationDecision.card()``) rests on, in words: the two accuracies, or why there are
    none to go by."""
    acc = info.get("accuracy") or {}
    if acc.get("original") is None or acc.get("mirrored") is None or "not recognisable" in info.get("reason", ""):
        return info.get("reason", "")
    return (f"mirrored images are recognised {acc['mirrored']:.0%} of the time vs {acc['original']:.0%} as they "
            f"are ({info['images']} images)")
