"""How small each source may be decoded: JPEGs at 1/2, 1/4 or 1/8 of their size when the output does not need more.

libjpeg-turbo decodes a JPEG at a fraction of its size in the DCT domain, 2-4x faster than a full decode on camera
photos; the result is an area-like average of the full image. The scale of each source is decided in the parent
before any pixel is decoded, from the source's header size (after EXIF orientation) and the recipe's resolved output
size, so it is the same for any number of workers, and ``dataset.json`` records it.

The rule: decode at the largest scale (8, 4, 2, else 1) at which no output pixel is interpolated from fewer than one
decoded pixel (``MIN_PIXELS_PER_OUTPUT_PIXEL``) in the worst case of every way the recipe uses a source:

- written at the output size (originals, SMOTE inputs, mixing inputs without their own pipeline): both sides of the
  decoded image at least the output's;
- through a pipeline that starts with a resizing transform (``RandomResizedCrop``, ``Resize``, ``SmallestMaxSize``,
  ``LongestMaxSize``, applied always), after only flips and colour transforms: that transform's smallest crop or
  target at least its output (a ``RandomResizedCrop`` with scale (0.35, 1) and the default aspect ratios keeps
  sqrt(0.35 / (4/3)) of the side: a 4032x3024 photo decodes at 1/4 for 224x224, at 1/8 with scale (0.5, 1));
- any other pipeline (a transform with sizes in pixels before any resize, blur, noise, ``OneOf`` first), a native
  output size (``output.size: null``) or a non-JPEG source: full size, so that nothing changes meaning.

Measured on 9 real photos (scikit-image, scikit-learn) x 8 crops x scales 1/2, 1/4, 1/8, JPEG q92 4:2:0, crops
resized with the bilinear interpolation the pipeline uses (``bench/quality_decode.py``), against an area-averaged
resize of the full decode (the alias-free reference): where the decoded crop is exactly the output's size, the
scaled decode's output has a median PSNR of 49 dB and SSIM 0.998 (5th percentiles 41.7 dB, 0.994); from 1.1x to
2x the output, 35-51 dB against the full decode's own 28-30 dB (bilinear shrinking of a full-size decode aliases),
and no crop is closer to the reference from the full decode from 1.25x on. Below 1x the decoded crop is upsampled
and detail is lost: 31 dB at 0.75x (full decode 34), 28 dB at 0.5x. Hence one decoded pixel per output pixel.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from augexpand.folder import DECODE_SCALES, Source, decoded_size, largest_scale

__all__ = ["DECODE_SCALES", "MIN_PIXELS_PER_OUTPUT_PIXEL", "decode_scales", "decoded_sizes", "scale_counts",
           "source_need"]

MIN_PIXELS_PER_OUTPUT_PIXEL = 1.0  # decoded pixels per output pixel along each side, in the worst case

# Transforms that may come before the resize without pinning the scale: geometry that has no size in pixels,
# and per-pixel colour changes (they commute with shrinking, up to rounding).
SCALE_FREE = frozenset({
    "HorizontalFlip", "VerticalFlip", "Transpose", "RandomRotate90", "D4", "SquareSymmetry",
    "RandomBrightnessContrast", "ColorJitter", "HueSaturationValue", "RGBShift", "RandomGamma", "ToGray",
    "ChannelShuffle", "InvertImg", "ToSepia", "Solarize", "Posterize", "RandomToneCurve", "PlanckianJitter",
})

Need = Callable[[int, int], bool]  # (decoded height, width) -> enough pixels?


def _fits(out_h: float, out_w: float) -> Need:
    k = MIN_PIXELS_PER_OUTPUT_PIXEL
    return lambda h, w: h >= k * out_h and w >= k * out_w


def _random_resized_crop(t: Any) -> Need:
    """The smallest crop RandomResizedCrop may take (least area, most extreme aspect) keeps the output size."""
    out_h, out_w = t.size
    s_min, (r_min, r_max) = t.scale[0], t.ratio
    k = MIN_PIXELS_PER_OUTPUT_PIXEL

    def need(h: int, w: int) -> bool:
        area = s_min * h * w
        return math.sqrt(area / r_max) >= k * out_h and math.sqrt(area * r_min) >= k * out_w

    return need


def _resizer_need(t: Any) -> Need | None:
    name = type(t).__name__
    k = MIN_PIXELS_PER_OUTPUT_PIXEL
    if name == "RandomResizedCrop":
        return _random_resized_crop(t)
    if name == "Resize":
        return _fits(t.height, t.width)
    if name in ("SmallestMaxSize", "LongestMaxSize"):
        if getattr(t, "max_size_hw", None) is not None:
            mh, mw = t.max_size_hw
            return _fits(mh or 0, mw or 0)
        sizes = t.max_size if isinstance(t.max_size, (list, tuple)) else [t.max_size]
        side = max(sizes)
        if name == "SmallestMaxSize":
            return lambda h, w: min(h, w) >= k * side
        return lambda h, w: max(h, w) >= k * side
    return None


def _pipeline_need(recipe: Any, fit: Need | None) -> Need | None:
    """What the pipeline needs of its input: its first resize's need; ``fit`` when it has no transform that
    cares (only flips and colour: the output size is then reached by fit_to_size); None when it needs full size."""
    after = fit if getattr(recipe, "policy", None) is None else None  # a policy's shifts and crops are in pixels
    if not recipe.pipeline:
        return after
    from augexpand.recipe import build_pipeline

    try:
        compose = build_pipeline(_resolved_pipeline(recipe))
    except Exception:  # noqa: BLE001 -- `output` sizes that follow each image (native output): full size
        return None
    for t in compose.transforms:
        name = type(t).__name__
        if name in SCALE_FREE:
            continue
        need = _resizer_need(t) if getattr(t, "p", 0.0) >= 1.0 else None  # p < 1: sometimes the source itself
        return need
    return after


def _resolved_pipeline(recipe: Any) -> Any:
    """The pipeline with numbers for its `output` size references (already so in a resolved recipe)."""
    from augexpand.recipe import resolve_sizes

    return resolve_sizes(recipe.pipeline, recipe.output.size)


def source_need(recipe: Any) -> Need | None:
    """The pixels every source must keep for this recipe (a resolved recipe: ``output.size`` is concrete), as a
    predicate on the decoded (height, width); None when sources must be decoded at full size."""
    size = recipe.output.size
    if size is not None and not isinstance(size, tuple):  # `auto` not resolved against the sources: no basis
        return None
    fit = _fits(*size) if size is not None else None
    needs: list[Need | None] = []
    if recipe.keep_originals:
        needs.append(fit)
    augment = _pipeline_need(recipe, fit)
    if recipe.copies or recipe.target_per_class:
        needs.append(augment)
    if recipe.oversample is not None:  # SMOTE fits both images to the output size before anything else
        smote = recipe.oversample.method == "smote"
        needs.append(augment if recipe.oversample.augment and not smote else fit)
    for spec in recipe.mix.enabled().values():
        needs.append(augment if spec.augment_inputs else fit)
    if any(n is None for n in needs):
        return None
    real = [n for n in needs if n is not None]
    return lambda h, w: all(n(h, w) for n in real)


def decode_scales(sources: Sequence[Source], recipe: Any) -> list[int]:
    """Each source's decode scale (1, 2, 4 or 8) for this recipe: a pure function of the headers and the recipe."""
    need = source_need(recipe)
    if need is None:
        return [1] * len(sources)
    out = []
    for s in sources:
        out.append(largest_scale(s.width, s.height, need) if s.format == "JPEG" else 1)
    return out


def decoded_sizes(sources: Sequence[Source], scales: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """Each source's (height, width) once decoded at its scale."""
    return tuple(decoded_size(s.width, s.height, r) for s, r in zip(sources, scales))


def scale_counts(scales: Sequence[int]) -> dict[str, int]:
    """How many sources decode at each scale, for the card: {"1": 3, "4": 57}."""
    counts: dict[str, int] = {}
    for r in sorted(set(scales)):
        counts[str(r)] = sum(1 for s in scales if s == r)
    return counts
