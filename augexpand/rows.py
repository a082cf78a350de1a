"""Making one row's image in memory, and writing it: the worker side of an expansion, shared by expand and preview.

A ``RowMaker`` lives in one worker process. It holds the recipe's albumentations pipeline and a bounded cache of
decoded sources, and runs a task (a partner group's rows) at a time: every row draws all of its randomness from
its own generator (seed, row index), so the bytes do not depend on which worker runs it, or when.
"""

from __future__ import annotations

import json
import random
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from augexpand.destination import OutputWriteError, append_journal, write_output
from augexpand.errors import ImageReadError
from augexpand.folder import decode_image, encode_image
from augexpand.mixing import MIXERS, smote_interpolate, soft_label
from augexpand.plan import Row, row_seed
from augexpand.policies import make_policy
from augexpand.recipe import (
    AutoSize,
    Recipe,
    build_pipeline,
    has_size_gates,
    native_limit,
    resolve_output,
    resolve_sizes,
)

__all__ = ["CACHE_BYTES", "CACHE_CAP", "RowContext", "RowMaker", "fit_to_size"]

# Decoded images a worker keeps while it runs one task (a partner group): all of the group's images (each decoded
# once for all the rows that use it), at least CACHE_BYTES, at most CACHE_CAP (native-size camera photos: 36 MB each).
CACHE_BYTES = 128 << 20
CACHE_CAP = 768 << 20
PIPELINES_KEPT = 64  # native sizes with `output` sizes in the pipeline: pipelines kept, one per image size


def fit_to_size(image: np.ndarray, size: tuple[int, int] | None, mode: str = "crop") -> np.ndarray:
    """Resize to (height, width): ``crop`` scales the short side and centre-crops, ``stretch`` resizes exactly.

    Shrinking by more than 2x averages pixels (INTER_AREA, no aliasing); otherwise bilinear, 10x cheaper.
    """
    import cv2

    if size is None or image.shape[:2] == tuple(size):
        return image
    h, w = image.shape[:2]
    th, tw = size
    if mode == "stretch":
        scale = min(th / h, tw / w)
        interp = cv2.INTER_AREA if scale < 0.5 else cv2.INTER_LINEAR
        return cv2.resize(image, (tw, th), interpolation=interp)
    scale = max(th / h, tw / w)
    nh, nw = max(th, round(h * scale)), max(tw, round(w * scale))
    interp = cv2.INTER_AREA if scale < 0.5 else cv2.INTER_LINEAR
    if nh * nw > 4 * th * tw:  # a far other aspect (a 1x65535 strip: 9.9 GB scaled whole): cut the centre first
        ch, cw = min(h, max(1, round(th / scale))), min(w, max(1, round(tw / scale)))
        y0, x0 = (h - ch) // 2, (w - cw) // 2
        return cv2.resize(np.ascontiguousarray(image[y0:y0 + ch, x0:x0 + cw]), (tw, th), interpolation=interp)
    resized = cv2.resize(image, (nw, nh), interpolation=interp) if (nh, nw) != (h, w) else image
    y0, x0 = (nh - th) // 2, (nw - tw) // 2
    return np.ascontiguousarray(resized[y0:y0 + th, x0:x0 + tw])


@dataclass(frozen=True)
class RowContext:
    """Everything a worker needs, sent once per worker."""

    src: str
    dst: str
    rels: list[str]
    labels: list[int]
    classes: list[str]
    recipe: Recipe
    scales: tuple[int, ...] = ()  # each source's decode scale (decodescale.decode_scales); empty: all 1
    sizes: tuple[tuple[int, int], ...] = ()  # each source's decoded (height, width), for the cache's budget
    tag: str = ""  # the run's prefix of temporary file and journal names
    journal: str = ""  # where workers journal what they write (``<journal><tag><host>-<pid>.jsonl``); "": nowhere


class RowMaker:
    """Executes rows. One per process; holds the pipeline and a bounded cache of decoded sources."""

    def __init__(self, ctx: RowContext, decoded: dict[int, np.ndarray] | None = None) -> None:
        """``decoded``: source index -> the image as ``load`` would decode it (planning decoded it already); each
        is used once, in place of its decode, then let go (a forked worker's copy: the parent keeps its own)."""
        import cv2

        cv2.setNumThreads(1)  # scale with processes, not threads: and the same arithmetic for any --workers
        self.ctx = ctx
        # A recipe whose sizes still follow the data (not yet resolve_output'ed) gets its nominal sizes.
        recipe = ctx.recipe
        unresolved = isinstance(recipe.output.size, AutoSize) or recipe.output.format == "auto" or \
            has_size_gates(recipe.pipeline)
        self.recipe = resolve_output(recipe) if unresolved else recipe
        self.pipeline = None
        if self.recipe.pipeline and not self.recipe.sizes_per_image:
            self.pipeline = build_pipeline(self.recipe.pipeline)
        self.pipelines: OrderedDict[tuple[int, int], Any] = OrderedDict()  # native sizes: one per image size
        self.policy = make_policy(self.recipe.policy)
        self.decoded = dict(decoded or {})
        self.failed: dict[int, ImageReadError] = {}  # sources that did not decode: each is tried once
        self.cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self.cached_bytes = 0
        self.cache_budget = CACHE_BYTES
        self.cache_key: object = None
        self.n_classes = len(ctx.classes)

    def load(self, i: int) -> np.ndarray:
        """Decode source ``i`` (read-only array; cached, least recently used goes first)."""
        image = self.cache.get(i)
        if image is not None:
            self.cache.move_to_end(i)
            return image
        if i in self.failed:
            raise self.failed[i]
        image = self.decoded.pop(i, None)
        if image is None:
            try:
                image = decode_image(Path(self.ctx.src) / self.ctx.rels[i], self.ctx.scales[i] if self.ctx.scales else 1)
            except ImageReadError as exc:
                self.failed[i] = exc
                raise
        image.flags.writeable = False  # a transform that writes into its input would corrupt later rows
        self.cache[i] = image
        self.cached_bytes += image.nbytes
        while self.cached_bytes > self.cache_budget and len(self.cache) > 1:
            _, old = self.cache.popitem(last=False)
            self.cached_bytes -= old.nbytes
        return image

    def augment(self, image: np.ndarray, rng: np.random.Generator, params: dict[str, Any] | None = None
                ) -> np.ndarray:
        """The recipe's pipeline, then its policy, on one image; the policy's ops (``[name, value]`` pairs) go to
        ``params["policy"]``."""
        pipeline = self.pipeline_for(image.shape[:2])
        # albumentations' warnings (UserWarning: "The image is already an RGB."): the recipe's trial run on loading
        # said each in one line; here they would print again, in every worker, with a line of its source code
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if pipeline is not None:
                # One generator pair shared by every transform of the pipeline, drawn from the row's own stream: 8x
                # cheaper per row than set_random_seed, which seeds two new generators for each transform.
                pipeline.set_random_state(rng, random.Random(int(rng.integers(1 << 53))))
                image = pipeline(image=image)["image"]
            if self.policy is not None:
                image, ops = self.policy(image, rng)
                if params is not None:
                    params["policy"] = ops
        return image

    def pipeline_for(self, shape: tuple[int, int]):
        """The pipeline for an image of this (height, width): the recipe's, or, when its `output` sizes follow each
        image's native size, one built for that size (the last PIPELINES_KEPT sizes are kept)."""
        if not self.recipe.sizes_per_image:
            return self.pipeline
        key = (int(shape[0]), int(shape[1]))
        pipeline = self.pipelines.get(key)
        if pipeline is None:
            pipeline = build_pipeline(resolve_sizes(self.recipe.pipeline, key, self.recipe.source),
                                      limit=native_limit(key))
            self.pipelines[key] = pipeline
            if len(self.pipelines) > PIPELINES_KEPT:
                self.pipelines.popitem(last=False)
        self.pipelines.move_to_end(key)
        return pipeline

    def run_task(self, rows: list[Row], key: object = None) -> list[dict[str, Any]]:
        """Run a task's rows. A task of another partner group (``key``) than the last one starts with an empty
        cache (the last group's images are not needed again); a further piece of the same group keeps it."""
        if key is None or key != self.cache_key:
            self.cache.clear()
            self.cached_bytes = 0
            self.cache_key = key
            self.cache_budget = CACHE_BYTES
        if self.ctx.sizes:  # room for every image the task uses, within the cap
            used = {s for row in rows if row.split != "val" for s in row.sources}
            need = sum(3 * self.ctx.sizes[s][0] * self.ctx.sizes[s][1] for s in used)
            self.cache_budget = max(self.cache_budget, min(CACHE_CAP, need))
        # Without partners (every row has one source), an image is not needed after its own rows: let it go at
        # once, so that the next decode reuses its memory (32 images kept alive cost 0.3 ms more per decode).
        last_use = {row.sources[0]: k for k, row in enumerate(rows)} if all(len(r.sources) == 1 for r in rows) else {}
        out = []
        for k, row in enumerate(rows):
            if k and last_use.get(rows[k - 1].sources[0]) == k - 1:
                self._forget(rows[k - 1].sources[0])
            try:
                out.append(self.run_row(row))
            except OutputWriteError as exc:  # the destination's fault (disk full, a link): the run stops
                out.append({"row": row.index, "error": str(exc), "source": self.ctx.rels[row.sources[0]],
                            "unreadable": False, "write": True})
            except ImageReadError as exc:
                bad = next((s for s in row.sources if self._unreadable(s)), row.sources[0])
                out.append({"row": row.index, "error": str(exc), "source": self.ctx.rels[bad], "unreadable": True})
            except Exception as exc:  # noqa: BLE001 -- a recipe that fails on this image (a crop larger than it)
                message = f"{type(exc).__name__}: {exc}".splitlines()[0]
                out.append({"row": row.index, "error": message, "source": self.ctx.rels[row.sources[0]],
                            "unreadable": False})
        return out

    def _forget(self, i: int) -> None:
        image = self.cache.pop(i, None)
        if image is not None:
            self.cached_bytes -= image.nbytes

    def _unreadable(self, i: int) -> bool:
        try:
            self.load(i)
        except ImageReadError:
            return True
        return False

    def run_row(self, row: Row) -> dict[str, Any]:
        """Make one output image and write it; return its manifest record."""
        ctx, recipe = self.ctx, self.recipe
        seed = row_seed(recipe.seed, row.index)
        if row.split == "val":
            return self._copy_val(row, soft_label([ctx.labels[row.sources[0]]], [1.0], self.n_classes), seed)
        image, target, params = self.make_image(row, seed)
        folder = ctx.classes[int(np.argmax(target))]
        data = encode_image(np.ascontiguousarray(image), recipe.output.format, recipe.output.quality,
                            recipe.output.png_compression)
        return self._write("train", self._record(row, folder, target, seed, params), data)

    def make_image(self, row: Row, seed: int | None = None) -> tuple[np.ndarray, list[float], dict[str, Any]]:
        """Make one training row's image in memory, writing nothing: (image, soft label, the op's parameters).

        Everything it draws comes from the row's own generator, so ``augexpand preview`` shows exactly the
        image ``expand`` writes for the same row (before encoding). ``seed``: the row's seed when already known."""
        ctx, recipe = self.ctx, self.recipe
        size, fit = recipe.output.size, recipe.output.fit
        rng = np.random.default_rng(row_seed(recipe.seed, row.index) if seed is None else seed)
        params: dict[str, Any] = {}
        labels = [ctx.labels[s] for s in row.sources]
        target = soft_label(labels[:1], [1.0], self.n_classes)

        if row.op == "original":
            image = fit_to_size(self.load(row.sources[0]), size, fit)
        elif row.op == "augment":
            image = fit_to_size(self.augment(self.load(row.sources[0]), rng, params), size, fit)
        elif row.op == "duplicate":
            image = self.load(row.sources[0])
            if recipe.oversample is not None and recipe.oversample.augment:
                image = self.augment(image, rng)
            image = fit_to_size(image, size, fit)
        elif row.op == "smote":
            a, b = (self.load(s) for s in row.sources)
            a = fit_to_size(a, size, fit)
            b = fit_to_size(b, a.shape[:2], fit)
            gap = float(rng.random())
            image = smote_interpolate(a, b, gap)
            params.update(lam=1.0 - gap, gap=gap)
            if recipe.oversample is not None and recipe.oversample.augment:
                image = fit_to_size(self.augment(image, rng), size, fit)
        elif row.op in MIXERS:
            spec = getattr(recipe.mix, row.op)
            images = [self.load(s) for s in row.sources]
            if spec.augment_inputs:
                images = [self.augment(im, rng) for im in images]
            shape = size or images[0].shape[:2]
            images = [fit_to_size(im, shape, fit) for im in images]
            image, target, params = MIXERS[row.op].mix(images, labels, self.n_classes, spec, rng)
        else:
            raise ValueError(f"unknown op {row.op!r}")
        return image, target, params

    def _copy_val(self, row: Row, target: list[float], seed: int) -> dict[str, Any]:
        src = Path(self.ctx.src) / self.ctx.rels[row.sources[0]]
        folder = self.ctx.classes[row.label]
        # copied untouched, but only if its pixels decode (a header that reads is not enough: a float TIFF, a
        # lossless JPEG or a damaged scan would reach val/ as an image no loader reads); a JPEG at 1/8: fast
        decode_image(src, 8)
        return self._write("val", self._record(row, folder, target, seed, {}), src)

    def _write(self, split: str, record: dict[str, Any], data: bytes | Path) -> dict[str, Any]:
        """Write a row's file; its record, with what was written, goes to the journal before the file gets its
        name (so a run killed at any moment has journaled every file it left). Returns the record."""
        ctx = self.ctx
        folder, name = record["file_name"].split("/", 1)

        def journal(written: dict[str, Any]) -> None:
            record["written"] = written
            if ctx.journal:
                append_journal(ctx.journal, ctx.tag, record)

        write_output(ctx.dst, split, folder, name, data, ctx.tag, journal)
        return record

    def _record(self, row: Row, folder: str, target: list[float], seed: int, params: dict) -> dict[str, Any]:
        """A metadata.jsonl row. Every row has the same keys and types (Hugging Face's loader infers one schema
        from the first rows): ``lam`` is the first image's share of the pixels (1.0 when nothing was mixed),
        and the op's other parameters are a JSON object in the string ``params``."""
        params = dict(params)
        lam = float(params.pop("lam", 1.0))
        return {
            "file_name": f"{folder}/{row.name}",
            "label": folder,
            "soft_label": target,
            "op": row.op,
            "sources": [self.ctx.rels[s] for s in row.sources],
            "lam": lam,
            "params": json.dumps(params, separators=(",", ":")),
            "seed": seed,
            "row": row.index,
            "split": row.split,
        }
