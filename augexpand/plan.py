"""What to make: one row per output image, decided before any pixel is touched.

A row names its op, its source images, its output name and its index; all of its randomness derives from
(seed, index) alone. That is what makes the output byte-identical for any number of workers, lets ``--dry-run``
count without decoding, ``--resume`` skip finished rows, and a run be split into shards.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from augexpand.decodescale import decode_scales
from augexpand.errors import AugexpandError, RecipeError
from augexpand.folder import OUTPUT_EXTENSIONS, ScanResult
from augexpand.mixing import MIXERS
from augexpand.recipe import Recipe

__all__ = [
    "MAX_BYTES",
    "MAX_IMAGES",
    "MAX_ROWS",
    "OPS",
    "PARTNER_GROUP",
    "Plan",
    "PlanTooLarge",
    "Row",
    "RowSelection",
    "Rows",
    "check_plan_size",
    "folder_counts",
    "make_plan",
    "planned_size",
    "row_rng",
    "row_seed",
]

# Every op a row can have, in the order rows are planned.
OPS = ("original", "augment", "smote", "duplicate", *MIXERS)

# Streams of randomness that are not a row's own (a row's own stream is SeedSequence([seed, index])).
_VAL_STREAM = 1_000_001
_PLAN_STREAM = 1_000_002
_GROUP_STREAM = 1_000_003
_FOLDER_STREAM = 1_000_004

# Mixing partners are drawn from the first image's partner group: a seeded random set of this many training
# images, like mixup within a minibatch. A worker runs a whole group at once, so it decodes each image of the
# group once for all the rows that use it, and memory does not grow with the number of source images.
PARTNER_GROUP = 32
MIN_GROUP_CHOICE = 4  # fewer allowed partners than this in the group: draw from the whole pool (more variety)

# How much a run may write without --allow-large, and how many rows a plan may hold at all (a few hundred bytes of
# memory each). A recipe's own counts are bounded too (augexpand.recipe.MAX_COPIES, ...), but copies: 100 on a
# million sources is within them and would write 100 million images.
MAX_IMAGES = 1_000_000
MAX_BYTES = 100 * 10**9
MAX_ROWS = 20_000_000

# Bytes per pixel of an encoded output image, for the plan's estimate (photos at quality 95: JPEG ~0.6, WebP ~0.4;
# PNG at level 1 with the Huffman-only strategy ~2.2, about 3 bytes of raw RGB less a quarter).
_BYTES_PER_PIXEL = {"jpg": 0.6, "webp": 0.4, "png": 2.2, "auto": 2.2}  # auto: unresolved, the larger


class PlanTooLarge(AugexpandError):
    """A plan that would write more than MAX_IMAGES images or MAX_BYTES bytes (without --allow-large), or hold more
    than MAX_ROWS rows at all."""


def row_seed(seed: int, index: int) -> int:
    """The 53-bit seed of row ``index`` (exact in JSON readers everywhere)."""
    words = np.random.SeedSequence([seed, index]).generate_state(2, np.uint32)
    return int((int(words[0]) << 21) ^ int(words[1])) & ((1 << 53) - 1)


def row_rng(seed: int, index: int) -> np.random.Generator:
    """The generator a row draws all of its randomness from."""
    return np.random.default_rng(row_seed(seed, index))


@dataclass(frozen=True, slots=True)
class Row:
    """One output image to make."""

    index: int
    op: str  # one of OPS
    label: int  # the class of the first source (a mixed image's folder is decided by its soft label)
    sources: tuple[int, ...]  # indices into the scan's sources; the first is the row's own image
    name: str  # output file name without folder, e.g. "IMG_0042__mixup_3.jpg"
    split: str = "train"  # "train" or "val" (val rows are untouched copies)


@dataclass
class Plan:
    """All rows of a run, and what was decided on the way."""

    rows: Rows  # a Sequence[Row]
    train_sources: list[int]
    val_sources: list[int]
    oversample_counts: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    groups: dict[int, int] = field(default_factory=dict)  # source index -> its partner group (val: its own)
    decode_scale: list[int] = field(default_factory=list)  # source index -> 1, 2, 4 or 8 (decodescale.py)

    def counts(self, classes: list[str], split: str = "train") -> dict[str, dict[str, int]]:
        """Planned rows per class and op (mixed rows counted under their first source's class)."""
        rows = self.rows
        keep = rows.val == (split == "val")
        table = np.bincount(rows.label[keep].astype(np.int64) * len(OPS) + rows.op[keep],
                            minlength=len(classes) * len(OPS)).reshape(len(classes), len(OPS))
        return {name: {op: int(table[c, o]) for o, op in enumerate(OPS) if table[c, o]}
                for c, name in enumerate(classes)}


def _split_val(scan: ScanResult, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Stratified hold-out of source images: round(fraction * n) per class, keeping at least one for training.

    Byte-identical sources (``scan.duplicates()``) are never split apart, so no held-out image is also a training
    image under another name: in a class holding some, its copies are held out together or not at all (as many
    images as fit in the class's share), and copies in several classes that the draw split go to training."""
    if fraction <= 0:
        return list(range(len(scan.sources))), []
    rng = np.random.default_rng([seed, _VAL_STREAM])
    by_class: dict[int, list[int]] = {}
    for i, s in enumerate(scan.sources):
        by_class.setdefault(s.label, []).append(i)
    duplicates = scan.duplicates()
    group_of = {i: g for g, members in enumerate(duplicates) for i in members}
    train, val = [], []
    for label in sorted(by_class):
        members = by_class[label]
        n_val = min(int(np.floor(fraction * len(members) + 0.5)), len(members) - 1)
        if not any(i in group_of for i in members):
            chosen = set(rng.choice(len(members), size=n_val, replace=False).tolist()) if n_val else set()
            for j, i in enumerate(members):
                (val if j in chosen else train).append(i)
            continue
        by_unit: dict[int, list[int]] = {}  # a group's copies in this class (its number), or one image (-1 - i)
        for i in members:
            by_unit.setdefault(group_of.get(i, -1 - i), []).append(i)
        units = list(by_unit.values())
        held = 0
        for unit in (units[u] for u in rng.permutation(len(units)).tolist()):
            side = val if held + len(unit) <= n_val else train
            held += len(unit) if side is val else 0
            side.extend(unit)
    held_out = set(val)
    for members in duplicates:  # copies in several classes, some held out and some not: all to training
        if any(i in held_out for i in members) and not all(i in held_out for i in members):
            held_out.difference_update(members)
    if len(held_out) < len(val):
        train, val = list(set(range(len(scan.sources))) - held_out), list(held_out)
    return sorted(train), sorted(val)


def _partner_groups(train: list[int], val: list[int], seed: int) -> dict[int, int]:
    """Split the training sources into seeded random groups of about PARTNER_GROUP (a short last group joins the
    one before it); validation sources get groups of their own, in order."""
    order = np.random.default_rng([seed, _GROUP_STREAM]).permutation(len(train))
    n_groups = max(1, int(round(len(train) / PARTNER_GROUP)))
    groups = {train[int(j)]: min(k // PARTNER_GROUP, n_groups - 1) for k, j in enumerate(order)}
    for k, i in enumerate(val):
        groups[i] = n_groups + k // PARTNER_GROUP
    return groups


class _Names:
    """Unique output names: ``<stem>__<op>_<k><ext>``, k counting per (stem, op)."""

    def __init__(self, ext: str) -> None:
        self.ext = ext
        self.used: set[str] = set()
        self.counter: Counter = Counter()

    def take(self, stem: str, op: str, ext: str | None = None) -> str:
        ext = ext or self.ext
        if op == "original":
            base = stem
        else:
            base = f"{stem}__{op}_{self.counter[stem, op]}"
            self.counter[stem, op] += 1
        name, n = f"{base}{ext}", 1
        while name.lower() in self.used:
            n += 1
            name = f"{base}-{n}{ext}"
        self.used.add(name.lower())
        return name


def _size_of(path: Path) -> int:
    """A source file's size in bytes; 0 for one gone since the scan (its row names it when it fails to copy)."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


def mix_rows(spec, class_sizes: list[int]) -> list[int]:
    """Rows a mixing method makes per class, for classes of ``class_sizes`` training images (in class order).

    ``per: class``: ``count`` each (a class with images). ``per: image``: ``count`` per image over all classes,
    ``round(count * total)`` in all, each class within one row of its share ``count * size``: the running total
    is rounded (halves up), so 0.5 on a thousand one-image classes makes 500 rows, where rounding each class on
    its own made none."""
    if spec.per == "class":
        return [int(spec.count) if n else 0 for n in class_sizes]
    running = np.floor(np.cumsum(np.asarray(class_sizes, dtype=np.float64) * spec.count) + 0.5).astype(np.int64)
    return np.diff(running, prepend=0).tolist()


def planned_size(scan: ScanResult, recipe: Recipe, val_fraction: float = 0.0) -> tuple[int, int, int]:
    """How many training images and val copies a plan of this recipe makes, and about how many bytes they take,
    by arithmetic alone (no row is built, no image read): what ``make_plan`` makes, counted as it counts."""
    sizes: dict[int, int] = Counter(s.label for s in scan.sources)
    n_val = {c: min(int(np.floor(val_fraction * n + 0.5)), n - 1) if val_fraction > 0 else 0 for c, n in sizes.items()}
    train = {c: n - n_val[c] for c, n in sizes.items()}
    rows = 0
    for n in train.values():
        kept = n if recipe.keep_originals else 0
        n_aug = recipe.copies * n
        if recipe.target_per_class is not None:
            n_aug = max(n_aug, recipe.target_per_class - kept)
        rows += kept + n_aug
    for spec in recipe.mix.enabled().values():
        rows += sum(mix_rows(spec, [train[c] for c in sorted(train)]))
    if recipe.oversample is not None:
        counts = {scan.classes[c]: n for c, n in train.items() if n}
        rows += sum(_oversample_counts(counts, recipe.oversample.sampling_strategy).values())
    size = recipe.output.size if isinstance(recipe.output.size, tuple) else None
    pixels = size[0] * size[1] if size else (sum(s.width * s.height for s in scan.sources) / max(1, len(scan.sources)))
    estimate = rows * pixels * _BYTES_PER_PIXEL[recipe.output.format]
    val_rows = sum(n_val.values())
    if val_rows:  # untouched copies of the sources: their own size, on average
        estimate += val_rows * sum(_size_of(scan.root / s.rel) for s in scan.sources[:1000]) \
            / min(len(scan.sources), 1000)
    return rows, val_rows, int(estimate)


def check_plan_size(scan: ScanResult, recipe: Recipe, val_fraction: float = 0.0,
                    allow_large: bool = False) -> tuple[int, int, int]:
    """Refuse, before any row is built, a plan that would write more than MAX_IMAGES images or MAX_BYTES bytes
    (unless ``allow_large``), or hold more than MAX_ROWS rows (always). Returns ``planned_size``'s answer."""
    rows, val_rows, estimate = planned_size(scan, recipe, val_fraction)
    what = (f"{recipe.source} would make {rows:,} training images{f' and {val_rows:,} val copies' if val_rows else ''}"
            f" from {len(scan.sources):,} source images, about {estimate / 1e9:,.1f} GB")
    if rows + val_rows > MAX_ROWS:
        raise PlanTooLarge(f"{what}: more than the {MAX_ROWS:,} a plan can hold",
                           hint="lower copies, target_per_class or the mix counts, or split the source folder")
    if not allow_large and (rows + val_rows > MAX_IMAGES or estimate > MAX_BYTES):
        raise PlanTooLarge(f"{what}: over the limit of {MAX_IMAGES:,} images or {MAX_BYTES / 1e9:.0f} GB",
                           hint="pass --allow-large if that is what you want")
    return rows, val_rows, estimate


class Rows(Sequence[Row]):
    """The rows of a plan, stored as columns (a few bytes a row, not a few hundred): ``Row`` objects are made when
    one is looked at. Output names are made then too, from the source's stem, the op and the row's count ``k``
    among the rows of the same (source, op), exactly as ``_Names`` would; where a name could collide (a stem that
    itself contains ``__``, as when an expanded set is expanded again), every name is made once with ``_Names``."""

    def __init__(self, scan: ScanResult, ext: str, op: np.ndarray, label: np.ndarray, sources: np.ndarray,
                 k: np.ndarray, val: np.ndarray) -> None:
        self.op, self.label, self.sources, self.k, self.val = op, label, sources, k, val
        self.n_sources = (sources >= 0).sum(axis=1).astype(np.uint8)
        self.stems = [s.stem for s in scan.sources]
        self.val_ext = {i: Path(scan.sources[i].rel).suffix.lower() for i in np.unique(sources[val, 0]).tolist()}
        self.ext = ext
        self.names: list[str] | None = None
        if any("__" in self.stems[i] for i in np.unique(sources[~val & (op == 0), 0]).tolist()):
            names, val_names = _Names(ext), _Names("")
            self.names = [val_names.take(self.stems[s], "original", self.val_ext[s]) if v else
                          names.take(self.stems[s], OPS[o]) for s, o, v in
                          zip(sources[:, 0].tolist(), op.tolist(), val.tolist())]

    def __len__(self) -> int:
        return len(self.op)

    def name(self, i: int) -> str:
        if self.names is not None:
            return self.names[i]
        first, op = int(self.sources[i, 0]), int(self.op[i])
        if self.val[i]:
            return self.stems[first] + self.val_ext[first]
        if op == 0:
            return self.stems[first] + self.ext
        return f"{self.stems[first]}__{OPS[op]}_{int(self.k[i])}{self.ext}"

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return Row(i, OPS[int(self.op[i])], int(self.label[i]),
                   tuple(self.sources[i, :self.n_sources[i]].tolist()), self.name(i),
                   "val" if self.val[i] else "train")

    def __iter__(self) -> Iterator[Row]:
        return (self[i] for i in range(len(self)))

    def take(self, indices: np.ndarray) -> RowSelection:
        """The rows at ``indices``, made into ``Row`` objects only when iterated, or pickled (as a list)."""
        return RowSelection(self, np.asarray(indices, dtype=np.int64))


class RowSelection(Sequence[Row]):
    """Some rows of a plan, lazily: what a task holds until it is sent to a worker (then a plain list of rows)."""

    def __init__(self, rows: Rows, indices: np.ndarray) -> None:
        self.rows, self.indices = rows, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self.rows[int(j)] for j in self.indices[i]]
        return self.rows[int(self.indices[i])]

    def __iter__(self) -> Iterator[Row]:
        return (self.rows[j] for j in self.indices.tolist())

    def __reduce__(self):
        return list, (list(self),)


def _uniform(seed: int, stream: int, rows: np.ndarray, draw: int = 0) -> np.ndarray:
    """Uniform [0, 1) numbers, one per row, from (seed, stream, row, draw) alone: a counter-based hash
    (SplitMix64's finaliser), vectorised, so that planning a row's partners costs no generator of its own."""
    with np.errstate(over="ignore"):
        x = np.asarray(rows, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        x ^= np.uint64((seed * 0xD1B54A32D192ED03 + stream * 0x8CB92BA72F3D8DD7 + draw * 0x94D049BB133111EB)
                       & 0xFFFFFFFFFFFFFFFF)
        for shift, mult in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB)):
            x ^= x >> np.uint64(shift)
            x *= np.uint64(mult)
        x ^= x >> np.uint64(31)
    return (x >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _pick(u: np.ndarray, count: np.ndarray) -> np.ndarray:
    """floor(u * count) as positions (count >= 1)."""
    return np.minimum((u * count).astype(np.int64), np.maximum(count - 1, 0))


class _Builder:
    """Rows appended a block at a time (numpy columns), joined once at the end."""

    WIDTH = max(m.n_inputs for m in MIXERS.values())

    def __init__(self) -> None:
        self.blocks: list[tuple] = []
        self.n = 0

    def add(self, op: str, label: np.ndarray | int, sources: np.ndarray, k: np.ndarray, val: bool = False) -> None:
        if not len(k):
            return
        sources = np.asarray(sources, dtype=np.int32).reshape(len(k), -1)
        padded = np.full((len(k), self.WIDTH), -1, dtype=np.int32)
        padded[:, :sources.shape[1]] = sources
        labels = np.broadcast_to(np.asarray(label, dtype=np.int32), (len(k),))
        self.blocks.append((np.full(len(k), OPS.index(op), np.uint8), labels, padded, np.asarray(k, np.int32),
                            np.full(len(k), val)))
        self.n += len(k)

    def rows(self, scan: ScanResult, ext: str) -> Rows:
        if not self.blocks:
            empty = np.zeros(0, np.int32)
            return Rows(scan, ext, np.zeros(0, np.uint8), empty, np.zeros((0, self.WIDTH), np.int32), empty,
                        np.zeros(0, bool))
        cols = [np.concatenate(c) for c in zip(*self.blocks)]
        return Rows(scan, ext, *cols)


def _occurrence(values: np.ndarray) -> np.ndarray:
    """For each element, how many equal elements come before it."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    starts = np.r_[0, np.flatnonzero(sorted_values[1:] != sorted_values[:-1]) + 1]
    run_start = np.repeat(starts, np.diff(np.r_[starts, len(values)]))
    out = np.empty(len(values), dtype=np.int64)
    out[order] = np.arange(len(values)) - run_start
    return out


def make_plan(scan: ScanResult, recipe: Recipe, val_fraction: float = 0.0,
              imap: Callable[[Callable, Iterable], Iterable] = map, allow_large: bool = True) -> Plan:
    """Plan every output row of an expansion. ``imap`` runs the SMOTE descriptor pass (a pool's imap, or map).

    A plan over MAX_ROWS rows is refused before it is built (``check_plan_size``; with ``allow_large`` False, over
    MAX_IMAGES images or MAX_BYTES bytes too). Vectorised: rows are made a block at a time (an op and a class), so
    a million sources plan in seconds."""
    check_plan_size(scan, recipe, val_fraction, allow_large)
    seed = recipe.seed
    train, val = _split_val(scan, val_fraction, seed)
    groups = _partner_groups(train, val, seed)
    n_classes = len(scan.classes)
    label_of = np.fromiter((s.label for s in scan.sources), dtype=np.int64, count=len(scan.sources))
    everyone = np.asarray(train, dtype=np.int64)  # ascending
    by_class = {c: everyone[label_of[everyone] == c] for c in range(n_classes)} if len(everyone) else \
        {c: everyone for c in range(n_classes)}
    out = _Builder()
    notes: list[str] = []

    # Untouched validation copies.
    val_arr = np.asarray(val, dtype=np.int64)
    out.add("original", label_of[val_arr], val_arr, np.zeros(len(val_arr), np.int64), val=True)

    # Originals and augmented copies: copies per source, or more to reach a class's target count.
    for label, members in by_class.items():
        m = len(members)
        if recipe.keep_originals:
            out.add("original", label, members, np.zeros(m, np.int64))
        if not m:
            continue
        n_aug = recipe.copies * m
        if recipe.target_per_class is not None:
            n_aug = max(n_aug, recipe.target_per_class - (m if recipe.keep_originals else 0))
        j = np.arange(n_aug)
        out.add("augment", label, members[j % m], j // m)

    # Minority oversampling: counts from imbalanced-learn, partners among each image's nearest neighbours.
    counts: dict[str, int] = {}
    if recipe.oversample is not None:
        spec = recipe.oversample
        class_counts = {scan.classes[c]: len(m) for c, m in by_class.items() if len(m)}
        counts = _oversample_counts(class_counts, spec.sampling_strategy)
        for label, members in by_class.items():
            wanted = counts.get(scan.classes[label], 0)
            if not wanted:
                continue
            j = np.arange(wanted)
            u = _uniform(seed, _PLAN_STREAM, out.n + j)
            if spec.method == "random":
                picks = members[_pick(u, np.int64(len(members)))]
                out.add("duplicate", label, picks, _occurrence(picks))
                continue
            neighbours = _class_neighbours(scan, members.tolist(), spec.k_neighbors, imap, notes)
            width = max(len(n) for n in neighbours)
            table = np.array([n + [n[0]] * (width - len(n)) for n in neighbours], dtype=np.int64)
            lengths = np.array([len(n) for n in neighbours], dtype=np.int64)
            base = j % len(members)
            choice = table[base, _pick(u, lengths[base])]
            out.add("smote", label, np.stack([members[base], members[choice]], axis=1), j // len(members))

    # Sample mixing: each method makes `count` rows per source image (or per class), first image cycling through
    # the class, partners drawn uniformly from the pool the recipe names within the first image's partner group
    # (or from the whole pool when the group holds fewer than MIN_GROUP_CHOICE images the recipe allows), never
    # the first image itself. Candidates are found by position in arrays sorted by (group, label, source).
    enabled = recipe.mix.enabled()
    if enabled and len(everyone):
        group_of = np.full(len(scan.sources), -1, dtype=np.int64)
        group_of[everyone] = [groups[i] for i in train]
        n_groups = int(group_of.max()) + 1
        key = group_of[everyone] * n_classes + label_of[everyone]
        flat = everyone[np.lexsort((everyone, key))]  # by group, then label, then source
        flat_key = group_of[flat] * n_classes + label_of[flat]
        rank = np.empty(len(scan.sources), dtype=np.int64)
        group_start = np.searchsorted(flat_key, np.arange(n_groups + 1) * n_classes)
        block_start = np.searchsorted(flat_key, np.arange(n_groups * n_classes + 1))
        rank[flat] = np.arange(len(flat)) - block_start[flat_key]  # position in its (group, label) block
        by_label = everyone[np.argsort(label_of[everyone], kind="stable")]  # the pool by label, then source
        class_start = np.searchsorted(label_of[by_label], np.arange(n_classes + 1))
        n_train, last = len(everyone), len(flat) - 1
    for method, spec in enabled.items():
        n_partners = MIXERS[method].n_inputs - 1
        for (label, members), n_rows in zip(by_class.items(), mix_rows(spec, [len(m) for m in by_class.values()])):
            m = len(members)
            if not m:
                continue
            if spec.partner == "other" and n_rows and class_start[label + 1] - class_start[label] == n_train:
                raise RecipeError(f"mix.{method}.partner is 'other', but there is only one class to draw from")
            j = np.arange(n_rows)
            first = members[j % m]
            g = group_of[first]
            g0, g1 = group_start[g], group_start[g + 1]
            b0 = block_start[g * n_classes + label]
            nb = block_start[g * n_classes + label + 1] - b0  # the group's images of this class
            c0, c1 = class_start[label], class_start[label + 1]
            at = np.arange(n_rows) % m  # first's position among its class (members ascending, as by_label)
            if spec.partner == "any":
                in_group = g1 - g0 - 1
                pool_size = n_train - 1
            elif spec.partner == "same":
                in_group = nb - 1
                pool_size = np.int64(m - 1)
            else:
                in_group = (g1 - g0) - nb
                pool_size = np.int64(n_train - m)
            use_group = in_group >= MIN_GROUP_CHOICE
            partners = np.empty((n_rows, n_partners), dtype=np.int64)
            for d in range(n_partners):
                u = _uniform(seed, _PLAN_STREAM, out.n + j, d)
                # within the group: positions in flat, skipping first (any, same) or this class's block (other)
                p = _pick(u, np.maximum(in_group, 1))
                if spec.partner == "any":
                    own = b0 + rank[first] - g0  # first's position within its group
                    grouped = flat[np.minimum(g0 + p + (p >= own), last)]
                elif spec.partner == "same":
                    grouped = flat[np.minimum(b0 + p + (p >= rank[first]), last)]
                else:
                    grouped = flat[np.minimum(g0 + p + (p >= b0 - g0) * nb, last)]
                # the whole pool: positions in everyone (any), this class (same), or by_label minus this class
                q = _pick(u, np.maximum(pool_size, 1))
                if spec.partner == "any":
                    own = np.searchsorted(everyone, first)
                    pooled = everyone[np.minimum(q + (q >= own), n_train - 1)]
                elif spec.partner == "same":
                    pooled = members[np.minimum(q + (q >= at), m - 1)]
                else:
                    pooled = by_label[np.minimum(q + (q >= c0) * (c1 - c0), n_train - 1)]
                if pool_size == 0:
                    pooled = first  # a class of one image mixed with its own class
                partners[:, d] = np.where(use_group, grouped, pooled)
            out.add(method, label, np.column_stack([first, partners]), j // m)

    rows = out.rows(scan, OUTPUT_EXTENSIONS[recipe.output.format])
    return Plan(rows, train, val, counts, notes, groups, decode_scales(scan.sources, recipe))


def folder_counts(plan: Plan, scan: ScanResult, recipe: Recipe, split: str = "train") -> dict[str, dict[str, int]]:
    """Planned rows per class and op, counted by the folder a run writes each one to: the argmax of its soft label.

    That is the first source's class for every row but a mixup, CutMix or RICAP row of images of different classes,
    whose label weights are drawn only when it runs. Such a row counts for each class by the probability that the
    class wins (mixup: 1/2 each, by the symmetry of Beta(a, a); CutMix and RICAP: estimated once per class pattern
    and shape from 4096 seeded draws of the mixer's own box and boundary arithmetic); each op's fractional counts
    are rounded to whole rows keeping the op's total. So ``--dry-run`` shows what a run makes in expectation.
    """
    classes = scan.classes
    size = recipe.output.size if isinstance(recipe.output.size, tuple) else None
    shares: dict[str, np.ndarray] = {}  # op -> expected rows per class
    cache: dict[tuple, np.ndarray] = {}
    for row in plan.rows:
        if row.split != split:
            continue
        table = shares.setdefault(row.op, np.zeros(len(classes)))
        labels = [scan.sources[i].label for i in row.sources]
        if row.op not in ("mixup", "cutmix", "ricap") or len(set(labels)) == 1:
            table[labels[0]] += 1.0
            continue
        order: dict[int, int] = {}
        pattern = tuple(order.setdefault(label, len(order)) for label in labels)
        first = scan.sources[row.sources[0]]
        h, w = size or (first.height, first.width)
        scale = min(1.0, 64 / max(h, w))  # the odds depend on the aspect, hardly on the size
        shape = (max(1, round(h * scale)), max(1, round(w * scale)))
        key = (row.op, pattern, shape)
        if key not in cache:
            cache[key] = _win_odds(row.op, getattr(recipe.mix, row.op), pattern, shape,
                                   np.random.default_rng([recipe.seed, _FOLDER_STREAM, *pattern, *shape]))
        for label, position in order.items():
            table[label] += cache[key][position]
    out: dict[str, Counter] = {name: Counter() for name in classes}
    for op, expected in shares.items():
        whole = np.floor(expected + 1e-9).astype(np.int64)
        missing = int(round(expected.sum())) - int(whole.sum())
        for c in np.argsort(-(expected - whole), kind="stable")[:max(0, missing)]:
            whole[c] += 1
        for c, n in enumerate(whole):
            if n:
                out[classes[c]][op] = int(n)
    return {name: dict(sorted(c.items(), key=lambda kv: OPS.index(kv[0]))) for name, c in out.items()}


def _win_odds(op: str, spec, pattern: tuple[int, ...], shape: tuple[int, int], rng: np.random.Generator,
              draws: int = 4096) -> np.ndarray:
    """The probability that each class of ``pattern`` (the classes of a row's images, numbered by first
    appearance) has the largest label weight, for a mixer's parameters drawn as ``augexpand.mixing`` draws them."""
    h, w = shape
    if op == "mixup":  # lam ~ Beta(a, a) is symmetric: either image wins half the time
        weights = np.array([[1.0, 0.0], [0.0, 1.0]])
    elif op == "cutmix":  # cutmix_box, vectorised
        ratio = np.sqrt(1.0 - rng.beta(spec.alpha, spec.alpha, draws))
        cut_h, cut_w = (h * ratio).astype(np.int64), (w * ratio).astype(np.int64)
        cy, cx = rng.integers(0, h, draws), rng.integers(0, w, draws)
        area = (np.clip(cy + cut_h // 2, 0, h) - np.clip(cy - cut_h // 2, 0, h)) * \
               (np.clip(cx + cut_w // 2, 0, w) - np.clip(cx - cut_w // 2, 0, w))
        lam = 1.0 - area / float(h * w)
        weights = np.stack([lam, 1.0 - lam], 1)
    else:  # ricap_boundary, vectorised
        bh = np.round(h * rng.beta(spec.beta, spec.beta, draws))
        bw = np.round(w * rng.beta(spec.beta, spec.beta, draws))
        weights = np.stack([bh * bw, bh * (w - bw), (h - bh) * bw, (h - bh) * (w - bw)], 1) / float(h * w)
    per_class = np.zeros((len(weights), max(pattern) + 1))
    for position, c in enumerate(pattern):
        per_class[:, c] += weights[:, position]
    return np.bincount(per_class.argmax(1), minlength=per_class.shape[1]) / len(per_class)


def _oversample_counts(class_counts: dict[str, int], strategy) -> dict[str, int]:
    from augexpand.oversample import oversample_counts

    return oversample_counts(class_counts, strategy)


def _class_neighbours(scan: ScanResult, members: list[int], k: int, imap, notes: list[str]) -> list[list[int]]:
    """Each member's nearest same-class neighbours, as positions in ``members``."""
    from augexpand.oversample import image_descriptor, nearest_neighbours

    paths = [scan.root / scan.sources[i].rel for i in members]
    descs = list(imap(image_descriptor, paths))
    good = [j for j, d in enumerate(descs) if d is not None]
    if not good:
        return [[j] for j in range(len(members))]
    table = nearest_neighbours(np.stack([descs[j] for j in good]), k)
    label = scan.classes[scan.sources[members[0]].label]
    if len(good) - 1 < k:
        n_used = max(len(good) - 1, 1)
        notes.append(f"class {label!r} has {len(good)} image{'s' * (len(good) != 1)}: SMOTE uses {n_used} nearest "
                     f"neighbour{'s' * (n_used != 1)} instead of k={k}")
    neighbours: list[list[int]] = [[j] for j in range(len(members))]
    for row, j in enumerate(good):
        neighbours[j] = [good[t] for t in table[row]]
    return neighbours
