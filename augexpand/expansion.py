"""Running an expansion: check the destination, scan, plan, hand the tasks to an executor, write manifest and card.

Workers receive a partner group at a time (every row whose first image is one of a seeded group of about 32
sources, from which mixing partners are also drawn), decode each image once for all the rows of the group that
use it, keep it in a bounded cache only while the group runs, and write every file atomically. The parent
journals finished rows, so that ``--resume`` redoes nothing, and writes metadata.jsonl and dataset.json last.
"""

from __future__ import annotations

import logging
import platform
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from augexpand import __version__
from augexpand.decodescale import decode_scales, decoded_sizes, scale_counts
from augexpand.destination import JOURNAL_ONLY, Destination, check_paths, fingerprint, parse_shard
from augexpand.errors import AugexpandError, DestinationError, SourceError
from augexpand.executors import Executor, LocalExecutor, Task, default_workers, probe_map
from augexpand.folder import DEFAULT_MAX_PIXELS, ScanResult, limit_opencv_pixels, scan_image_folder
from augexpand.manifest import METADATA_NAME, write_card, write_metadata
from augexpand.plan import OPS, Plan, Row, folder_counts, make_plan
from augexpand.recipe import AutoSize, Recipe, load_recipe, resolve_output, source_sizes
from augexpand.rows import RowContext

__all__ = ["TASKS_PER_WORKER", "ExpandError", "default_workers", "expand"]

log = logging.getLogger("augexpand")

TASKS_PER_WORKER = 8  # at least this many tasks per worker (groups cut when fewer): the last one finishes early


class ExpandError(AugexpandError):
    """Some planned images could not be made."""


def _descriptor(path: Path):
    from augexpand.oversample import image_descriptor

    return image_descriptor(path)


# --------------------------------------------------------------------------------------------------------------
# Parent side


def _tasks(rows: list[Row], groups: dict[int, int], workers: int) -> list[Task]:
    """One task per partner group: (the group's key, its rows), each source's rows together, so a worker decodes
    each image of the group once. With fewer groups than TASKS_PER_WORKER per worker, groups are cut at source boundaries, so that
    the last task is short and every worker stays busy to the end (the output is the same: rows do not depend on
    who runs them; a cut group's partners may be decoded once per piece)."""
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
    workers: int | None = None,
    val_fraction: float = 0.0,
    strict: bool = False,
    resume: bool = False,
    overwrite: bool = False,
    dry_run: bool = False,
    progress: bool = False,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    shard: tuple[int, int] | str | None = None,
) -> dict[str, Any]:
    """Expand the ImageFolder ``src`` into ``dst`` (``dst/train``, ``dst/val``, metadata.jsonl, dataset.json).

    ``overrides`` sets recipe keys on top of the recipe (``seed``, ``copies``, ``output.format``, ...).
    ``src=None`` uses the built-in example dataset. Returns the summary that ``--json`` prints.
    ``max_pixels``: a source whose header claims more pixels is skipped (a decompression bomb; None: no limit).
    ``shard=(i, n)`` makes only shard i of n (a job array's task: images and a journal, no manifest); a later
    ``resume=True`` run without ``shard`` finishes whatever is missing and writes the manifest and card.
    """
    started = time.perf_counter()
    if max_pixels is not None:
        limit_opencv_pixels(max_pixels)  # OpenCV's own limit too, when it has not been loaded yet
    recipe = load_recipe(recipe, overrides)  # every recipe error before anything is read
    if not 0.0 <= val_fraction < 1.0:
        raise AugexpandError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if src is None:
        from augexpand.example import example_dir

        src = example_dir()
    src, dst = Path(src).expanduser().resolve(), Path(dst).expanduser().resolve()
    if not src.is_dir():
        raise SourceError(f"source folder {src} does not exist" if not src.exists() else f"source {src} is not a folder")
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
                       resume=resume, dry_run=dry_run, progress=progress, max_pixels=max_pixels, shard=shard)


def _expand(src: Path, dst: Path, recipe: Recipe, dest: Destination | None, started: float, *, workers: int | None,
            val_fraction: float, strict: bool, resume: bool, dry_run: bool, progress: bool,
            max_pixels: int | None, shard: tuple[int, int] | None) -> dict[str, Any]:
    workers = max(1, workers or default_workers())
    scan = scan_image_folder(src, strict=strict, imap=probe_map(workers), max_pixels=max_pixels)
    for s in scan.skipped:
        log.warning("skipped %s: %s", s.rel, s.reason)
    for name in scan.empty_classes:
        log.warning("class folder %r has no readable image: left out", name)
    t_scan = time.perf_counter()
    written = recipe.output.size
    recipe = resolve_output(recipe, scan, val_fraction)  # `size: auto` and `output` sizes follow the sources
    size_note = _size_note(written, recipe)

    scales = decode_scales(scan.sources, recipe)  # JPEGs decoded smaller where the output needs no more pixels
    ctx = RowContext(str(src), str(dst), [s.rel for s in scan.sources], [s.label for s in scan.sources],
                   scan.classes, recipe, tuple(scales), decoded_sizes(scan.sources, scales),
                   tag=dest.tag if dest is not None else "", journal=dest.journal if dest is not None else "")
    executor: Executor = LocalExecutor(workers, ctx)
    try:
        plan = make_plan(scan, recipe, val_fraction, imap=lambda fn, items: executor.map(_descriptor, items))
        for note in plan.notes:
            log.info("%s", note)
        plan.notes[:0] = [size_note] if size_note else []  # in the summary and the card (the table says the size)
        t_plan = time.perf_counter()
        run_id = fingerprint(scan, recipe, val_fraction)
        if dry_run:
            summary = _summary(scan, plan, recipe, {}, [], dst, workers, run_id, dry_run=True,
                               timings={"scan": t_scan - started, "plan": t_plan - t_scan})
            if shard is not None:
                summary["shard"] = {"index": shard[0], "count": shard[1],
                                    "rows": sum(1 for r in plan.rows if _in_shard(r, plan.groups, shard))}
            return summary
        dest.check_folders(scan.classes)
        dest.remove_previous()  # --overwrite: only now, when the new run is planned and about to write
        records, failures, reused = _execute(executor, plan, dest, run_id, resume, strict, progress, shard)
    except BaseException:
        executor.close(terminate=True)
        raise
    executor.close()
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

    timings = {"scan": t_scan - started, "plan": t_plan - t_scan, "write": t_run - t_plan}
    summary = _summary(scan, plan, recipe, records, unreadable, dst, workers, run_id, reused=reused,
                       timings=timings)
    if shard is not None:  # a shard writes images and its journal; the run without --shard writes the rest
        summary["shard"] = {"index": shard[0], "count": shard[1],
                            "rows": sum(1 for r in plan.rows if _in_shard(r, plan.groups, shard)),
                            "made": len(records) - reused, "resumed": reused}
        summary["timings"]["total"] = time.perf_counter() - started
        return summary
    try:
        for split in ("train", "val"):
            rows = [records[i] for i in sorted(records) if records[i]["split"] == split]
            if rows:
                write_metadata(dst / split / METADATA_NAME,
                               ({k: v for k, v in r.items() if k not in JOURNAL_ONLY} for r in rows))
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

    def __enter__(self) -> None:
        self.previous = None
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            self.previous = signal.signal(signal.SIGTERM, self._stop)

    @staticmethod
    def _stop(signum, frame) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not interrupt the clean-up
        log.warning("stopped by SIGTERM: run the same command with --resume to finish")
        raise SystemExit(128 + signum)

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


def _execute(executor: Executor, plan: Plan, dest: Destination, run_id: str, resume: bool, strict: bool,
             progress: bool, shard: tuple[int, int] | None = None) -> tuple[dict[int, dict], list[dict], int]:
    """Run every row not already done (of the shard; the workers journal each file they write). Returns records
    by row, failures, rows reused."""
    from tqdm import tqdm

    done: dict[int, dict[str, Any]] = {}
    try:
        if resume or shard is not None:  # a shard continues the shared destination (other shards, its own past)
            done, _ = dest.kept(run_id, len(plan.rows))
        dest.start(run_id)
    except OSError as exc:
        raise _write_error(exc, dest.dst) from None
    rows = plan.rows if shard is None else [r for r in plan.rows if _in_shard(r, plan.groups, shard)]
    if shard is not None:
        done = {r.index: done[r.index] for r in rows if r.index in done}
    todo = [r for r in rows if r.index not in done]
    records = dict(done)
    failures: list[dict[str, Any]] = []
    bar = tqdm(total=len(todo), unit="img", desc="expand", disable=not progress, dynamic_ncols=True,
               file=sys.stderr)
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
    bar.close()
    return records, failures, len(done)


def _summary(scan: ScanResult, plan: Plan, recipe: Recipe, records: dict[int, dict], unreadable: list, dst: Path,
             workers: int, run_id: str, *, dry_run: bool = False, reused: int = 0,
             timings: dict[str, float]) -> dict[str, Any]:
    classes = scan.classes
    source_counts = scan.counts()
    val_counts = Counter(classes[scan.sources[i].label] for i in plan.val_sources)
    train_source_counts = Counter(classes[scan.sources[i].label] for i in plan.train_sources)
    if dry_run:
        per_class_op = folder_counts(plan, scan, recipe)  # by output folder, as the records of a run are counted
        made = len([r for r in plan.rows if r.split == "train"])
        train_counts = {c: sum(per_class_op[c].values()) for c in classes}
    else:
        per_class_op = {c: Counter() for c in classes}
        for r in records.values():
            if r["split"] == "train":
                per_class_op[r["label"]][r["op"]] += 1
        per_class_op = {c: dict(sorted(v.items(), key=lambda kv: OPS.index(kv[0]))) for c, v in per_class_op.items()}
        made = sum(1 for r in records.values() if r["split"] == "train")
        train_counts = {c: sum(per_class_op[c].values()) for c in classes}
    per_op = Counter()
    for ops in per_class_op.values():
        per_op.update(ops)
    skipped = [{"file": s.rel, "reason": s.reason} for s in scan.skipped]
    skipped += [{"file": rel, "reason": reason} for rel, reason in unreadable]
    counts_after = [n for n in train_counts.values() if n]
    return {
        "src": str(scan.root),
        "dst": str(dst),
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
        "images_in": len(scan.sources),
        "images_out": made,
        "output_size": list(recipe.output.size) if recipe.output.size else None,  # [h, w]; null: native sizes
        "source_sizes": source_sizes(scan, plan.train_sources),  # of the training sources (not val)
        "val_images": len(plan.val_sources),
        "resumed_rows": reused,
        "imbalance_ratio": {"source": _ratio(list(source_counts.values())), "train": _ratio(counts_after)},
        "oversample_counts": plan.oversample_counts,
        "skipped": skipped,
        "ignored_non_image_files": scan.ignored,
        "empty_classes": scan.empty_classes,
        "converted_to_rgb8": scan.converted(excluding={rel for rel, _ in unreadable}),
        "decode_scales": scale_counts(plan.decode_scale),  # sources decoded at 1/1, 1/2, 1/4, 1/8 of their size
        "notes": plan.notes,
        "workers": workers,
        "fingerprint": run_id,
        "shard": None,
        "timings": {k: round(v, 4) for k, v in timings.items()},
        "images_per_second": round((made - reused) / timings["write"], 1) if timings.get("write") else None,
    }


def _size_note(written: Any, recipe: Recipe) -> str | None:
    """What ``size: auto`` became, and why."""
    if not isinstance(written, AutoSize):
        return None
    (h, w), (nh, nw) = recipe.output.size, written.auto
    why = "the training sources' median short side is smaller" if (h, w) != (nh, nw) else \
        "the training sources' median short side is at least that"
    return f"output size auto: {h}x{w} (at most {nh}x{nw}; {why})"


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
