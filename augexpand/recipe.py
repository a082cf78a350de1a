"""Recipes: the pydantic model, YAML loading with line-accurate errors, builtin lookup, and the albumentations pipeline.

A recipe is validated once, here, before any image is read. Every error names the file, the line and the key,
what was expected, and (for names) the closest valid one.

A recipe cannot ask for the impossible (see "Limits" below): YAML alias bombs, cycles, absurd nesting and a key
given twice (YAML would keep the last value without a word) are refused before anything is built from them, counts
and sizes are bounded, every number a transform is given is finite and at most ``MAX_SIDE``, and a transform that
needs more than an image (boxes, masks, keypoints, reference images, volumes) is refused, as is a Compose with
``bbox_params`` or ``keypoint_params``.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import json
import logging
import math
import os
import re
import statistics
import sys
import threading
import warnings
from collections.abc import Iterable
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from augexpand.errors import RecipeError
from augexpand.orientation import ORIENTATIONS
from augexpand.policies import POLICIES

__all__ = [
    "NOMINAL_SIZE",
    "SIZE_GATE",
    "ZOOMS",
    "AutoSize",
    "MixSection",
    "OutputSpec",
    "OversampleSpec",
    "PolicySpec",
    "Recipe",
    "apply_size_gates",
    "build_pipeline",
    "builtin_recipes",
    "duplicate_key",
    "follows_sources",
    "has_crop",
    "has_size_gates",
    "has_size_refs",
    "import_albumentations",
    "least_crop_area",
    "limit_zoom",
    "load_recipe",
    "native_limit",
    "recipes_dir",
    "resolve_output",
    "resolve_sizes",
    "source_sizes",
    "training_sources",
]

# --------------------------------------------------------------------------------------------------------------
# Limits: what a recipe may ask for. Larger values are almost always a typo (1e9 for 1e3) or an attack, and would
# run for days or exhaust memory; the plan has its own limit on the total (augexpand.plan.MAX_ROWS, --allow-large).

MAX_SIDE = 8192  # output height or width, and any number given to a transform (a blur kernel, a crop, a hole)
MAX_COPIES = 10_000  # augmented copies per source image
MAX_PER_CLASS = 10_000_000  # target_per_class, a mix count, an oversampling dict's count
MAX_RECIPE_BYTES = 1 << 20  # a recipe or pipeline file (the builtin recipes are about 1 KB)
MAX_NODES = 20_000  # YAML/JSON values after expanding aliases (a billion-laughs document has 10**9)
MAX_DEPTH = 128  # nested mappings and lists (a 32-deep OneOf in the compact form is ~100)
MAX_TRANSFORM_DEPTH = 32  # OneOf/SomeOf/Sequential nested in each other
# Parameters whose cost grows with their square or worse get tighter bounds (a 8191-pixel motion-blur kernel takes
# 20 s per image; OpenCV's median blur stops at 255): kernel sizes and radii, iteration counts.
SMALL_KNOBS = {"blur_limit": 255, "kernel_size": 255, "ksize": 255, "radius": 255, "max_delta": 255,
               "iterations": 100, "max_factor": 8,
               # cells of a grid: 8192 x 8192 of them took over 10 GB before the probe could time a single run
               "grid": 64, "holes_number_xy": 64, "num_grid_xy": 64, "nb_rows": 64, "nb_cols": 64,
               "num_control_points": 64, "tile_grid_size": 64, "scale": 255}
PROBE_SECONDS = 0.25  # a transform slower than this on a 32x32 image (twice) is refused: ~12x that per 224x224
PROBE_LIMIT_SECONDS = 3.0  # a probe run still going then is stopped (where a timer can stop it), and refused
NOMINAL_SIZE = 224  # what ``size: auto`` aims at when the recipe names no size of its own

Probability = Annotated[float, Field(ge=0.0, le=1.0)]
PositiveFloat = Annotated[float, Field(gt=0.0)]
NonNegativeFloat = Annotated[float, Field(ge=0.0)]
PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]


def recipes_dir() -> Path:
    """Where the builtin recipes live (inside the package, so a non-editable install has them too)."""
    return Path(__file__).parent / "recipes"


def builtin_recipes() -> dict[str, Path]:
    """Builtin recipe names and their files."""
    return {p.stem: p for p in sorted(recipes_dir().glob("*.yaml"))}


_IMPORT_LOCK = threading.Lock()  # sys.modules holds a module while it is being imported


def import_albumentations():
    """Import albumentations without its update check (no network here) and without the optional parts that
    augexpand never uses but albumentations imports when it finds them: ``albumentations.pytorch`` (torch: over
    a second of start-up) and the Hugging Face Hub client (~0.3 s). Those stay importable afterwards; one that is
    already loaded is left alone.
    """
    with _IMPORT_LOCK:  # two threads importing it at once: one saw it half made (no attribute 'Compose')
        os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
        if "albumentations" in sys.modules:
            return sys.modules["albumentations"]
        optional = ["huggingface_hub"]
        if "torch" not in sys.modules:
            optional.append("albumentations.pytorch")
        blocked = [name for name in optional if name not in sys.modules]
        for name in blocked:
            sys.modules[name] = None  # type: ignore[assignment]  # "import name" raises ImportError: albumentations skips it
        _lazy_module("scipy.special")
        try:
            import albumentations
        finally:
            for name in blocked:
                sys.modules.pop(name, None)
        return albumentations


def _lazy_module(name: str) -> None:
    """Put a stand-in for module ``name`` in ``sys.modules`` that imports the real module on first use of one of
    its attributes. albumentations imports ``scipy.special`` at start-up for one transform (RingingOvershoot's
    Bessel function), and loading it, SciPy's array-API layer pulls in numpy.testing and numpy.f2py: about 0.4 s of
    every process's start-up, now paid only where something uses it. (``importlib.util.LazyLoader`` would not do:
    Python 3.11's import system reads the module's ``__spec__`` and that loads it.)"""
    import importlib.util
    import types

    if name in sys.modules:
        return
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return
    if spec is None:
        return

    class _Deferred(types.ModuleType):
        def __getattr__(self, attr: str):
            if sys.modules.get(name) is self:
                del sys.modules[name]
            real = importlib.import_module(name)
            return getattr(real, attr)

    stand_in = _Deferred(name)
    stand_in.__spec__ = spec
    sys.modules[name] = stand_in


Side = Annotated[int, Field(gt=0, le=MAX_SIDE)]
PerClass = Annotated[int, Field(ge=0, le=MAX_PER_CLASS)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # .inf and .nan are refused


class AutoSize(_Strict):
    """``size: auto`` (224), ``size: {auto: 160}`` or ``{auto: [h, w]}``: that size, but never larger than the
    training sources' median short side (scaled down keeping its aspect). ``resolve_output`` makes it concrete."""

    auto: tuple[Side, Side] = (NOMINAL_SIZE, NOMINAL_SIZE)

    @field_validator("auto", mode="before")
    @classmethod
    def _square(cls, v: Any) -> Any:
        return (v, v) if isinstance(v, int) and not isinstance(v, bool) else v


class OutputSpec(_Strict):
    """How output images are written."""

    # (height, width); an int means square; auto follows the sources (AutoSize); None keeps each image's size
    size: tuple[Side, Side] | AutoSize | None = None
    fit: Literal["crop", "stretch"] = "crop"  # crop: resize the short side, centre-crop; stretch: resize exactly
    # auto: png when most training sources are stored losslessly (PNG, BMP, TIFF...), jpg otherwise (resolve_output)
    format: Literal["auto", "jpg", "png", "webp"] = "jpg"
    quality: Annotated[int, Field(ge=1, le=100)] = 95  # jpg and webp
    png_compression: Annotated[int, Field(ge=0, le=9)] = 1  # zlib level; 1 is fast, 6+ is ruinous

    @field_validator("size", mode="before")
    @classmethod
    def _square(cls, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool):
            return (v, v)
        if isinstance(v, str) and v.strip().lower() == "auto":
            return AutoSize()
        if isinstance(v, str) and v.strip().lower() in ("native", "null", "none"):
            return None
        if isinstance(v, dict):  # {auto: 160} or {auto: [h, w]}: one clear message rather than the union's
            nominal = v.get("auto")
            nominal = [nominal, nominal] if isinstance(nominal, int) else nominal
            if set(v) != {"auto"} or not (isinstance(nominal, (list, tuple)) and len(nominal) == 2 and all(
                    isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in nominal)):
                raise ValueError(f"expected {{auto: N}} or {{auto: [height, width]}} with sizes > 0, got {v!r}")
            return AutoSize(auto=tuple(nominal))
        if not (v is None or isinstance(v, (list, tuple, dict, AutoSize))):
            raise ValueError(f"expected a size (224, [height, width]), auto, {{auto: 160}} or null (native), "
                             f"got {v!r}")
        return v

    @property
    def nominal(self) -> tuple[int, int] | None:
        """The size as written (``auto``: its nominal size), for checks that have no images to look at."""
        return self.size.auto if isinstance(self.size, AutoSize) else self.size

    @field_validator("format", mode="before")
    @classmethod
    def _jpeg(cls, v: Any) -> Any:
        return "jpg" if isinstance(v, str) and v.lower() in ("jpeg", "jpg") else (v.lower() if isinstance(v, str) else v)


class _MixBase(_Strict):
    count: Annotated[float, Field(ge=0.0, le=MAX_PER_CLASS)] = 1.0  # per source image (per: image) or per class
    per: Literal["image", "class"] = "image"
    partner: Literal["any", "other", "same"] = "any"  # which class the other image(s) come from
    augment_inputs: bool = True  # run the single-image pipeline on each input before mixing


class SamplePairingSpec(_MixBase):
    """SamplePairing (Inoue 2018): pixel average, hard label of the first image."""


class MixupSpec(_MixBase):
    """mixup (Zhang et al. 2018): lambda ~ Beta(alpha, alpha)."""

    alpha: PositiveFloat = 0.4


class CutMixSpec(_MixBase):
    """CutMix (Yun et al. 2019): lambda ~ Beta(alpha, alpha), label by the exact pasted area."""

    alpha: PositiveFloat = 1.0


class RicapSpec(_MixBase):
    """RICAP (Takahashi et al. 2018): boundary ~ Beta(beta, beta), label by area."""

    beta: PositiveFloat = 0.3


class MixSection(_Strict):
    """Sample-mixing methods, each optional."""

    samplepairing: SamplePairingSpec | None = None
    mixup: MixupSpec | None = None
    cutmix: CutMixSpec | None = None
    ricap: RicapSpec | None = None

    def enabled(self) -> dict[str, _MixBase]:
        return {name: spec for name in type(self).model_fields if (spec := getattr(self, name)) is not None}


SamplingStrategy = (
    Literal["auto", "minority", "not minority", "not majority", "all"]
    | Annotated[float, Field(gt=0.0, le=1.0)]
    | dict[str, PerClass]
)


class OversampleSpec(_Strict):
    """Minority oversampling; how many per class follows imbalanced-learn's ``sampling_strategy``."""

    method: Literal["smote", "random"] = "smote"
    sampling_strategy: SamplingStrategy = "auto"
    k_neighbors: Annotated[int, Field(gt=0, le=1000)] = 5
    augment: bool = False  # run the single-image pipeline on each synthetic image too

    @field_validator("sampling_strategy", mode="before")
    @classmethod
    def _strategy(cls, v: Any) -> Any:
        """Name what is wrong in the form given: the union's first branch ('input should be auto, ...') answered
        a dict with a count of -1 or a fraction of 1.5."""
        number = isinstance(v, (int, float)) and not isinstance(v, bool)
        if isinstance(v, str) or (number and 0 < v <= 1):
            return v
        if number:
            raise ValueError(f"a fraction sampling_strategy must be above 0 and at most 1 (each minority class "
                             f"grown to that share of the majority), got {v!r}")
        if isinstance(v, dict):
            for name, count in v.items():
                if not isinstance(count, int) or isinstance(count, bool) or not 0 <= count <= MAX_PER_CLASS:
                    raise ValueError(f"sampling_strategy's count for class {name!r} must be a whole number from 0 "
                                     f"to {MAX_PER_CLASS:,} (the images that class should have), got {count!r}")
            return v
        raise ValueError(f"sampling_strategy must be 'auto', 'minority', 'not minority', 'not majority', 'all', a "
                         f"fraction in (0, 1] or a mapping {{class: count}}, got {v!r:.60}")


class PolicySpec(_Strict):
    """An augmentation policy applied after the pipeline wherever the pipeline is applied (policies.py)."""

    name: str
    num_ops: Annotated[int, Field(ge=1, le=10)] | None = None  # randaugment: ops per image (default 2)
    magnitude: Annotated[int, Field(ge=0, le=30)] | None = None  # randaugment: M of 0..30 (default 9);
    # trivialaugment: strengths are drawn from 0..magnitude (default 30)
    keep_orientation: bool | Literal["auto"] = False  # True: no flip, rotations and shears within 10 degrees;
    # auto: decided from the training images (orientation.py), as the recipe's `orientation: auto` does

    @field_validator("name", mode="before")
    @classmethod
    def _known(cls, v: Any) -> Any:
        if not isinstance(v, str) or v.strip().lower() in POLICIES:
            return v.strip().lower() if isinstance(v, str) else v
        raise ValueError(f"unknown policy {v!r}{_closest(v, list(POLICIES))} (expected one of: {', '.join(POLICIES)})")

    @field_validator("keep_orientation", mode="before")
    @classmethod
    def _upright(cls, v: Any) -> Any:
        if isinstance(v, bool) or (isinstance(v, str) and v.strip().lower() == "auto"):
            return v.strip().lower() if isinstance(v, str) else v
        raise ValueError(f"keep_orientation must be true, false or auto, got {v!r}")

    @model_validator(mode="after")
    def _applies(self) -> PolicySpec:
        definition = POLICIES[self.name]
        for key in ("num_ops", "magnitude"):
            if getattr(self, key) is not None and getattr(definition, key) is None:
                takes = [k for k in ("num_ops", "magnitude") if getattr(definition, k) is not None]
                raise ValueError(f"{key} does not apply to {self.name} (it takes "
                                 f"{', '.join([*takes, 'keep_orientation'])})")
        return self


class Recipe(_Strict):
    """A validated recipe. ``pipeline`` is kept as written; ``build_pipeline`` turns it into an A.Compose."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    description: str = ""
    seed: Annotated[int, Field(ge=0, lt=1 << 64)] = 0
    copies: Annotated[int, Field(ge=0, le=MAX_COPIES)] = 1  # augmented copies per source image
    target_per_class: Annotated[int, Field(gt=0, le=MAX_PER_CLASS)] | None = None  # originals + copies per class
    keep_originals: bool = True  # write each source image (resized/re-encoded) too
    pipeline: list[Any] | dict[str, Any] | str = Field(default_factory=list)
    mix: MixSection = Field(default_factory=MixSection)
    oversample: OversampleSpec | None = None
    policy: PolicySpec | None = None
    # free: the pipeline as written; keep: no flips, rotations and shears within 10 degrees, an upright policy;
    # auto: one of the two, decided from the training images at plan time (orientation.py)
    orientation: Literal["auto", "free", "keep"] = "free"
    # free: crops as written; auto: a RandomResizedCrop never magnifies the sources (resolve_output, ZOOMS)
    zoom: Literal["auto", "free"] = "free"
    output: OutputSpec = Field(default_factory=OutputSpec)

    # Not part of the schema: where the recipe came from, and the pipeline in albumentations' serialized form.
    source: str = Field(default="<inline>", exclude=True)

    @field_validator("orientation", mode="before")
    @classmethod
    def _orientation(cls, v: Any) -> Any:
        if isinstance(v, str) and v.strip().lower() in ORIENTATIONS:
            return v.strip().lower()
        raise ValueError(f"unknown orientation {v!r}{_closest(str(v), list(ORIENTATIONS))} (expected one of: "
                         f"{', '.join(ORIENTATIONS)})")

    @field_validator("zoom", mode="before")
    @classmethod
    def _zoom(cls, v: Any) -> Any:
        if isinstance(v, str) and v.strip().lower() in ZOOMS:
            return v.strip().lower()
        raise ValueError(f"unknown zoom {v!r}{_closest(str(v), list(ZOOMS))} (expected one of: {', '.join(ZOOMS)})")

    @cached_property
    def pipeline_dict(self) -> dict[str, Any]:
        """The pipeline in albumentations' own serialized form (``A.to_dict`` output)."""
        A = import_albumentations()
        pipeline = resolve_sizes(self.pipeline, self.output.nominal or (NOMINAL_SIZE, NOMINAL_SIZE), self.source)
        return A.to_dict(build_pipeline(pipeline, self.source, {}))

    @property
    def sizes_per_image(self) -> bool:
        """True when the pipeline has `output` sizes and the output keeps native sizes: they follow each image."""
        return self.output.size is None and has_size_refs(self.pipeline)

    def resolved(self) -> dict[str, Any]:
        """The fully resolved recipe, as written into dataset.json (the pipeline in albumentations' serialized
        form; as written when its `output` sizes follow each image's native size)."""
        data = self.model_dump(mode="json")
        data["pipeline"] = self.pipeline if self.sizes_per_image else self.pipeline_dict
        data["source"] = self.source
        return data


# --------------------------------------------------------------------------------------------------------------
# YAML with line numbers


def _line_index(node: yaml.Node | None, path: tuple = (), out: dict | None = None) -> dict[tuple, int]:
    """Map every key path of a composed YAML document to its 1-based line."""
    out = {} if out is None else out
    if node is None:
        return out
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            sub = path + (key.value,)
            out[sub] = key.start_mark.line + 1
            _line_index(value, sub, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _line_index(item, path + (i,), out)
    return out


def _where(source: str, lines: dict[tuple, int], path: tuple) -> str:
    key = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in path).replace(".[", "[")
    for n in range(len(path), -1, -1):
        if path[:n] in lines:
            return f"{source}, line {lines[path[:n]]}" + (f", {key}" if key else "")
    return f"{source}" + (f", {key}" if key else "")


def _closest(name: str, options: list[str]) -> str:
    match = difflib.get_close_matches(name, options, n=1, cutoff=0.5)
    if not match:
        lowered = {o.lower(): o for o in options}
        match = [lowered[name.lower()]] if name.lower() in lowered else []
    return f"; did you mean {match[0]!r}?" if match else ""


def _pydantic_message(err: dict[str, Any], model: type[BaseModel]) -> tuple[tuple, str]:
    """One readable sentence for a pydantic error entry, and the path it is about."""
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and ("[" in p or p in ("function-after",))))
    kind = err["type"]
    if kind == "extra_forbidden":
        parent: Any = model
        for part in loc[:-1]:
            field = getattr(parent, "model_fields", {}).get(part)
            ann = field.annotation if field else None
            parent = next((a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and
                           issubclass(a, BaseModel)), None)
        options = list(getattr(parent, "model_fields", {})) if parent else []
        options = [o for o in options if o != "source"]
        return loc, f"unknown key {loc[-1]!r}{_closest(str(loc[-1]), options)} (expected one of: {', '.join(options)})"
    got = err.get("input")
    if kind == "value_error":  # our own validators' messages say what arrived
        return loc, str(err.get("ctx", {}).get("error", err["msg"]))
    got_text = f", got {got!r}" if not isinstance(got, (dict, list)) else ""
    hint = ""
    if kind == "literal_error" and isinstance(got, str):
        hint = _closest(got, re.findall(r"'([^']*)'", str(err.get("ctx", {}).get("expected", ""))))
    return loc, f"{err['msg'][0].lower()}{err['msg'][1:]}{got_text}{hint}"


def _check_shape(root: Any, children, source: str) -> None:
    """Refuse a document that expands (aliases counted each time they are used) to more than MAX_NODES values,
    nests deeper than MAX_DEPTH, or refers to itself. Linear in the document as written: each shared value is
    measured once (an iterative walk, so no depth of input can overflow the stack)."""
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    open_: set[int] = set()
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            open_.discard(key)
            kids = children(node)
            size[key] = 1 + sum(size[id(k)] for k in kids)
            depth[key] = 1 + max((depth[id(k)] for k in kids), default=0)
            if size[key] > MAX_NODES:
                raise RecipeError(f"{source} expands to more than {MAX_NODES:,} values (YAML aliases used over and "
                                  f"over, a 'billion laughs'?); a recipe is a few dozen")
            if depth[key] > MAX_DEPTH:
                raise RecipeError(f"{source} nests deeper than {MAX_DEPTH} levels; a recipe needs a handful")
            continue
        if key in size:
            continue
        if key in open_:
            raise RecipeError(f"{source} refers to itself (a recursive YAML alias); a recipe is a tree")
        if len(open_) > MAX_DEPTH:
            raise RecipeError(f"{source} nests deeper than {MAX_DEPTH} levels; a recipe needs a handful")
        open_.add(key)
        stack.append((node, True))
        stack.extend((k, False) for k in children(node) if id(k) not in size)


def _yaml_children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return list(node.value) if isinstance(node, yaml.SequenceNode) else []


def _data_children(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [*value.keys(), *value.values()]
    return list(value) if isinstance(value, (list, tuple)) else []


def _check_yaml_depth(text: str, source: str) -> None:
    """Refuse YAML nested deeper than MAX_DEPTH from its tokens (the scanner is a loop, not a recursion), before
    anything recursive reads it."""
    depth = 0
    for token in yaml.scan(text, Loader=yaml.SafeLoader):
        if isinstance(token, (yaml.BlockSequenceStartToken, yaml.BlockMappingStartToken,
                              yaml.FlowSequenceStartToken, yaml.FlowMappingStartToken)):
            depth += 1
            if depth > MAX_DEPTH:
                raise RecipeError(f"{source} nests deeper than {MAX_DEPTH} levels; a recipe needs a handful")
        elif isinstance(token, (yaml.BlockEndToken, yaml.FlowSequenceEndToken, yaml.FlowMappingEndToken)):
            depth -= 1


_MERGE_TAG = "tag:yaml.org,2002:merge"
_NO_KEY = object()


def _key_value(constructor: yaml.SafeLoader, node: yaml.Node) -> Any:
    """A mapping key as the loader builds it; _NO_KEY for a merge (``<<``) and for a key the loader refuses (it
    says why when the document is loaded)."""
    if node.tag == _MERGE_TAG:
        return _NO_KEY
    try:
        key = constructor.construct_object(node, deep=True)
        hash(key)
    except Exception:  # noqa: BLE001
        return _NO_KEY
    return key


def duplicate_key(root: yaml.Node | None) -> tuple[Any, int, int, tuple] | None:
    """The key that a mapping of the composed YAML document gives twice (at any depth; the earliest second use in
    the document), as (key, line of its first use, line of the second, path of the second), or None. A YAML loader
    keeps the last value without a word, so ``copies: 2`` ... ``copies: 20`` would quietly make 20. Keys are
    compared as the loader builds them (``1`` and ``0x1`` are one key); a merge (``<<: *base``) may be overridden,
    as YAML intends. Linear in the node graph (a shared node is visited once; _check_shape has bounded it)."""
    if root is None:
        return None
    constructor = yaml.SafeLoader("")
    found: list[tuple[Any, int, int, tuple]] = []
    seen: set[int] = set()
    stack: list[tuple[yaml.Node, tuple]] = [(root, ())]
    while stack:
        node, path = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            stack.extend((item, path + (i,)) for i, item in enumerate(node.value))
        elif isinstance(node, yaml.MappingNode):
            first: dict[Any, int] = {}
            for key_node, value_node in node.value:
                name = key_node.value if isinstance(key_node, yaml.ScalarNode) else "?"
                stack.append((value_node, path + (name,)))
                key = _key_value(constructor, key_node)
                if key is _NO_KEY:
                    continue
                line = key_node.start_mark.line + 1
                if key in first:
                    found.append((key, first[key], line, path + (name,)))
                    break
                first[key] = line
    return min(found, key=lambda f: f[2], default=None)


def _one_line(text: Any) -> str:
    return " ".join(str(text).split())


def _read_yaml(text: str, source: str) -> tuple[Any, dict[tuple, int]]:
    if len(text) > MAX_RECIPE_BYTES:
        raise RecipeError(f"{source} is {len(text) / 1e6:.1f} MB; a recipe is at most {MAX_RECIPE_BYTES >> 20} MB")
    try:
        _check_yaml_depth(text, source)  # PyYAML's composer recurses: 5000 nested brackets would overflow it
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is not None:
            _check_shape(node, _yaml_children, source)  # before anything is built from it
        twice = duplicate_key(node)
        if twice is not None:
            key, first, line, path = twice
            raise RecipeError(f"duplicate key {key!r}, already given on line {first}: YAML would keep only the last "
                              f"value; give it once ({_where(source, {path: line}, path)})")
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}, line {mark.line + 1}, column {mark.column + 1}" if mark else source
        raise RecipeError(f"YAML syntax error ({where}): {_one_line(exc.problem or exc)}") from None
    except yaml.YAMLError as exc:
        raise RecipeError(f"YAML error in {source}: {_one_line(exc)}") from None
    except RecursionError:
        raise RecipeError(f"{source} nests deeper than {MAX_DEPTH} levels; a recipe needs a handful") from None
    except (ValueError, OverflowError) as exc:  # a value YAML reads but Python cannot hold: an int of 5000 digits
        raise RecipeError(f"YAML value out of range in {source}: {_one_line(exc)}") from None
    return data, _line_index(node)


def _resolve_path(spec: str | Path) -> Path:
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    builtins = builtin_recipes()
    name = str(spec)
    stem = name[:-5] if name.endswith((".yaml", ".yml")) else name
    if stem in builtins and not path.parent.parts[1:]:
        return builtins[stem]
    if path.exists():
        raise RecipeError(f"recipe {spec} is not a file")
    raise RecipeError(f"recipe {spec!r} not found: no such file, and no builtin recipe of that name"
                      f"{_closest(stem, list(builtins))} (builtins: {', '.join(builtins)})")


def load_recipe(spec: str | Path | dict[str, Any] | Recipe, overrides: dict[str, Any] | None = None) -> Recipe:
    """Load and fully validate a recipe: a path, a builtin name (``light``, ``heavy``, ``balance``, ...) or a dict.

    ``overrides`` are applied on top (dotted keys such as ``output.format`` reach into sections; a None value
    sets the key to null), as the CLI's flags do. The albumentations pipeline is built once to check it; nothing else is read.
    Every refusal is a RecipeError of one line (a key or name with a newline in it is shown escaped).
    """
    try:
        return _load_recipe(spec, overrides)
    except RecipeError as exc:
        if exc.message.isprintable():
            raise
        raise RecipeError(_printable(exc.message), exc.hint) from None
    except ValidationError as exc:  # a model check this module did not phrase (a section another one adds)
        loc, message = _pydantic_message(exc.errors()[0], Recipe)
        raise RecipeError(_printable(f"{message} ({'.'.join(map(str, loc))})")) from None


def _printable(text: str) -> str:
    """``text`` with control characters (a newline in a key) escaped, so that it stays one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _load_recipe(spec: str | Path | dict[str, Any] | Recipe, overrides: dict[str, Any] | None = None) -> Recipe:
    if isinstance(spec, Recipe):
        data, lines, source, base = spec.model_dump(), {}, spec.source, Path.cwd()
        data["pipeline"] = spec.pipeline
    elif isinstance(spec, dict):
        _check_shape(spec, _data_children, "<inline recipe>")
        data, lines, source, base = dict(spec), {}, "<inline recipe>", Path.cwd()
    elif not isinstance(spec, (str, os.PathLike)):
        raise RecipeError(f"a recipe is a YAML file's path, a builtin recipe's name, a dict or a Recipe, got "
                          f"{type(spec).__name__} {spec!r:.40}")
    else:
        path = _resolve_path(spec)
        source = str(path) if path.parent != recipes_dir() else f"builtin recipe {path.stem!r} ({path})"
        text = _read_text(path, "recipe", "YAML", "")
        data, lines = _read_yaml(text, str(path))
        source, base = str(path), path.parent
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise RecipeError(f"recipe {path} must be a YAML mapping (seed:, pipeline:, ...), "
                              f"got a {type(data).__name__}")
    data = copy.deepcopy(data)
    if overrides is not None and not (isinstance(overrides, dict) and all(isinstance(k, str) for k in overrides)):
        raise RecipeError(f"overrides must be a dict of recipe keys, e.g. {{'copies': 3, 'output.format': 'png'}}, "
                          f"got {overrides!r:.60}")
    for key, value in (overrides or {}).items():  # dotted keys reach into sections: output.format
        *parents, last = key.split(".")
        target = data
        for part in parents:
            if not isinstance(target.get(part), dict):
                target[part] = {}
            target = target[part]
        target[last] = value
    try:
        recipe = Recipe.model_validate({**data, "source": source})
    except ValidationError as exc:
        loc, message = _pydantic_message(exc.errors()[0], Recipe)
        raise RecipeError(f"{message} ({_where(source, lines, loc)})") from None
    pipeline = recipe.pipeline
    if isinstance(pipeline, str):  # a path to a serialized pipeline (A.save output, JSON or YAML) or a list
        pipeline = _load_pipeline_file(pipeline, base, _where(source, lines, ("pipeline",)))
        if not isinstance(pipeline, (list, dict)):
            raise RecipeError(f"pipeline file {recipe.pipeline} must hold a list of transforms or the mapping A.save "
                              f"writes, got a {type(pipeline).__name__} ({_where(source, lines, ('pipeline',))})")
        recipe = Recipe.model_validate({**recipe.model_dump(), "pipeline": pipeline, "source": source})
    # Fail now, not in a worker: with `output` sizes at the recipe's nominal size (the data may make them smaller).
    # What albumentations warns about (an ignored argument) is one line each.
    nominal = recipe.output.nominal or (NOMINAL_SIZE, NOMINAL_SIZE)
    try:
        build_pipeline(resolve_sizes(recipe.pipeline, nominal, source, lines), source, lines, probe=True,
                       on_warning=lambda text: logging.getLogger("augexpand").warning("%s: albumentations: %s",
                                                                                      source, text))
    except RecipeError as exc:
        if max(nominal) <= 2048 or "are too large" not in exc.message or exc.hint:
            raise
        # `size: output` follows the output size: the parameters blamed may be the user's --size, not the recipe's
        raise RecipeError(exc.message, hint=f"the output size {nominal[0]}x{nominal[1]} (--size or output.size) "
                                            f"sizes what the pipeline makes: choose a smaller one") from None
    return recipe


def _read_text(path: Path, what: str, expected: str, where: str) -> str:
    """A recipe or pipeline file's text: at most MAX_RECIPE_BYTES of UTF-8, or a one-line RecipeError."""
    try:
        if path.stat().st_size > MAX_RECIPE_BYTES:
            raise RecipeError(f"{what} {path} is {path.stat().st_size / 1e6:.1f} MB; at most "
                              f"{MAX_RECIPE_BYTES >> 20} MB{where}")
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise RecipeError(f"{what} {path} is not UTF-8 text (a binary file?); expected {expected}{where}") from None
    except OSError as exc:
        raise RecipeError(f"cannot read {what} {path}: {exc.strerror or exc}{where}") from None


class _DuplicateKey(Exception):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object, refusing a key given twice (``json`` keeps the last value without a word, as YAML does)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _load_pipeline_file(spec: str, base: Path, where: str) -> Any:
    path = Path(spec).expanduser()
    if not path.is_absolute():
        path = base / path
    if not path.is_file():
        raise RecipeError(f"pipeline file {path} {'is not a file' if path.exists() else 'not found'} ({where})")
    text = _read_text(path, "pipeline file", "the JSON or YAML that A.save writes, or a compact list", f" ({where})")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text, object_pairs_hook=_unique_keys)
        except json.JSONDecodeError as exc:
            raise RecipeError(f"JSON syntax error in {path}, line {exc.lineno}: {exc.msg}") from None
        except _DuplicateKey as exc:
            raise RecipeError(f"duplicate key {exc.args[0]!r} in {path}: JSON would keep only the last value; give "
                              f"it once ({where})") from None
        except RecursionError:
            raise RecipeError(f"{path} nests deeper than {MAX_DEPTH} levels; a pipeline needs a handful") from None
        _check_shape(data, _data_children, str(path))
        return data
    data, _ = _read_yaml(text, str(path))
    return data


# --------------------------------------------------------------------------------------------------------------
# Sizes that follow the data: `size: auto` and `output` inside the pipeline

_SIZE_REF = re.compile(r"^output(?:\s*\*\s*(\d+(?:\.\d*)?|\.\d+))?$")
_HEIGHT_KEYS = ("height", "min_height", "max_height")
_WIDTH_KEYS = ("width", "min_width", "max_width")


def _size_ref(value: Any, key: Any, index: int | None, size: tuple[int, int], where: str) -> Any:
    """The number(s) an `output` reference stands for under ``key`` (``index``: its place in a list)."""
    match = _SIZE_REF.match(value.strip())
    if match is None or (match.group(1) is not None and float(match.group(1)) <= 0):
        raise RecipeError(f"expected `output` or `output*F` (F > 0, e.g. output*1.15), got {value!r} ({where})")
    factor = float(match.group(1)) if match.group(1) is not None else 1.0
    h, w = (max(1, int(round(n * factor))) for n in size)
    if key == "size" and index is None:
        return [h, w]
    if key in _HEIGHT_KEYS or (key == "size" and index == 0):
        return h
    if key in _WIDTH_KEYS or (key == "size" and index == 1):
        return w
    return min(h, w)  # max_size, min_max_height, ...: the short side


def has_size_refs(pipeline: Any) -> bool:
    """Whether a pipeline has `output` size references."""
    if isinstance(pipeline, str):
        return pipeline.strip().startswith("output")
    if isinstance(pipeline, dict):
        return any(has_size_refs(v) for v in pipeline.values())
    if isinstance(pipeline, list):
        return any(has_size_refs(v) for v in pipeline)
    return False


def resolve_sizes(pipeline: Any, size: tuple[int, int], source: str = "<recipe>", lines: dict | None = None) -> Any:
    """The pipeline with every `output` size reference replaced by numbers for the output ``size`` (h, w).

    ``size`` / ``[output, output]`` → [h, w] / h, w; ``height``, ``min_height`` → h; ``width``, ``min_width`` → w;
    any other key (``max_size``, ``min_max_height``) → the short side. ``output*F`` scales by F, rounded."""
    lines = lines or {}

    def walk(node: Any, path: tuple, key: Any, index: int | None) -> Any:
        if isinstance(node, str) and node.strip().startswith("output"):
            return _size_ref(node, key, index, size, _where(source, lines, path))
        if isinstance(node, dict):
            return {k: walk(v, path + (k,), k, None) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, path + (i,), key, i) for i, v in enumerate(node)]
        return node

    return walk(pipeline, ("pipeline",), None, None)


def source_sizes(scan: Any, indices: Iterable[int] | None = None) -> dict[str, Any]:
    """The size distribution of a scan's sources (``indices``: which; default all), from their headers:
    ``{"count", "short_side": {"min", "median", "max"}, "width": {"median"}, "height": {"median"}}``.
    Medians are the lower median: a size one of the images has."""
    chosen = [scan.sources[i] for i in indices] if indices is not None else list(scan.sources)
    if not chosen:
        return {"count": 0, "short_side": {"min": None, "median": None, "max": None}, "width": {"median": None},
                "height": {"median": None}}
    short = [min(s.width, s.height) for s in chosen]
    return {"count": len(chosen),
            "short_side": {"min": min(short), "median": int(statistics.median_low(short)), "max": max(short)},
            "width": {"median": int(statistics.median_low(s.width for s in chosen))},
            "height": {"median": int(statistics.median_low(s.height for s in chosen))}}


def auto_size(nominal: tuple[int, int], median_short_side: int | None) -> tuple[int, int]:
    """``size: auto``: ``nominal`` (h, w), scaled down (keeping its aspect) so that its short side is at most the
    sources' median short side; never scaled up."""
    if not median_short_side:
        return tuple(nominal)
    scale = min(1.0, median_short_side / min(nominal))
    return max(1, int(round(nominal[0] * scale))), max(1, int(round(nominal[1] * scale)))


ZOOMS = ("auto", "free")
CROP_DEFAULT_SCALE = (0.08, 1.0)  # albumentations' RandomResizedCrop scale when a recipe leaves it out


def least_crop_area(output: tuple[int, int] | None, source: tuple[int, int] | None) -> float:
    """``zoom: auto``: the least share of a source's area that a crop may keep and still not be magnified: the
    output's pixels over the source's (``source``: the training sources' median (height, width)), at most 1
    (native sizes: 1, any smaller crop is magnified). 0 when there is nothing to go by."""
    if output is None:
        return 1.0
    if not source or not all(source):
        return 0.0
    return min(1.0, output[0] * output[1] / (source[0] * source[1]))


def has_crop(pipeline: Any) -> bool:
    """Whether a pipeline (either form) has a RandomResizedCrop, at any depth."""
    if isinstance(pipeline, dict):
        return (str(pipeline.get("__class_fullname__", "")).rsplit(".", 1)[-1] == "RandomResizedCrop"
                or "RandomResizedCrop" in pipeline or any(has_crop(v) for v in pipeline.values()))
    if isinstance(pipeline, list):
        return any(has_crop(v) for v in pipeline)
    return False


def limit_zoom(pipeline: Any, least: float) -> Any:
    """The pipeline (compact list or albumentations' serialized form) with every RandomResizedCrop's ``scale``
    raised to at least ``least`` of the area, at any depth; everything else as it was (the input is not changed)."""

    def scale(value: Any) -> list[float]:
        lo, hi = value if isinstance(value, (list, tuple)) and len(value) == 2 else CROP_DEFAULT_SCALE
        lo = max(float(lo), round(least, 4))
        return [lo, max(float(hi), lo)]

    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(item) for item in node]
        if not isinstance(node, dict):
            return node
        if "__class_fullname__" in node:  # serialized form
            out = {k: walk(v) if k in ("transforms", "transform") else v for k, v in node.items()}
            if str(node["__class_fullname__"]).rsplit(".", 1)[-1] == "RandomResizedCrop":
                out["scale"] = scale(node.get("scale"))
            return out
        if "transform" in node and isinstance(node["transform"], dict):  # A.to_dict's wrapper
            return {**node, "transform": walk(node["transform"])}
        if len(node) == 1:  # compact form: {Name: params}
            (name, params), = node.items()
            if isinstance(params, dict):
                params = {k: walk(v) if k == "transforms" else v for k, v in params.items()}
                if name == "RandomResizedCrop":
                    params["scale"] = scale(params.get("scale"))
            return {name: params}
        return node

    return walk(pipeline)


SIZE_GATE = "if_output_at_least"  # a compact-form transform's key: it runs only on outputs this large (short side)


def _check_gate(value: Any, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SIDE:
        raise RecipeError(f"{SIZE_GATE} must be a whole number of pixels from 1 to {MAX_SIDE}, got {value!r} "
                          f"({where})")


def has_size_gates(pipeline: Any) -> bool:
    """Whether a pipeline has an ``if_output_at_least`` key at any depth."""
    if isinstance(pipeline, dict):
        return SIZE_GATE in pipeline or any(has_size_gates(v) for v in pipeline.values())
    if isinstance(pipeline, list):
        return any(has_size_gates(v) for v in pipeline)
    return False


def apply_size_gates(pipeline: Any, size: tuple[int, int] | None) -> tuple[Any, list[str]]:
    """The compact pipeline with every transform whose ``if_output_at_least: N`` exceeds the output's short side
    left out (a OneOf/SomeOf/Sequential emptied by that too), and the key dropped from the rest; and what was left
    out, as ``"Name (from N px)"``. With native sizes (``size`` None) every transform stays. The serialized form
    has no such key and is returned as it is."""
    short = min(size) if size else None
    left_out: list[str] = []

    def walk(items: Any) -> Any:
        if not isinstance(items, list):
            return items
        out = []
        for item in items:
            if isinstance(item, dict) and len(item) == 1 and isinstance(next(iter(item.values())), dict):
                (name, params), = item.items()
                gate = params.get(SIZE_GATE)
                if isinstance(gate, int) and short is not None and short < gate:
                    left_out.append(f"{name} (from {gate} px)")
                    continue
                params = {k: v for k, v in params.items() if k != SIZE_GATE}
                if isinstance(params.get("transforms"), list):
                    params["transforms"] = walk(params["transforms"])
                    if not params["transforms"]:
                        continue
                item = {name: params}
            out.append(item)
        return out

    return walk(pipeline), left_out


LOSSY_FORMATS = frozenset({"JPEG", "MPO", "WEBP"})  # as the scan names them (Pillow's formats)


def auto_format(scan: Any, train: list[int]) -> str:
    """``format: auto``: ``png`` when most training sources (``train``: indices into ``scan.sources``) are stored
    losslessly (PNG, BMP, TIFF, ...), so that expanding does not add JPEG artefacts to images that had none (on
    16-pixel textures, JPEG copies trained 1-2 points worse than PNG ones: bench/accuracy_tune.py); ``jpg``
    otherwise (photos), and with nothing to look at."""
    lossless = sum(scan.sources[i].format not in LOSSY_FORMATS for i in train) if scan is not None else 0
    return "png" if 2 * lossless > len(train) else "jpg"


def follows_sources(recipe: Recipe) -> bool:
    """Whether resolving the recipe reads the training sources: ``size: auto``, ``format: auto`` or ``zoom: auto``."""
    return isinstance(recipe.output.size, AutoSize) or recipe.output.format == "auto" or recipe.zoom == "auto"


def training_sources(scan: Any, val_fraction: float, seed: int) -> tuple[list[int], dict[str, Any] | None]:
    """The training sources of ``scan`` (indices: those ``make_plan`` keeps for training with this ``val_fraction``
    and ``seed``) and their :func:`source_sizes`; ``([], None)`` with no scan or no sources."""
    if scan is None or not scan.sources:
        return [], None
    from augexpand.plan import _split_val

    train, _ = _split_val(scan, val_fraction, seed)
    return train, source_sizes(scan, train) if train else None


def resolve_output(recipe: Recipe, scan: Any = None, val_fraction: float = 0.0,
                   training: tuple[list[int], dict[str, Any] | None] | None = None) -> Recipe:
    """The recipe with a concrete output size and format, and numbers for every `output` size in its pipeline.

    ``size: auto`` follows the training sources of ``scan`` (those ``make_plan`` keeps for training with this
    ``val_fraction`` and the recipe's seed), from the sizes the scan read from the headers (no decoding); with no
    scan (``validate``) it is the nominal size. An explicit size is kept as written. With native sizes
    (``size: null``) `output` sizes stay: they follow each image (``rows.RowMaker``). ``format: auto`` follows
    the same training sources (:func:`auto_format`), and so does ``zoom: auto``: every RandomResizedCrop keeps at
    least :func:`least_crop_area` of a source, so that no crop magnifies it (on 16-pixel textures, crops that did
    cost 1-2 points against raw training: bench/accuracy_tune.py). ``training``: :func:`training_sources` of the
    same scan, when the caller has it already. Resolving twice is harmless.
    """
    size, train, sizes = recipe.output.size, [], None
    if follows_sources(recipe):
        train, sizes = training if training is not None else training_sources(scan, val_fraction, recipe.seed)
    if isinstance(size, AutoSize):
        size = auto_size(size.auto, sizes["short_side"]["median"] if sizes else None)
    data = recipe.model_dump()
    data["output"]["size"] = size
    if recipe.output.format == "auto":
        data["output"]["format"] = auto_format(scan, train)
    data["pipeline"] = resolve_sizes(recipe.pipeline, size, recipe.source) if size is not None else recipe.pipeline
    data["pipeline"] = apply_size_gates(data["pipeline"], size)[0]
    if recipe.zoom == "auto" and (sizes or size is None):
        median = (sizes["height"]["median"], sizes["width"]["median"]) if sizes else None
        data["pipeline"] = limit_zoom(data["pipeline"], least_crop_area(size, median))
    return Recipe.model_validate({**data, "source": recipe.source})


# --------------------------------------------------------------------------------------------------------------
# The albumentations pipeline


def _transform_names(A) -> list[str]:
    return sorted(n for n in dir(A) if isinstance(getattr(A, n), type) and
                  issubclass(getattr(A, n), (A.BasicTransform, A.BaseCompose)) and not n.startswith("_"))


def _albu_error_text(exc: Exception) -> str:
    """albumentations wraps pydantic errors in ValueError: keep the field and the reason, drop the noise."""
    lines = [line for line in str(exc).splitlines() if line.strip() and "errors.pydantic.dev" not in line]
    if lines and "validation error" in lines[0] and len(lines) >= 3:
        reason = lines[2].strip().split(" [type=")[0]
        reason = reason.removeprefix("Value error, ").removeprefix("Assertion failed, ")
        return f"{lines[1].strip()}: {reason}"
    return " ".join(lines) or type(exc).__name__


def _check_numbers(name: str, value: Any, where: str, key: str = "", limit: int = MAX_SIDE) -> None:
    """Every number given to a transform is finite and at most ``limit`` (MAX_SIDE) in size: a blur kernel, a crop
    or a hole count of 10**6 would run for ever or exhaust memory, and no image side is larger."""
    if isinstance(value, dict):
        for k, v in value.items():
            if k not in ("seed", "__class_fullname__"):
                _check_numbers(name, v, where, f"{key}.{k}" if key else str(k), limit)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _check_numbers(name, v, where, key, limit)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        knob = key.rsplit(".", 1)[-1]
        if not math.isfinite(value) or abs(value) > limit:
            raise RecipeError(f"{name}: {key or 'a parameter'} = {value!r} is out of range: a transform's numbers "
                              f"must be finite and at most {limit} (the largest image side) ({where})")
        if knob in SMALL_KNOBS and abs(value) > SMALL_KNOBS[knob]:
            raise RecipeError(f"{name}: {key} = {value!r} is out of range: at most {SMALL_KNOBS[knob]} (its cost "
                              f"grows with its square or faster) ({where})")


class _ProbeTimeout(BaseException):  # _probe_deadline's alarm: no `except Exception` in a transform swallows it
    pass


@contextlib.contextmanager
def _probe_deadline(seconds: float):
    """Stop the block after ``seconds`` (a SIGALRM timer): a transform whose parameters make even a 32x32 image
    take minutes (8000 shadows of 8192 edges) is refused then, not waited for. Only in the main thread and while no
    one else uses the timer; elsewhere the block runs unbounded, as before."""
    import signal
    import threading

    usable = (hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
              and signal.getsignal(signal.SIGALRM) in (signal.SIG_DFL, None)
              and signal.getitimer(signal.ITIMER_REAL)[0] == 0)
    if not usable:
        yield
        return

    def stop(signum, frame):
        raise _ProbeTimeout

    signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)


def _too_slow(t, A) -> str | None:
    """Why a transform cannot be run at a sane cost, from two runs (p = 1) on a 32x32 image: it asks for more
    memory than there is, or takes over PROBE_SECONDS there (parameters no bound above foresaw); or why its output
    cannot be written: it is not 8-bit (Normalize, ToFloat: every image would be written black). A failure that
    depends on the image (a crop larger than 32x32) is no verdict: the image decides when it runs."""
    import time

    import cv2
    import numpy as np

    probe = copy.deepcopy(t)
    probe.p = 1.0
    pipeline = A.Compose([probe], seed=0)
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    # On one thread: a process whose OpenCV has started its thread pool must not fork (a forked worker would
    # deadlock in cv2.setNumThreads), and load_recipe runs before the workers are forked.
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        for _ in range(2):
            started = time.perf_counter()
            try:
                with _probe_deadline(PROBE_LIMIT_SECONDS):
                    out = pipeline(image=image)["image"]
                if getattr(out, "dtype", np.uint8) != np.uint8:
                    return (f"turns the 8-bit image into {out.dtype} pixels, and a recipe writes 8-bit images (every "
                            f"one would be black); normalize when training instead")
                if getattr(out, "ndim", 3) != 3 or out.shape[2] != 3:
                    channels = 1 if out.ndim == 2 else out.shape[-1]
                    return (f"turns the 3-channel image into {channels} channel{'' if channels == 1 else 's'}, and a "
                            f"recipe's images are RGB (mixing and preview combine them); ToGray keeps 3 channels with "
                            f"num_output_channels: 3")
            except MemoryError:
                return "asks for more memory than there is, even on a 32x32 image"
            except _ProbeTimeout:
                return (f"takes over {PROBE_LIMIT_SECONDS:.0f} s on a 32x32 image (stopped there): its parameters "
                        f"are too large")
            except Exception:  # noqa: BLE001, S110 -- image-dependent (decided when it runs), unless slow to fail
                pass
            elapsed = time.perf_counter() - started
            if elapsed < PROBE_SECONDS:
                return None
            if elapsed > 4 * PROBE_SECONDS:  # no second chance for one far too slow: it would cost as long again
                break
    finally:
        cv2.setNumThreads(threads)
    return (f"takes {elapsed:.1f} s on a 32x32 image (some {elapsed * 50:.0f} s on a 224x224 one): its parameters "
            f"are too large")


ZERO_WEIGHTS = "the p of its transforms sum to 0, so it could never choose one; give at least one a p above 0"

# Data an image-only pipeline never has (albumentations' target names, and the masks of CropNonEmptyMaskIfExists).
_NOT_IMAGE = ("bboxes", "mask", "masks", "keypoints", "volume", "volumes", "mask3d", "masks3d")


def _needs_more_than_an_image(t, A) -> str | None:
    """Why a built transform cannot run on an image alone, or None. General tests, no list of names: an abstract
    base class (no ``apply``); data it asks for (``targets_as_params``: reference images, masks, a box); no image
    target (3D transforms); or data its parameters are computed from (BBoxSafeRandomCrop reads the boxes)."""
    import numpy as np
    from albumentations.core.transforms_interface import BasicTransform

    targets = getattr(t, "_targets", ())
    targets = targets if isinstance(targets, tuple) else (targets,)
    if targets and not any(getattr(x, "name", "") == "IMAGE" for x in targets):
        return "works on 3D volumes, not on images"
    if type(t).apply is BasicTransform.apply:
        return "is an abstract base class, not a transform"
    wanted = list(getattr(t, "targets_as_params", []) or [])
    if wanted:
        return f"needs {', '.join(map(str, wanted))} besides the image (reference images, masks or boxes)"
    image = np.zeros((64, 64, 3), np.uint8)
    try:
        t.get_params_dependent_on_data(params={"shape": image.shape}, data={"image": image})
    except KeyError as exc:
        if exc.args and exc.args[0] in _NOT_IMAGE:
            return f"needs {exc.args[0]} besides the image"
    except Exception as exc:  # noqa: BLE001 -- parameters that depend on the image size are checked when it runs
        text = str(exc).lower()
        if any(word in text for word in ("mask", "bbox", "bounding box", "keypoint")):
            return f"needs masks, boxes or keypoints besides the image ({_one_line(exc)})"
    return None


def _check_image_only(compose, A, where: str, depth: int = 0, probe: bool = False) -> None:
    """Walk a built pipeline: every transform works on an image alone, no Compose expects boxes or keypoints,
    nesting is at most MAX_TRANSFORM_DEPTH; with ``probe``, each runs at a sane cost (``_too_slow``)."""
    if depth > MAX_TRANSFORM_DEPTH:
        raise RecipeError(f"transforms nested deeper than {MAX_TRANSFORM_DEPTH} levels ({where})")
    if getattr(compose, "processors", None):
        raise RecipeError(f"{type(compose).__name__} with bbox_params or keypoint_params: an image-classification "
                          f"dataset has no boxes or keypoints ({where})")
    for t in getattr(compose, "transforms", []):
        name = type(t).__name__
        if isinstance(t, A.SomeOf) and not 0 <= t.n <= MAX_SIDE:  # albumentations takes n = -1, then every row fails
            raise RecipeError(f"{name}: n = {t.n} is out of range: it is how many of its transforms to apply, from 0 "
                              f"to their number ({where})")
        if isinstance(t, A.BaseCompose):
            _check_image_only(t, A, where, depth + 1, probe)
            continue
        why = "runs Python functions, which a recipe cannot hold" if isinstance(t, A.Lambda) else \
            _needs_more_than_an_image(t, A)
        if why:
            raise RecipeError(f"{name} cannot be used: it {why}; a recipe's transforms get an image alone "
                              f"({where})")
        slow = _too_slow(t, A) if probe else None
        if slow:
            raise RecipeError(f"{name} cannot be used: it {slow} ({where})")


def _build_compact(items: Any, A, names: list[str], source: str, lines: dict, path: tuple, depth: int = 0,
                   limit: int = MAX_SIDE) -> list:
    if not isinstance(items, list):
        raise RecipeError(f"expected a list of transforms, got {type(items).__name__} ({_where(source, lines, path)})")
    if depth > MAX_TRANSFORM_DEPTH:
        raise RecipeError(f"transforms nested deeper than {MAX_TRANSFORM_DEPTH} levels ({_where(source, lines, path)})")
    built = []
    for i, item in enumerate(items):
        here = path + (i,)
        if isinstance(item, str):
            name, params = item, {}
        elif isinstance(item, dict) and len(item) == 1:
            name, params = next(iter(item.items()))
            params = {} if params is None else params
        else:
            raise RecipeError(f"each transform must be `- Name: {{param: value}}` or `- Name`, got {item!r} "
                              f"({_where(source, lines, here)})")
        if not isinstance(params, dict):
            raise RecipeError(f"parameters of {name} must be a mapping, got {params!r} ({_where(source, lines, here)})")
        cls = getattr(A, str(name), None)
        if name not in names or cls is None:
            raise RecipeError(f"unknown transform {name!r}{_closest(str(name), names)} "
                              f"({_where(source, lines, here + (name,))})")
        params = dict(params)
        if SIZE_GATE in params:  # augexpand's, not albumentations': checked here, applied by resolve_output
            _check_gate(params.pop(SIZE_GATE), _where(source, lines, here + (name, SIZE_GATE)))
        if issubclass(cls, A.BaseCompose):
            if "transforms" not in params:
                raise RecipeError(f"{name} needs a `transforms:` list ({_where(source, lines, here + (name,))})")
            params["transforms"] = _build_compact(params["transforms"], A, names, source, lines,
                                                  here + (name, "transforms"), depth + 1, limit)
            _check_numbers(name, {k: v for k, v in params.items() if k != "transforms"},
                           _where(source, lines, here + (name,)), limit=limit)
        elif "metadata_key" in _init_params(cls):
            raise RecipeError(f"{name} needs per-image reference data, which a recipe cannot supply "
                              f"({_where(source, lines, here + (name,))})")
        else:
            _check_numbers(name, params, _where(source, lines, here + (name,)), limit=limit)
        try:
            built.append(_construct(cls, params, strict=not issubclass(cls, A.BaseCompose)))
        except ZeroDivisionError:  # OneOf normalizes its transforms' p: all 0 would divide by their sum
            raise RecipeError(f"{name}: {ZERO_WEIGHTS} ({_where(source, lines, here + (name,))})") from None
        except NotImplementedError:
            raise RecipeError(f"{name} is an abstract base class, not a transform "
                              f"({_where(source, lines, here + (name,))})") from None
        except (ValueError, TypeError) as exc:
            bad = _albu_error_text(exc)
            key = bad.split(":", 1)[0].strip()
            where = here + (name, key) if key in params else here + (name,)
            if "are not valid for transform" in bad or "unexpected keyword argument" in bad:
                unknown = bad.split("'")[1] if "'" in bad else ""
                bad = f"unknown parameter {unknown!r}{_closest(unknown, list(_init_params(cls)))}"
                where = here + (name, unknown)
            raise RecipeError(f"{name}: {bad} ({_where(source, lines, where)})") from None
        except Exception as exc:  # noqa: BLE001 -- whatever odd parameters make a transform raise: one clean line
            raise RecipeError(f"{name}: {type(exc).__name__}: {_one_line(exc)} "
                              f"({_where(source, lines, here + (name,))})") from None
    return built


def _construct(cls: type, params: dict[str, Any], strict: bool):
    """``cls(**params)``, asking albumentations to refuse unknown parameters (``strict``) where the class takes
    that switch: MedianBlur, RandomRotate90, ToSepia and a few others do not (they refuse unknown ones anyway)."""
    if not strict:
        return cls(**params)
    try:
        return cls(**params, strict=True)
    except TypeError as exc:
        if "'strict'" not in str(exc):
            raise
    return cls(**params)


def _init_params(cls: type) -> dict[str, Any]:
    import inspect

    return {k: v for k, v in inspect.signature(cls.__init__).parameters.items() if k not in ("self", "kwargs")}


def build_pipeline(pipeline: list[Any] | dict[str, Any], source: str = "<recipe>", lines: dict | None = None,
                   on_warning=None, probe: bool = False, limit: int = MAX_SIDE):
    """Build an ``A.Compose`` from the compact list form or from albumentations' serialized form.

    albumentations' warnings never reach stderr as Python warnings: each distinct one goes to ``on_warning``
    (one line of text; ``load_recipe`` logs them) or is dropped (a worker building a validated recipe again).
    ``probe``: run each transform on a tiny image first, refusing one too slow or too hungry (``load_recipe``).
    ``limit``: the largest number a transform may be given (MAX_SIDE; more where `output` sizes follow an image
    larger than that, as ``native_limit`` says)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        built = _build_pipeline(pipeline, source, lines, probe, limit)
    if on_warning is not None:
        for text in dict.fromkeys(_printable(_one_line(w.message)) for w in caught):
            on_warning(text)
    return built


def native_limit(shape: tuple[int, int]) -> int:
    """The largest number a pipeline whose `output` sizes follow an image of this (height, width) may hold: MAX_SIDE,
    or twice the image's long side (a panorama, a 61-megapixel photo, made at its native size: `output*1.15`)."""
    return max(MAX_SIDE, 2 * max(shape))


def _build_pipeline(pipeline: list[Any] | dict[str, Any], source: str = "<recipe>", lines: dict | None = None,
                    probe: bool = False, limit: int = MAX_SIDE):
    A = import_albumentations()
    lines = lines or {}
    where = _where(source, lines, ("pipeline",))
    if isinstance(pipeline, dict):
        if "transform" not in pipeline and "__class_fullname__" not in pipeline:  # `pipeline: {Flip: {}}`: no dash
            keys = ", ".join(map(str, list(pipeline)[:3]))
            raise RecipeError(f"pipeline is a mapping ({_printable(keys)[:80]}) but not albumentations' serialized "
                              f"form (no __class_fullname__): write the transforms as a list, one '- Name: {{...}}' "
                              f"line each ({where})")
        serialized = pipeline if "transform" in pipeline else {"transform": pipeline}
        _check_numbers("serialized pipeline", serialized, where, limit=limit)
        # A.from_dict imports albumentations.pytorch (and so torch: 2-6 s, in every worker) whenever torch is
        # installed, only to register ToTensorV2, which makes no image to write. Keep it out unless already loaded.
        blocked = "albumentations.pytorch" not in sys.modules
        if blocked:
            sys.modules["albumentations.pytorch"] = None  # type: ignore[assignment]  # its import: ImportError
        try:
            built = A.from_dict(serialized)
        except ZeroDivisionError:
            raise RecipeError(f"serialized pipeline: OneOf: {ZERO_WEIGHTS} ({where})") from None
        except NotImplementedError:
            raise RecipeError(f"serialized pipeline: it holds an abstract base class (BasicTransform, DualTransform, "
                              f"ImageOnlyTransform), not a transform ({where})") from None
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            text = _albu_error_text(exc)
            if isinstance(exc, KeyError) or "not found" in text or "Wrong name" in text:
                names = _transform_names(A)
                bad = text.strip("'\" ").split()[-1].strip("'\".")
                text = f"unknown transform {bad!r}{_closest(bad, names)}"
            raise RecipeError(f"serialized pipeline: {_one_line(text)} ({where})") from None
        except Exception as exc:  # noqa: BLE001 -- whatever a crafted serialized dict makes albumentations raise
            raise RecipeError(f"serialized pipeline: {type(exc).__name__}: {_one_line(exc)} ({where})") from None
        finally:
            if blocked:
                sys.modules.pop("albumentations.pytorch", None)
        built = built if isinstance(built, A.Compose) else A.Compose([built])
    else:
        built = A.Compose(_build_compact(pipeline, A, _transform_names(A), source, lines, ("pipeline",), limit=limit))
    _check_image_only(built, A, where, probe=probe)
    return built
