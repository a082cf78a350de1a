"""Augmentation policies as data: TrivialAugment-Wide, RandAugment and AutoAugment, built from albumentations ops.

albumentations has none of the three, so each is a table here: ``OPS`` maps an op name (torchvision's names) to
the albumentations transform it builds, with fixed parameters, for one strength; ``POLICIES`` says which ops a
policy draws from and how. A strength ``s`` in [0, 1] becomes a value on the op's scale (``value = s * largest``),
signed ops are negated half of the time, and the transform is applied with p=1. Every draw (the op, its strength,
its sign, a sub-policy's probabilities, the flip) comes from the row's own generator, so a row's image does not
depend on which worker makes it.

With ``keep_orientation`` (the upright variants, for digits, text and other images with a handedness) there is
no flip, rotations stay within ``UPRIGHT_ROTATE`` degrees and shears within ``UPRIGHT_SHEAR`` degrees: the
largest value of those ops is capped, so their strengths still span the whole (smaller) range.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["AUTOAUGMENT_IMAGENET", "OPS", "POLICIES", "UPRIGHT_ROTATE", "UPRIGHT_SHEAR", "Op", "Policy",
           "PolicyDef", "make_policy"]

UPRIGHT_ROTATE = 10.0  # degrees: the largest rotation of an upright variant
UPRIGHT_SHEAR = 10.0  # degrees: the largest shear angle of an upright variant
MAGNITUDE_BINS = 30  # RandAugment's and TrivialAugment's magnitude scale is 0..30 (torchvision's 31 bins)


def _affine(**params: Any):
    from augexpand.recipe import import_albumentations

    return import_albumentations().Affine(**params, fill=0, border_mode=0, p=1.0)  # cv2.BORDER_CONSTANT, black


def _shear(axis: str) -> Callable[[float], Any]:
    def build(v: float):
        angle = math.degrees(math.atan(v))  # torchvision: shear factor v is an angle of atan(v)
        return _affine(shear={"x": (angle, angle) if axis == "x" else (0.0, 0.0),
                              "y": (angle, angle) if axis == "y" else (0.0, 0.0)})
    return build


def _translate(axis: str) -> Callable[[float], Any]:
    def build(v: float):
        return _affine(translate_percent={"x": (v, v) if axis == "x" else (0.0, 0.0),
                                          "y": (v, v) if axis == "y" else (0.0, 0.0)})
    return build


def _jitter(which: str) -> Callable[[float], Any]:
    def build(v: float):
        from augexpand.recipe import import_albumentations

        factors = {"brightness": (1.0, 1.0), "contrast": (1.0, 1.0), "saturation": (1.0, 1.0)}
        factors[which] = (1.0 + v, 1.0 + v)  # torchvision's adjust_<which>(img, 1 + v)
        return import_albumentations().ColorJitter(**factors, hue=(0.0, 0.0), p=1.0)
    return build


def _sharpness(v: float):
    """torchvision's adjust_sharpness(1 + v) is img + v * (img - smooth), smooth = [[1,1,1],[1,5,1],[1,1,1]] / 13,
    that is the kernel I + (v / 13) L with L the Laplacian [[-1,-1,-1],[-1,8,-1],[-1,-1,-1]]: albumentations'
    kernel Sharpen with lightness 1 and alpha v / 13. A negative v (softer) is the same kernel; Sharpen's
    validation only admits alpha >= 0, so the value is set after construction."""
    from augexpand.recipe import import_albumentations

    t = import_albumentations().Sharpen(alpha=(0.0, 0.0), lightness=(1.0, 1.0), method="kernel", p=1.0)
    t.alpha = (v / 13.0, v / 13.0)
    return t


def _posterize(v: float):
    from augexpand.recipe import import_albumentations

    bits = 8 - int(round(v))  # v: bits removed
    return None if bits >= 8 else import_albumentations().Posterize(num_bits=bits, p=1.0)


def _solarize(v: float):
    from augexpand.recipe import import_albumentations

    threshold = 255.0 - v  # pixels >= threshold are inverted; v = 0 changes nothing
    return None if threshold >= 255.5 else import_albumentations().Solarize(
        threshold_range=(threshold / 255.0, threshold / 255.0), p=1.0)


def _plain(name: str, **params: Any) -> Callable[[float], Any]:
    def build(v: float):
        from augexpand.recipe import import_albumentations

        return getattr(import_albumentations(), name)(**params, p=1.0)
    return build


@dataclass(frozen=True)
class Op:
    """One policy op: how to build it for a value, and the largest value in each magnitude space."""

    name: str
    build: Callable[[float], Any] | None  # value -> an albumentations transform with p=1 (None: nothing to do)
    wide: float = 0.0  # largest value in TrivialAugment-Wide's space
    standard: float = 0.0  # largest value in RandAugment's and AutoAugment's space
    signed: bool = False  # negated with probability 1/2
    upright: float | None = None  # largest value when orientation is kept
    unit: str = ""
    albumentations: str = ""  # what it is built from (for the docs)

    def largest(self, space: str, keep_orientation: bool) -> float:
        top = self.wide if space == "wide" else self.standard
        return min(top, self.upright) if keep_orientation and self.upright is not None else top


_SHEAR_UPRIGHT = math.tan(math.radians(UPRIGHT_SHEAR))

# The ops, torchvision's names and scales (transforms/autoaugment.py, _augmentation_space), albumentations' ops.
OPS: dict[str, Op] = {op.name: op for op in [
    Op("Identity", None, albumentations="(nothing)"),
    Op("ShearX", _shear("x"), 0.99, 0.3, True, _SHEAR_UPRIGHT, "shear factor (angle atan(v))",
       "Affine(shear={x: deg})"),
    Op("ShearY", _shear("y"), 0.99, 0.3, True, _SHEAR_UPRIGHT, "shear factor (angle atan(v))",
       "Affine(shear={y: deg})"),
    Op("TranslateX", _translate("x"), 32 / 224, 150 / 331, True, None, "fraction of the width",
       "Affine(translate_percent={x: v})"),
    Op("TranslateY", _translate("y"), 32 / 224, 150 / 331, True, None, "fraction of the height",
       "Affine(translate_percent={y: v})"),
    Op("Rotate", lambda v: _affine(rotate=(v, v)), 135.0, 30.0, True, UPRIGHT_ROTATE, "degrees",
       "Affine(rotate=v)"),
    Op("Brightness", _jitter("brightness"), 0.99, 0.9, True, None, "factor 1 + v", "ColorJitter(brightness)"),
    Op("Color", _jitter("saturation"), 0.99, 0.9, True, None, "factor 1 + v", "ColorJitter(saturation)"),
    Op("Contrast", _jitter("contrast"), 0.99, 0.9, True, None, "factor 1 + v", "ColorJitter(contrast)"),
    Op("Sharpness", _sharpness, 0.99, 0.9, True, None, "factor 1 + v", "Sharpen(kernel, alpha=v/13)"),
    Op("Posterize", _posterize, 6.0, 4.0, False, None, "bits removed (of 8)", "Posterize(num_bits=8-v)"),
    Op("Solarize", _solarize, 255.0, 255.0, False, None, "threshold 255 - v", "Solarize(threshold=(255-v)/255)"),
    Op("AutoContrast", _plain("AutoContrast", method="pil"), albumentations="AutoContrast(method=pil)"),
    Op("Equalize", _plain("Equalize", mode="pil", by_channels=True), albumentations="Equalize(mode=pil)"),
    Op("Invert", _plain("InvertImg"), albumentations="InvertImg"),
    Op("HorizontalFlip", _plain("HorizontalFlip"), albumentations="HorizontalFlip"),  # the flip of the variants
]}

# The 14 ops TrivialAugment-Wide and RandAugment draw from (torchvision's order).
_DRAWN = ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color", "Contrast",
          "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize")

# AutoAugment's ImageNet policy (Cubuk et al. 2019, as torchvision's _get_policies(AutoAugmentPolicy.IMAGENET)):
# 25 sub-policies of two (op, probability, magnitude level 0..9) each.
AUTOAUGMENT_IMAGENET: tuple[tuple[tuple[str, float, int | None], ...], ...] = (
    (("Posterize", 0.4, 8), ("Rotate", 0.6, 9)),
    (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
    (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
    (("Posterize", 0.6, 7), ("Posterize", 0.6, 6)),
    (("Equalize", 0.4, None), ("Solarize", 0.2, 4)),
    (("Equalize", 0.4, None), ("Rotate", 0.8, 8)),
    (("Solarize", 0.6, 3), ("Equalize", 0.6, None)),
    (("Posterize", 0.8, 5), ("Equalize", 1.0, None)),
    (("Rotate", 0.2, 3), ("Solarize", 0.6, 8)),
    (("Equalize", 0.6, None), ("Posterize", 0.4, 6)),
    (("Rotate", 0.8, 8), ("Color", 0.4, 0)),
    (("Rotate", 0.4, 9), ("Equalize", 0.6, None)),
    (("Equalize", 0.0, None), ("Equalize", 0.8, None)),
    (("Invert", 0.6, None), ("Equalize", 1.0, None)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Rotate", 0.8, 8), ("Color", 1.0, 2)),
    (("Color", 0.8, 8), ("Solarize", 0.8, 7)),
    (("Sharpness", 0.4, 7), ("Invert", 0.6, None)),
    (("ShearX", 0.6, 5), ("Equalize", 1.0, None)),
    (("Color", 0.4, 0), ("Equalize", 0.6, None)),
    (("Equalize", 0.4, None), ("Solarize", 0.2, 4)),
    (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
    (("Invert", 0.6, None), ("Equalize", 1.0, None)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
)
AUTOAUGMENT_LEVELS = 9  # AutoAugment's magnitude levels are 0..9 (10 bins)


@dataclass(frozen=True)
class PolicyDef:
    """A policy's name, what it draws, and which of the recipe's settings it takes (with their defaults)."""

    name: str
    space: str  # "wide" (TrivialAugment-Wide) or "standard"
    description: str
    num_ops: int | None = None  # default; None: the setting does not apply
    magnitude: int | None = None


POLICIES: dict[str, PolicyDef] = {p.name: p for p in [
    PolicyDef("trivialaugment", "wide", "one op per image, its strength drawn uniformly from 0..magnitude",
              magnitude=MAGNITUDE_BINS),
    PolicyDef("randaugment", "standard", "num_ops ops per image, each at strength magnitude/30",
              num_ops=2, magnitude=9),
    PolicyDef("autoaugment", "standard", "one of the 25 ImageNet sub-policies per image"),
]}


class Policy:
    """A policy ready to apply: ``policy(image, rng)`` returns the new image and the ops applied, as
    ``[name, value]`` pairs (the flip is ``["HorizontalFlip", 0]``).

    The row's draws, in order: the flip (one uniform, unless keep_orientation), then per policy: TrivialAugment:
    the op, the strength bin, the sign; RandAugment: num_ops times the op and the sign; AutoAugment: the
    sub-policy, then per op its probability and sign. Then one integer seeds the albumentations transforms'
    Python generator (their values are fixed; only ColorJitter's order of identities would use it).
    """

    def __init__(self, name: str, num_ops: int | None = None, magnitude: int | None = None,
                 keep_orientation: bool = False) -> None:
        self.definition = POLICIES[name]
        self.name = name
        self.num_ops = num_ops if num_ops is not None else self.definition.num_ops
        self.magnitude = magnitude if magnitude is not None else self.definition.magnitude
        self.keep_orientation = keep_orientation
        self._built: dict[tuple[str, float], Any] = {}
        self._flip = None

    def transform(self, op: str, value: float):
        """The albumentations transform of ``op`` at ``value`` (built once, then reused)."""
        key = (op, value)
        if key not in self._built:
            build = OPS[op].build
            self._built[key] = build(value) if build is not None else None
        return self._built[key]

    def _value(self, op: str, strength: float, negative: bool) -> float:
        spec = OPS[op]
        value = strength * spec.largest(self.definition.space, self.keep_orientation)
        return -value if spec.signed and negative and value else value

    def draw(self, rng: np.random.Generator) -> list[tuple[str, float]]:
        """The ops of one row, with their values, drawn from the row's generator."""
        chosen: list[tuple[str, float]] = []
        if not self.keep_orientation and rng.random() < 0.5:
            chosen.append(("HorizontalFlip", 0.0))
        if self.name == "trivialaugment":
            op = _DRAWN[int(rng.integers(len(_DRAWN)))]
            strength = int(rng.integers(self.magnitude + 1)) / MAGNITUDE_BINS
            chosen.append((op, self._value(op, strength, bool(rng.integers(2)))))
        elif self.name == "randaugment":
            for _ in range(self.num_ops):
                op = _DRAWN[int(rng.integers(len(_DRAWN)))]
                chosen.append((op, self._value(op, self.magnitude / MAGNITUDE_BINS, bool(rng.integers(2)))))
        else:  # autoaugment
            sub = AUTOAUGMENT_IMAGENET[int(rng.integers(len(AUTOAUGMENT_IMAGENET)))]
            for op, probability, level in sub:
                applies = rng.random() < probability
                negative = bool(rng.integers(2))
                if applies:
                    chosen.append((op, self._value(op, (level or 0) / AUTOAUGMENT_LEVELS, negative)))
        return chosen

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, list[list]]:
        chosen = self.draw(rng)
        py_random = random.Random(int(rng.integers(1 << 53)))
        for op, value in chosen:
            t = self.transform(op, value)
            if t is None:
                continue
            t.set_random_state(rng, py_random)
            image = t(image=image)["image"]
        return image, [[op, round(float(value), 4)] for op, value in chosen]


def make_policy(spec: Any) -> Policy | None:
    """The policy of a recipe's ``policy:`` section (a PolicySpec, or None for no policy)."""
    if spec is None:
        return None
    return Policy(spec.name, spec.num_ops, spec.magnitude, spec.keep_orientation)
