"""Running an expansion: check the destination, scan, plan, hand the tasks to an executor, write manifest and card.

Workers receive a partner group at a time (every row whose first image is one of a seeded group of about 32
sources, from which mixing partners are also drawn), decode each image once for all the rows of the group that
use it, keep it in a bounded cache only while the group runs, and write every file atomically. The parent
journals finished rows, so that ``--resume`` redoes nothing, and writes metadata.jsonl and dataset.json last.
"""

from __future__ import annotations

import itertools
import json
import logging
import numbers
import os
import platform
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from augexpand import __version__
from augexpand.decodescale import decode_scales, decoded_sizes, scale_counts
from augexpand.destination import JOURNAL_ONLY, Destination, check_paths, fingerprint, parse_shard
from augexpand.errors import AugexpandError, DestinationError, ExpandError, SourceError
from augexpand.executors import (
    EXECUTORS,
    Executor,
    Task,
    default_workers,
    local_workers,
    make_executor,
    probe_here,
    probe_map,
)
from augexpand.folder import DEFAULT_MAX_PIXELS, ScanResult, decoded_size, limit_opencv_pixels, scan_image_folder
from augexpand.manifest import METADATA_NAME, RecordStore, write_card, write_metadata
from augexpand.orientation import MAX_IMAGES, needs_decision, orientation_note, resolve_orientation
from augexpand.plan import OPS, Plan, Row, Rows, RowSelection, check_plan_size, folder_counts, make_plan
from augexpand.recipe import (
    AutoSize,
    Recipe,
    apply_size_gates,
    follows_sources,
    has_crop,
    least_crop_area,
    load_recipe,
    resolve_output,
    source_sizes,
    training_sources,
)
from augexpand.rows import RowContext

__all__ = ["TASKS_PER_WORKER", "ExpandError", "ExpansionPlan", "default_workers", "expand", "plan_expansion"]

log = logging.getLogger("augexpand")

KEEP_BYTES = 128 << 20  # decoded photos that the orientation test hands on to the rows (see plan_expansion)
PARALLEL_DESCRIPTORS = 64  # SMOTE descriptors in a process pool from this many images of a class on
TASKS_PER_WORKER = 8  # at least this many tasks per worker (groups cut when fewer): the last one finishes early



@dataclass
class ExpansionPlan:
    """An expansion planned and not run: the scan, the resolved recipe, one row per output image, the run's
    fingerprint. ``tasks()`` cuts it into the picklable tasks an executor runs; nothing has been written."""

    src: Path
    scan: ScanResult
    recipe: Recipe  # resolved: ``size: auto`` is the size the sources gave
    val_fraction: float
    plan: Plan
    fingerprint: str
    timings: dict[str, float] = field(default_factory=dict)
    estimated_bytes: int = 0  # what the images would take on disk, about (augexpand.plan.planned_size)
    orientation: dict[str, Any] = field(default_factory=dict)  # what `orientation: auto` decided, and why
    decoded: dict[int, Any] = field(default_factory=dict, repr=False)  # source -> image the rows need, decoded

    @property
    def rows(self) -> list[Row]:
        return self.plan.rows

    def tasks(self, workers: int, skip: Collection[int] = (), shard: tuple[int, int] | None = None) -> list[Task]:
        """The rows (of ``shard`` i of n, when given) not in ``skip`` (row indices), as tasks (a partner group, or a
        piece of one) for ``workers``. A task's rows become ``Row`` objects only when it is sent to a worker."""
        return _tasks(_select(self.plan, shard, skip), self.plan.groups, workers)

    def context(self, dst: str | Path, tag: str = "", journal: str = "") -> RowContext:
        """What every worker needs to make rows of this plan into ``dst`` (``tag``, ``journal``: the destination's
        temporary-file tag and the journal the workers append to; see destination.py)."""
        sources, scales = self.scan.sources, self.plan.decode_scale  # JPEGs decoded smaller where the output allows
        return RowContext(str(self.src), str(Path(dst).expanduser().resolve()), [s.rel for s in sources],
                          [s.label for s in sources], self.scan.classes, self.recipe, tuple(scales),
                          decoded_sizes(sources, scales), tag=tag, journal=journal)

    def summary(self, dst: str | Path | None = None, workers: int = 1) -> dict[str, Any]:
        """What ``--dry-run --json`` prints: the planned counts per class and op."""
        return _summary(self.scan, self.plan, self.recipe, {}, [], Path(dst) if dst else None, workers,
                        self.fingerprint, dry_run=True, timings=self.timings, estimated_bytes=self.estimated_bytes,
                        orientation=self.orientation)


def _recipe_of(recipe: str | Path | dict | Recipe, overrides: dict[str, Any] | None, seed: int | None) -> Recipe:
    if seed is not None:
        overrides = {**(overrides or {}), "seed": seed}
    return recipe if isinstance(recipe, Recipe) and not overrides else load_recipe(recipe, overrides)


def _whole(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_arguments(workers: object, val_fraction: object, max_pixels: object) -> None:
    """The API's numeric arguments, checked as the CLI's options are (a string or 0 was a TypeError or was taken
    silently as something else)."""
    if workers is not None and not (_whole(workers) and workers >= 1):
        raise AugexpandError(f"workers must be a whole number of at least 1 (None: one per core), got {workers!r:.40}")
    if not (isinstance(val_fraction, numbers.Real) and not isinstance(val_fraction, bool)
            and 0.0 <= val_fraction < 1.0):
        raise AugexpandError(f"val_fraction must be a number in [0, 1), got {val_fraction!r:.40}")
    if max_pixels is not None and not (_whole(max_pixels) and max_pixels >= 1):
        raise AugexpandError(f"max_pixels must be a whole number of at least 1 (None: no limit), "
                             f"got {max_pixels!r:.40}")


def _source_folder(src: str | Path | None) -> Path:
    if src is None:
        from augexpand.example import example_dir

        src = example_dir()
    src = Path(src).expanduser().resolve()
    if not src.is_dir():
        raise SourceError(f"source folder {src} does not exist" if not src.exists() else f"source {src} is not a folder")
    return src


def plan_expansion(
    src: str | Path | None,
    recipe: str | Path | dict | Recipe = "light",
    *,
    overrides: dict[str, Any] | None = None,
    seed: int | None = None,
    val_fraction: float = 0.0,
    strict: bool = False,
    workers: int | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    allow_large: bool = False,
) -> ExpansionPlan:
    """Scan ``src`` and plan every output row of an expansion, writing nothing (what ``--dry-run`` shows and what
    ``expand`` runs). Only image headers are read, and for SMOTE a small thumbnail of each image of a class it
    oversamples. ``workers`` processes share the header probes and SMOTE's descriptors (default: all cores).
    ``max_pixels``: a source whose header claims more pixels is skipped (a decompression bomb; None: no limit).
    A plan over 1,000,000 images or 100 GB is refused before a row is built unless ``allow_large``
    (``augexpand.plan.check_plan_size``: counted by arithmetic; over 20,000,000 rows, always).
    """
    started = time.perf_counter()
    _check_arguments(workers, val_fraction, max_pixels)
    if max_pixels is not None:
        limit_opencv_pixels(max_pixels)  # OpenCV's own limit too, when it has not been loaded yet
    recipe = _recipe_of(recipe, overrides, seed)  # every recipe error before anything is read
    src = _source_folder(src)
    workers = local_workers(workers)
    scan = scan_image_folder(src, strict=strict, imap=probe_map(workers), max_pixels=max_pixels)
    for s in scan.skipped:
        log.warning("skipped %s: %s", s.rel, s.reason)
    for name in scan.empty_classes:
        log.warning("class folder %r has no readable image: left out", name)
    t_scan = time.perf_counter()
    written, written_format = recipe.output.size, recipe.output.format
    # `size: auto`, `format: auto`, `zoom: auto` and `output` sizes follow the training sources (read once here)
    training = training_sources(scan, val_fraction, recipe.seed) if follows_sources(recipe) else ([], None)
    gated = recipe.pipeline
    recipe = resolve_output(recipe, scan, val_fraction, training)
    size_note = _size_note(written, written_format, recipe, training[1],
                           apply_size_gates(gated, recipe.output.size)[1])
    # `orientation: auto`: mirror images of the training sources still look like their class, or not. When its
    # thumbnails are read here, in this process, a photo decoded for one at the scale its rows will use (a camera
    # photo made 224 px wide: 1/8) is kept for them, within KEEP_BYTES: otherwise decoded twice, 20 ms each.
    here = needs_decision(recipe) and probe_here(workers, min(len(scan.sources), MAX_IMAGES), PARALLEL_DESCRIPTORS)
    kept: dict[int, Any] = {}

    def scales(indices: list[int]) -> list[int]:  # as make_plan will decide them, for the sampled sources only
        return decode_scales([scan.sources[i] for i in indices], recipe)

    recipe, orientation = resolve_orientation(recipe, scan, val_fraction,
                                              imap=map if here else probe_map(workers, PARALLEL_DESCRIPTORS),
                                              kept=kept, keep_scales=scales if here else None, keep_bytes=KEEP_BYTES)
    turn_note = orientation_note(orientation)
    estimated_bytes = check_plan_size(scan, recipe, val_fraction, allow_large)[2]  # by arithmetic, before any row
    descriptors = probe_map(workers, min_items=PARALLEL_DESCRIPTORS)  # SMOTE's thumbnails: ~1 ms an image
    plan = make_plan(scan, recipe, val_fraction, imap=lambda fn, items: descriptors(fn, list(items)))
    for note in plan.notes:
        log.info("%s", note)
    plan.notes[:0] = [n for n in (size_note, turn_note) if n]  # in the summary and the card
    t_plan = time.perf_counter()
    # a kept image serves its rows only if they decode at its scale (the resolved recipe may need another)
    decoded = {i: image for i, image in kept.items() if image.shape[:2] == decoded_size(
        scan.sources[i].width, scan.sources[i].height, plan.decode_scale[i])}
    return ExpansionPlan(src, scan, recipe, val_fraction, plan, fingerprint(scan, recipe, val_fraction),
                         {"scan": t_scan - started, "plan": t_plan - t_scan}, estimated_bytes, orientation, decoded)


# --------------------------------------------------------------------------------------------------------------
# Parent side


def _tasks(rows: Sequence[Row], groups: dict[int, int], workers: int) -> list[Task]:
    """One task per partner group: (the group's key, its rows), each source's rows together, so a worker decodes
    each image of the group once. With fewer groups than TASKS_PER_WORKER per worker, groups are cut at source
    boundaries, so that the last task is short and every worker stays busy to the end (the output is the same: rows
    do not depend on who runs them; a cut group's partners may be decoded once per piece). ``rows``: a plan's
    ``Rows`` or a ``RowSelection`` of them (sorted as arrays, the rows made only when a task is sent), or a list."""
    if isinstance(rows, (Rows, RowSelection)):
        return _tasks_of_columns(rows, groups, workers)
    by_group: dict[tuple[str, int], dict[int, list[Row]]] = {}
    for row in rows:
        first = row.sources[0]
        by_group.setdefault((row.split, groups.get(first, -1)), {}).setdefault(first, []).append(row)
    pieces = -(-TASKS_PER_WORKER * workers // max(1, len(by_group)))
    tasks = []
    for key, per_source in by_group.items():
        sources = list(per_source.values())
        n = min(pieces, len(sources))
        for k in range(n):
            tasks.append((key, [row for rs in sources[k * len(sources) // n:(k + 1) * len(sources) // n] for row in rs]))
    return tasks


def _group_array(groups: dict[int, int], n_sources: int) -> np.ndarray:
    """Each source's partner group (-1: none), for the sources the rows name (``n_sources``) and every grouped one
    (a source may be in a group and in no row: a mix-only recipe with a count below 1)."""
    out = np.full(max(n_sources, max(groups, default=-1) + 1, 1), -1, dtype=np.int64)
    if groups:
        out[np.fromiter(groups.keys(), np.int64, len(groups))] = np.fromiter(groups.values(), np.int64, len(groups))
    return out


def _tasks_of_columns(rows: Rows | RowSelection, groups: dict[int, int], workers: int) -> list[Task]:
    """``_tasks`` on arrays: sorted by (split, group, first source, row), cut the same way, at O(N log N)."""
    base, idx = (rows, np.arange(len(rows))) if isinstance(rows, Rows) else (rows.rows, rows.indices)
    if not len(idx):
        return []
    first = base.sources[idx, 0].astype(np.int64)
    group = _group_array(groups, int(base.sources.max()) + 1)[first]
    val = base.val[idx]
    order = np.lexsort((idx, first, group, ~val))  # val first, as the plan's rows are
    idx, first, group, val = idx[order], first[order], group[order], val[order]
    new_group = np.r_[True, (group[1:] != group[:-1]) | (val[1:] != val[:-1])]
    new_source = np.r_[True, first[1:] != first[:-1]]
    group_starts = np.flatnonzero(new_group)
    pieces = -(-TASKS_PER_WORKER * workers // len(group_starts))
    source_starts = np.flatnonzero(new_source)
    bounds = np.r_[group_starts, len(idx)]
    tasks: list[Task] = []
    for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        starts = source_starts[np.searchsorted(source_starts, a):np.searchsorted(source_starts, b)]
        n = min(pieces, len(starts))
        cuts = [int(starts[k * len(starts) // n]) for k in range(n)] + [b]
        key = ("val" if val[a] else "train", int(group[a]))
        tasks.extend((key, base.take(idx[c0:c1])) for c0, c1 in itertools.pairwise(cuts))
    return tasks


def _select(plan: Plan, shard: tuple[int, int] | None = None, skip: Collection[int] = ()) -> RowSelection:
    """The plan's rows of shard i of n (all, without one), less the row indices in ``skip``."""
    idx = np.arange(len(plan.rows))
    if shard is not None:
        group = _group_array(plan.groups, int(plan.rows.sources.max(initial=0)) + 1)[plan.rows.sources[:, 0]]
        idx = idx[np.maximum(group, 0) % shard[1] == shard[0] - 1]  # as _in_shard
    if skip:
        idx = idx[~np.isin(idx, np.fromiter(skip, np.int64, len(skip)))]
    return plan.rows.take(idx)


def _versions(recipe: Recipe) -> dict[str, str]:
    import cv2

    from augexpand.recipe import import_albumentations

    versions = {"augexpand": __version__, "python": platform.python_version(), "numpy": np.__version__,
                "opencv": cv2.__version__, "albumentations": import_albumentations().__version__}
    if recipe.oversample is not None:
        import imblearn

        versions["imbalanced-learn"] = imblearn.__version__
    return versions


def expand(
    src: str | Path | None,
    dst: str | Path,
    recipe: str | Path | dict | Recipe = "light",
    *,
    overrides: dict[str, Any] | None = None,
    seed: int | None = None,
    workers: int | None = None,
    val_fraction: float = 0.0,
    strict: bool = False,
    resume: bool = False,
    overwrite: bool = False,
    dry_run: bool = False,
    progress: bool = False,
    on_progress: Callable[[int, int], object] | None = None,
    executor: str = "local",
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    shard: tuple[int, int] | str | None = None,
    allow_large: bool = False,
) -> dict[str, Any]:
    """Expand the ImageFolder ``src`` into ``dst`` (``dst/train``, ``dst/val``, metadata.jsonl, dataset.json).

    ``overrides`` sets recipe keys on top of the recipe (``seed``, ``copies``, ``output.format``, ...); ``seed``
    is a shortcut for the seed. ``src=None`` uses the built-in example dataset. Returns the summary that ``--json``
    prints; raises ``AugexpandError``s. ``on_progress(done, total)`` is called as images finish (``total``: the
    images of the run, ``done`` counting those a resumed run found made). ``executor``: ``"local"`` (a process
    pool of ``workers``) or ``"ray"`` (the cluster in ``RAY_ADDRESS``, or a local Ray of ``workers`` CPUs).
    ``max_pixels``: a source whose header claims more pixels is skipped (a decompression bomb; None: no limit).
    ``shard=(i, n)`` makes only shard i of n (a job array's task: images and a journal, no manifest); a later
    ``resume=True`` run without ``shard`` finishes whatever is missing and writes the manifest and card.
    A plan over 1,000,000 images or 100 GB is refused before it is built unless ``allow_large``
    (``augexpand.plan.check_plan_size``).
    """
    started = time.perf_counter()
    if on_progress is not None and not callable(on_progress):
        raise AugexpandError(f"on_progress must be a function taking (done, total), got "
                             f"{type(on_progress).__name__} {on_progress!r:.40}")
    if executor not in EXECUTORS:
        raise AugexpandError(f"unknown executor {executor!r}: expected one of {', '.join(EXECUTORS)}")
    _check_arguments(workers, val_fraction, max_pixels)
    recipe = _recipe_of(recipe, overrides, seed)  # every recipe error before anything is read
    src, dst = _source_folder(src), Path(dst).expanduser().resolve()
    check_paths(src, dst)
    try:
        shard = parse_shard(shard)
    except ValueError as exc:
        raise AugexpandError(f"shard: {exc}") from None
    if shard is not None and overwrite:
        raise AugexpandError("a shard cannot --overwrite: shards of one plan write into one destination together",
                             hint="clear it with one --overwrite run first, or use an empty DST")
    with _stopped_by_sigterm(), (_nothing() if dry_run else Destination(dst, resume, overwrite, shard)) as dest:
        return _expand(src, dst, recipe, dest, started, workers=workers, val_fraction=val_fraction, strict=strict,
                       resume=resume, dry_run=dry_run, progress=progress, max_pixels=max_pixels, shard=shard,
                       on_progress=on_progress, executor=executor, allow_large=allow_large)


def _expand(src: Path, dst: Path, recipe: Recipe, dest: Destination | None, started: float, *, workers: int | None,
            val_fraction: float, strict: bool, resume: bool, dry_run: bool, progress: bool,
            max_pixels: int | None, shard: tuple[int, int] | None,
            on_progress: Callable[[int, int], object] | None = None, executor: str = "local",
            allow_large: bool = False) -> dict[str, Any]:
    # Ray's workers are the cluster's CPUs; this machine's pools (planning, the local executor) are capped
    requested, workers = workers, local_workers(workers, quiet=executor != "local")
    planned = plan_expansion(src, recipe, val_fraction=val_fraction, strict=strict, workers=workers,
                             max_pixels=max_pixels, allow_large=allow_large)
    scan, plan, recipe, run_id = planned.scan, planned.plan, planned.recipe, planned.fingerprint
    t_plan = time.perf_counter()
    if not dry_run and plan.rows.val.all():  # nothing to train on: said before anything is written
        raise ExpandError(f"{recipe.source} makes no training images from {src} (no originals or copies, and its "
                          f"mix and oversample make none here)", hint="set copies or keep_originals: true")
    if dry_run:
        summary = planned.summary(dst, workers)
        if shard is not None:
            summary["shard"] = {"index": shard[0], "count": shard[1],
                                "rows": len(_select(plan, shard))}
        return summary
    runner: Executor = make_executor(executor, workers if executor == "local" else requested,
                                     planned.context(dst, dest.tag, dest.journal), planned.decoded)
    planned.decoded = {}  # the workers hold them now (a forked pool shares them), and let each go once used
    t_start = time.perf_counter()
    try:
        dest.check_folders(scan.classes)
        dest.remove_previous()  # --overwrite: only now, when the new run is planned and about to write
        records, failures, reused, reused_train = _execute(runner, plan, dest, run_id, resume, strict, progress,
                                                           shard, on_progress)
    except BaseException:
        runner.close(terminate=True)
        raise
    runner.close()
    t_run = time.perf_counter()

    unreadable = sorted({f["source"]: f["error"] for f in failures if f["unreadable"]}.items())
    broken = sorted((f for f in failures if not f["unreadable"]), key=lambda f: f["row"])
    for rel, reason in unreadable:
        log.warning("skipped %s: %s", rel, reason)
    if broken:
        first = broken[0]
        raise ExpandError(f"{len(broken)} of {len(plan.rows)} images could not be made; first: row {first['row']} "
                          f"from {first['source']}: {first['error']}",
                          hint="fix the recipe (or the images), then run again with --overwrite")

    if unreadable and shard is None and not records.count("train") and not records.count("val"):
        # as the scan's 'no readable image': a run whose every source failed to decode made nothing (it said 'Made 0
        # training images', exit 0, and 'wrote train/' that was not there)
        raise SourceError(f"no image in {src} could be decoded: {len(unreadable)} file(s) skipped, each named above",
                          hint="fix or replace them, then run again with --overwrite")
    timings = {**planned.timings, "start": t_start - t_plan, "write": t_run - t_start}
    summary = _summary(scan, plan, recipe, records, unreadable, dst, runner.workers, run_id, reused=reused,
                       reused_train=reused_train,
                       timings=timings, estimated_bytes=planned.estimated_bytes, orientation=planned.orientation)
    # the planned images left out because a source or partner of theirs did not decode (the files are named)
    summary["images_not_made"] = sum(1 for f in failures if f["unreadable"])
    if shard is not None:  # a shard writes images and its journal; the run without --shard writes the rest
        summary["shard"] = {"index": shard[0], "count": shard[1],
                            "rows": len(_select(plan, shard)),
                            "made": len(records) - reused, "resumed": reused}
        summary["timings"]["total"] = time.perf_counter() - started
        return summary
    try:
        for split in ("train", "val"):
            # A stream: the records are held once, compactly (RecordStore), each line made as it is written.
            if records.count(split):
                write_metadata(dst / split / METADATA_NAME,
                               ({k: v for k, v in r.items() if k not in JOURNAL_ONLY}
                                for r in records.in_order() if r["split"] == split))
        summary["timings"]["total"] = time.perf_counter() - started
        write_card(dst, _card(summary, recipe))
    except OSError as exc:
        raise _write_error(exc, dst) from None
    dest.finish()
    return summary


def _in_shard(row: Row, groups: dict[int, int], shard: tuple[int, int]) -> bool:
    """Shard i of n holds the partner groups whose number is i-1 modulo n: a whole group (a worker's task, and
    the images its rows share) stays in one shard, whatever the number of workers."""
    return groups.get(row.sources[0], 0) % shard[1] == shard[0] - 1


def _write_error(exc: OSError, dst: Path) -> DestinationError:
    return DestinationError(f"cannot write to {exc.filename or dst}: {exc.strerror or exc}",
                            hint="free some space (or fix the permissions), then run again with --resume")


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc) -> None:
        return None


class _stopped_by_sigterm:
    """SIGTERM to the main process stops the run as Ctrl-C does: the workers are terminated, this run's temporary
    files removed, the journal kept for --resume; exit status 143. Only where nobody else handles SIGTERM."""

    pid = 0  # the process that set the handler

    def __enter__(self) -> None:
        self.previous = None
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            _stopped_by_sigterm.pid = os.getpid()
            self.previous = signal.signal(signal.SIGTERM, self._stop)

    @staticmethod
    def _stop(signum, frame) -> None:
        if os.getpid() != _stopped_by_sigterm.pid:  # a pool worker stopped before its own handler was set: no
            os._exit(128 + signum)  # 'stopped by SIGTERM ... --resume' from it, as the default action would not
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not interrupt the clean-up
        log.warning("stopped by SIGTERM: run the same command with --resume to finish")
        raise SystemExit(128 + signum)

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


def _execute(executor: Executor, plan: Plan, dest: Destination, run_id: str, resume: bool, strict: bool,
             progress: bool, shard: tuple[int, int] | None = None,
             on_progress: Callable[[int, int], object] | None = None) -> tuple[RecordStore, list[dict], int, int]:
    """Run every row not already done (of the shard; the workers journal each file they write). Returns records
    by row, failures, rows reused and training images among them."""
    from tqdm import tqdm

    done = RecordStore()
    try:
        if resume or shard is not None:  # a shard continues the shared destination (other shards, its own past)
            every = plan.rows  # what the plan gives each row: a record that says otherwise is not kept
            done, _ = dest.kept(run_id, len(every), lambda i: ("val" if every.val[i] else "train",
                                                                OPS[int(every.op[i])], every.name(i)))
        dest.start(run_id)
    except OSError as exc:
        raise _write_error(exc, dest.dst) from None
    rows = _select(plan, shard)
    if shard is not None:  # only this shard's rows count as done here
        mine = RecordStore()
        for i in rows.indices.tolist():
            if i in done:
                mine.text[i] = done.text[i]
                mine.splits[json.loads(done.text[i])["split"]] += 1
        done = mine
    todo = _select(plan, shard, done)
    records, reused = done, len(done)  # the store goes on to collect this run's records
    reused_train = done.count("train")
    failures: list[dict[str, Any]] = []
    bar = tqdm(total=len(todo), unit="img", desc="expand", disable=not progress, dynamic_ncols=True,
               file=sys.stderr)
    finished, total = len(done), len(rows)
    if on_progress is not None:
        on_progress(finished, total)
    # Each task goes with its group's key: a worker that gets the next piece of the same group keeps its images.
    for results in executor.run(_tasks(todo, plan.groups, executor.workers)):
        for r in results:
            if "error" in r:
                if r.get("write"):
                    raise DestinationError(r["error"])  # the destination's fault: say so, stop at once
                if strict and r["unreadable"]:
                    raise SourceError(f"{r['source']}: {r['error']} (--strict)")
                failures.append(r)
                continue
            records[r["row"]] = r
        bar.update(len(results))
        finished += len(results)
        if on_progress is not None:
            on_progress(finished, total)
    bar.close()
    return records, failures, reused, reused_train


def _summary(scan: ScanResult, plan: Plan, recipe: Recipe, records: dict[int, dict] | RecordStore, unreadable: list,
             dst: Path, workers: int, run_id: str, *, dry_run: bool = False, reused: int = 0,
             reused_train: int = 0,
             timings: dict[str, float], estimated_bytes: int = 0,
             orientation: dict[str, Any] | None = None) -> dict[str, Any]:
    classes = scan.classes
    bad = {rel for rel, _ in unreadable}  # sources whose header read but whose pixels did not: not source images
    source_counts = scan.counts(excluding=bad)
    val_counts = Counter(classes[scan.sources[i].label] for i in plan.val_sources if scan.sources[i].rel not in bad)
    train_source_counts = Counter(classes[scan.sources[i].label] for i in plan.train_sources
                                  if scan.sources[i].rel not in bad)
    if dry_run:
        per_class_op = folder_counts(plan, scan, recipe)  # by output folder, as the records of a run are counted
        made = int((~plan.rows.val).sum())
        train_counts = {c: sum(per_class_op[c].values()) for c in classes}
    else:
        per_class_op = {c: Counter() for c in classes}
        for r in records.values():
            if r["split"] == "train":
                per_class_op[r["label"]][r["op"]] += 1
        per_class_op = {c: dict(sorted(v.items(), key=lambda kv: OPS.index(kv[0]))) for c, v in per_class_op.items()}
        made = records.count("train") if isinstance(records, RecordStore) else \
            sum(1 for r in records.values() if r["split"] == "train")
        train_counts = {c: sum(per_class_op[c].values()) for c in classes}
    per_op = Counter()
    for ops in per_class_op.values():
        per_op.update(ops)
    skipped = [{"file": s.rel, "reason": s.reason} for s in scan.skipped]
    skipped += [{"file": rel, "reason": reason} for rel, reason in unreadable]
    counts_after = [n for n in train_counts.values() if n]
    return {
        "src": str(scan.root),
        "dst": str(dst) if dst else None,
        "dry_run": dry_run,
        "recipe": recipe.source,
        "seed": recipe.seed,
        "classes": classes,
        "counts": {
            "source": source_counts,
            "train_sources": {c: train_source_counts[c] for c in classes},
            "val": {c: val_counts[c] for c in classes},
            "train": train_counts,
            "per_op": dict(sorted(per_op.items(), key=lambda kv: OPS.index(kv[0]))),
            "per_class_op": per_class_op,
        },
        "images_in": sum(source_counts.values()),
        "images_out": made,
        "output_size": list(recipe.output.size) if recipe.output.size else None,  # [h, w]; null: native sizes
        "source_sizes": source_sizes(scan, plan.train_sources),  # of the training sources (not val)
        "estimated_bytes": int(estimated_bytes),  # the plan's estimate of what the images take on disk
        "orientation": orientation or {"mode": recipe.orientation, "keep": recipe.orientation == "keep"},
        "val_images": len(plan.val_sources),
        "resumed_rows": reused,
        "imbalance_ratio": {"source": _ratio(list(source_counts.values())), "train": _ratio(counts_after)},
        "oversample_counts": plan.oversample_counts,
        "skipped": skipped,
        "ignored_non_image_files": scan.ignored,
        "empty_classes": scan.empty_classes,
        "duplicate_sources": _duplicates(scan),
        "converted_to_rgb8": scan.converted(excluding=bad),
        "decode_scales": scale_counts(plan.decode_scale),  # sources decoded at 1/1, 1/2, 1/4, 1/8 of their size
        "notes": plan.notes,
        "workers": workers,
        "fingerprint": run_id,
        "shard": None,
        "timings": {k: round(v, 4) for k, v in timings.items()},
        # the training images made by this run (not those a resumed run found done: val copies are in `reused`)
        "images_per_second": round((made - reused_train) / timings["write"], 1) if timings.get("write") else None,
    }


MAX_DUPLICATE_GROUPS = 100  # listed in the summary and the card; all are counted


def _duplicates(scan: ScanResult) -> dict[str, Any]:
    """Byte-identical source files: how many images are copies of another, and the groups (the first ones)."""
    groups = scan.duplicates()
    return {"copies": sum(len(g) - 1 for g in groups), "groups": len(groups),
            "listed": [[scan.sources[i].rel for i in g] for g in groups[:MAX_DUPLICATE_GROUPS]]}


def _size_note(written: Any, written_format: str, recipe: Recipe, sizes: dict[str, Any] | None = None,
               left_out: list[str] | None = None) -> str | None:
    """What ``size: auto``, ``format: auto`` and ``zoom: auto`` became, and why (``sizes``: the training sources'
    :func:`~augexpand.recipe.source_sizes`), and the transforms an ``if_output_at_least`` left out (``left_out``)."""
    notes = []
    if isinstance(written, AutoSize):
        (h, w), (nh, nw) = recipe.output.size, written.auto
        why = "the training sources' median short side is smaller" if (h, w) != (nh, nw) else \
            "the training sources' median short side is at least that"
        notes.append(f"output size auto: {h}x{w} (at most {nh}x{nw}; {why})")
    if written_format == "auto":
        why = "most training sources are lossless: no JPEG artefacts added" if recipe.output.format == "png" else \
            "the sources are photos"
        notes.append(f"format auto: {recipe.output.format} ({why})")
    if recipe.zoom == "auto" and sizes and has_crop(recipe.pipeline):
        size = recipe.output.size
        median = sizes["height"]["median"], sizes["width"]["median"]
        least = least_crop_area(size, median)
        why = (f"a smaller one would magnify the {median[1]}x{median[0]} sources to {size[1]}x{size[0]}"
               if size is not None else "native sizes: a smaller one would be magnified")
        notes.append(f"zoom auto: crops keep the whole image ({why})" if least >= 1 else
                     f"zoom auto: no crop smaller than {least:.0%} of the area ({why})")
    if left_out:
        h, w = recipe.output.size
        notes.append(f"small output: {h}x{w} leaves out {', '.join(left_out)} (if_output_at_least)")
    return "; ".join(notes) or None


def _ratio(counts: list[int]) -> float | None:
    counts = [c for c in counts if c]
    return round(max(counts) / min(counts), 3) if counts else None


def _card(summary: dict[str, Any], recipe: Recipe) -> dict[str, Any]:
    card = {k: v for k, v in summary.items() if k not in ("dst", "dry_run", "resumed_rows", "shard")}
    card["recipe"] = recipe.resolved()
    card["versions"] = _versions(recipe)
    card["layout"] = {"train": "train/<class>/<file>", "manifest": f"train/{METADATA_NAME}",
                      "val": "val/<class>/<file> (untouched source images)" if summary["val_images"] else None}
    return card
