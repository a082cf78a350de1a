"""Running an expansion: check the destination, scan, plan, hand the tasks to an executor, write manifest and card.

Workers receive a partner group at a time (every row whose first image is one of a seeded group of about 32
sources, from which mixing partners are also drawn), decode each image once for all the rows of the group that
use it, keep it in a bounded cache only while the group runs, and write every file atomically. The parent
journals finished rows, so that ``--resume`` redoes nothing, and writes metadata.jsonl and dataset.json last.
"""

from __future__ import annotations

import json
import logging
import platform
import shutil
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from augexpand import __version__
from augexpand.decodescale import decode_scales, decoded_sizes, scale_counts
from augexpand.destination import STATE_DIR, check_paths, fingerprint, prepare_destination, read_journal
from augexpand.errors import AugexpandError, DestinationError, SourceError
from augexpand.executors import Executor, LocalExecutor, Task, default_workers, probe_map
from augexpand.folder import (
    DEFAULT_MAX_PIXELS,
    ScanResult,
    is_temp_file,
    limit_opencv_pixels,
    scan_image_folder,
    write_atomic,
)
from augexpand.manifest import METADATA_NAME, read_card, write_card, write_metadata
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
) -> dict[str, Any]:
    """Expand the ImageFolder ``src`` into ``dst`` (``dst/train``, ``dst/val``, metadata.jsonl, dataset.json).

    ``overrides`` sets recipe keys on top of the recipe (``seed``, ``copies``, ``output.format``, ...).
    ``src=None`` uses the built-in example dataset. Returns the summary that ``--json`` prints.
    ``max_pixels``: a source whose header claims more pixels is skipped (a decompression bomb; None: no limit).
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
    if not dry_run:
        prepare_destination(dst, resume, overwrite)

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
                     scan.classes, recipe, tuple(scales), decoded_sizes(scan.sources, scales))
    executor: Executor = LocalExecutor(workers, ctx)
    try:
        plan = make_plan(scan, recipe, val_fraction, imap=lambda fn, items: executor.map(_descriptor, items))
        for note in plan.notes:
            log.info("%s", note)
        plan.notes[:0] = [size_note] if size_note else []  # in the summary and the card (the table says the size)
        t_plan = time.perf_counter()
        run_id = fingerprint(scan, recipe, val_fraction)
        if dry_run:
            return _summary(scan, plan, recipe, {}, [], dst, workers, run_id, dry_run=True,
                            timings={"scan": t_scan - started, "plan": t_plan - t_scan})
        records, failures, reused = _execute(executor, plan, scan, dst, run_id, resume, strict, progress)
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
    for split in ("train", "val"):
        rows = [records[i] for i in sorted(records) if records[i]["split"] == split]
        if rows:
            write_metadata(dst / split / METADATA_NAME, ({k: v for k, v in r.items() if k != "split"} for r in rows))
    summary["timings"]["total"] = time.perf_counter() - started
    write_card(dst, _card(summary, recipe))
    shutil.rmtree(dst / STATE_DIR, ignore_errors=True)
    return summary


def _execute(executor: Executor, plan: Plan, scan: ScanResult, dst: Path, run_id: str, resume: bool, strict: bool,
             progress: bool) -> tuple[dict[int, dict], list[dict], int]:
    """Run every row not already done; journal each finished one. Returns records by row, failures, rows reused."""
    from tqdm import tqdm

    state = dst / STATE_DIR
    journal_path = state / "journal.jsonl"
    done: dict[int, dict[str, Any]] = {}
    card = read_card(dst)
    run_file = state / "run.json"
    if resume and (card is not None or run_file.is_file()):  # else: nothing to resume, a fresh run
        previous = card.get("fingerprint") if card else None
        if previous is None and run_file.is_file():
            previous = json.loads(run_file.read_text(encoding="utf-8")).get("fingerprint")
        if previous != run_id:
            raise DestinationError(f"cannot resume into {dst}: it was made from a different source, recipe, seed or "
                                   f"split", hint="use --overwrite to start it again")
        if card is not None:  # a finished run: its rows are all there
            done = {r["row"]: {**r, "split": split} for split in ("train", "val")
                    for r in _metadata_or_empty(dst / split / METADATA_NAME)}
        done.update(read_journal(journal_path))
        done = {i: r for i, r in done.items() if i < len(plan.rows) and (dst / r["split"] / r["file_name"]).is_file()}
        for folder in (dst / "train", dst / "val"):
            for tmp in folder.rglob("*.augexpand-tmp") if folder.exists() else []:
                if is_temp_file(tmp.name):
                    tmp.unlink()
    state.mkdir(parents=True, exist_ok=True)
    write_atomic(state / "run.json", json.dumps({"tool": "augexpand", "fingerprint": run_id}) + "\n")
    # val/<class>/ only for a class that holds out an image: torchvision's ImageFolder refuses an empty folder (a
    # class too small to hold one out has none). Every class keeps its train/<class>/ (a training row may land in
    # any class by its soft label).
    for name in scan.classes:
        (dst / "train" / name).mkdir(parents=True, exist_ok=True)
    for label in sorted({r.label for r in plan.rows if r.split == "val"}):
        (dst / "val" / scan.classes[label]).mkdir(parents=True, exist_ok=True)

    todo = [r for r in plan.rows if r.index not in done]
    records = dict(done)
    failures: list[dict[str, Any]] = []
    bar = tqdm(total=len(todo), unit="img", desc="expand", disable=not progress, dynamic_ncols=True,
               file=sys.stderr)
    # Each task goes with its group's key: a worker that gets the next piece of the same group keeps its images.
    with open(journal_path, "a", encoding="utf-8") as journal:
        for results in executor.run(_tasks(todo, plan.groups, executor.workers)):
            for r in results:
                if "error" in r:
                    if strict and r["unreadable"]:
                        raise SourceError(f"{r['source']}: {r['error']} (--strict)")
                    failures.append(r)
                    continue
                records[r["row"]] = r
                journal.write(json.dumps(r) + "\n")
            journal.flush()
            bar.update(len(results))
    bar.close()
    return records, failures, len(done)


def _metadata_or_empty(path: Path) -> list[dict[str, Any]]:
    from augexpand.manifest import read_metadata

    return read_metadata(path) if path.is_file() else []


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
    card = {k: v for k, v in summary.items() if k not in ("dst", "dry_run", "resumed_rows")}
    card["recipe"] = recipe.resolved()
    card["versions"] = _versions(recipe)
    card["layout"] = {"train": "train/<class>/<file>", "manifest": f"train/{METADATA_NAME}",
                      "val": "val/<class>/<file> (untouched source images)" if summary["val_images"] else None}
    return card
