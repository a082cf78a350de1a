"""Running an expansion: check the destination, scan, plan, execute rows with workers, write the manifest and card.

Workers receive a partner group at a time (every row whose first image is one of a seeded group of about 32
sources, from which mixing partners are also drawn), decode each image once for all the rows of the group that
use it, keep it in a bounded cache only while the group runs, and write every file atomically. The parent
journals finished rows, so that ``--resume`` redoes nothing, and writes metadata.jsonl and dataset.json last.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import random
import shutil
import sys
import time
from collections import Counter, OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from augexpand import __version__
from augexpand.errors import AugexpandError, DestinationError, ImageReadError, SourceError
from augexpand.folder import ScanResult, decode_image, encode_image, is_temp_file, scan_image_folder, write_atomic
from augexpand.manifest import CARD_NAME, METADATA_NAME, read_card, write_card, write_metadata
from augexpand.mixing import MIXERS, smote_interpolate, soft_label
from augexpand.plan import OPS, Plan, Row, make_plan, row_seed
from augexpand.recipe import Recipe, build_pipeline, load_recipe

__all__ = ["ExpandError", "default_workers", "expand", "fit_to_size"]

log = logging.getLogger("augexpand")

STATE_DIR = ".augexpand"  # inside dst while a run is in progress: run.json and the journal
PARALLEL_SCAN_FILES = 500  # probe image headers in parallel from this many files on
CACHE_BYTES = 128 << 20  # decoded images a worker keeps while it runs one task (a partner group)
TASKS_PER_WORKER = 8  # at least this many tasks per worker (groups cut when fewer): the last one finishes early


class ExpandError(AugexpandError):
    """Some planned images could not be made."""


def default_workers() -> int:
    """All the cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


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
    resized = cv2.resize(image, (nw, nh), interpolation=interp) if (nh, nw) != (h, w) else image
    y0, x0 = (nh - th) // 2, (nw - tw) // 2
    return np.ascontiguousarray(resized[y0:y0 + th, x0:x0 + tw])


# --------------------------------------------------------------------------------------------------------------
# Worker side


@dataclass(frozen=True)
class _Context:
    """Everything a worker needs, sent once per worker."""

    src: str
    dst: str
    rels: list[str]
    labels: list[int]
    classes: list[str]
    recipe: Recipe


class _Worker:
    """Executes rows. One per process; holds the pipeline and a bounded cache of decoded sources."""

    def __init__(self, ctx: _Context) -> None:
        import cv2

        cv2.setNumThreads(1)  # scale with processes, not threads: and the same arithmetic for any --workers
        self.ctx = ctx
        self.recipe = ctx.recipe
        self.pipeline = build_pipeline(ctx.recipe.pipeline) if ctx.recipe.pipeline else None
        self.cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self.cached_bytes = 0
        self.cache_key: object = None
        self.n_classes = len(ctx.classes)

    def load(self, i: int) -> np.ndarray:
        """Decode source ``i`` (read-only array; cached, least recently used goes first)."""
        image = self.cache.get(i)
        if image is not None:
            self.cache.move_to_end(i)
            return image
        image = decode_image(Path(self.ctx.src) / self.ctx.rels[i])
        image.flags.writeable = False  # a transform that writes into its input would corrupt later rows
        self.cache[i] = image
        self.cached_bytes += image.nbytes
        while self.cached_bytes > CACHE_BYTES and len(self.cache) > 1:
            _, old = self.cache.popitem(last=False)
            self.cached_bytes -= old.nbytes
        return image

    def augment(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.pipeline is None:
            return image
        # One generator pair shared by every transform of the pipeline, drawn from the row's own stream: 8x
        # cheaper per row than set_random_seed, which seeds two new generators for each transform.
        self.pipeline.set_random_state(rng, random.Random(int(rng.integers(1 << 53))))
        return self.pipeline(image=image)["image"]

    def run_task(self, rows: list[Row], key: object = None) -> list[dict[str, Any]]:
        """Run a task's rows. A task of another partner group (``key``) than the last one starts with an empty
        cache (the last group's images are not needed again); a further piece of the same group keeps it."""
        if key is None or key != self.cache_key:
            self.cache.clear()
            self.cached_bytes = 0
            self.cache_key = key
        out = []
        for row in rows:
            try:
                out.append(self.run_row(row))
            except ImageReadError as exc:
                bad = next((s for s in row.sources if self._unreadable(s)), row.sources[0])
                out.append({"row": row.index, "error": str(exc), "source": self.ctx.rels[bad], "unreadable": True})
            except Exception as exc:  # noqa: BLE001 -- a recipe that fails on this image (a crop larger than it)
                message = f"{type(exc).__name__}: {exc}".splitlines()[0]
                out.append({"row": row.index, "error": message, "source": self.ctx.rels[row.sources[0]],
                            "unreadable": False})
        return out

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
        write_atomic(Path(ctx.dst) / "train" / folder / row.name, data)
        return self._record(row, folder, target, seed, params)

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
            image = fit_to_size(self.augment(self.load(row.sources[0]), rng), size, fit)
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
        dst = Path(self.ctx.dst) / "val" / folder / row.name
        tmp = dst.with_name(f".{dst.name}.{os.getpid()}.augexpand-tmp")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
        return self._record(row, folder, target, seed, {})

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


_WORKER: _Worker | None = None


def _init_worker(ctx: _Context) -> None:
    global _WORKER
    _WORKER = _Worker(ctx)


def _run_task(task: tuple[object, list[Row]]) -> list[dict[str, Any]]:
    assert _WORKER is not None
    key, rows = task
    return _WORKER.run_task(rows, key)


def _descriptor(path: Path):
    from augexpand.oversample import image_descriptor

    return image_descriptor(path)


# --------------------------------------------------------------------------------------------------------------
# Parent side


def _inside(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def _check_paths(src: Path, dst: Path) -> None:
    if _inside(dst, src):
        raise DestinationError(f"destination {dst} is {'the source' if dst == src else 'inside the source'} {src}; "
                               f"the source is never written to")
    if _inside(src, dst):
        raise DestinationError(f"destination {dst} contains the source {src}; choose a folder outside it")


def _ours(dst: Path) -> bool:
    return read_card(dst) is not None or (dst / STATE_DIR / "run.json").is_file()


def _prepare_destination(dst: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to write into a folder that is not empty, unless resuming or overwriting an earlier run of ours."""
    if dst.exists() and not dst.is_dir():
        raise DestinationError(f"destination {dst} exists and is not a folder")
    if not dst.exists() or not any(dst.iterdir()):
        return
    if resume:
        if not _ours(dst):
            raise DestinationError(f"cannot resume into {dst}: it was not written by augexpand "
                                   f"(no {CARD_NAME} or {STATE_DIR}/run.json of ours)")
        return
    if overwrite:
        if not _ours(dst):
            raise DestinationError(f"refusing to overwrite {dst}: it is not empty and was not written by augexpand "
                                   f"(no {CARD_NAME} of ours); nothing was deleted")
        for name in ("train", "val", CARD_NAME, STATE_DIR):
            path = dst / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
        return
    raise DestinationError(f"destination {dst} is not empty",
                           hint="use --resume to finish an earlier run there, or --overwrite to replace it")


def _fingerprint(scan: ScanResult, recipe: Recipe, val_fraction: float) -> str:
    """What a resumed run must share with the interrupted one: recipe, split and the exact source files."""
    h = hashlib.sha256()
    h.update(json.dumps([__version__, recipe.resolved(), val_fraction], sort_keys=True, default=str).encode())
    for s in scan.sources:
        st = (scan.root / s.rel).stat()
        h.update(f"{s.rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:32]


def _read_journal(path: Path) -> dict[int, dict[str, Any]]:
    done: dict[int, dict[str, Any]] = {}
    if not path.exists():
        return done
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:  # the line an interruption cut short
                continue
            done[record["row"]] = record
    return done


def _tasks(rows: list[Row], groups: dict[int, int], workers: int) -> list[tuple[tuple[str, int], list[Row]]]:
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


def _probe_map(workers: int):
    """A map for the scan's header probes: in a short-lived process pool when the folder is large (the probes
    cost ~0.2 ms a file, worth spreading over the cores from a few hundred files on), else in this process."""

    def probe_map(fn, paths: list[Path]) -> list:
        if workers < 2 or len(paths) < PARALLEL_SCAN_FILES or not sys.platform.startswith("linux"):
            return list(map(fn, paths))
        import multiprocessing as mp

        with mp.get_context("fork").Pool(workers) as pool:
            return pool.map(fn, paths, chunksize=64)

    return probe_map


class _Pool:
    """A process pool, or the current process when one worker is asked for (no start-up, no IPC)."""

    def __init__(self, workers: int, ctx: _Context) -> None:
        self.pool = None
        self.workers = workers
        if workers > 1:
            import multiprocessing as mp

            method = "fork" if sys.platform.startswith("linux") else "spawn"
            self.pool = mp.get_context(method).Pool(workers, initializer=_init_worker, initargs=(ctx,))
        else:
            _init_worker(ctx)

    def imap(self, fn, items, unordered: bool = False, chunksize: int = 1) -> Iterator:
        if self.pool is None:
            return map(fn, items)
        items = list(items)
        run = self.pool.imap_unordered if unordered else self.pool.imap
        return run(fn, items, chunksize=chunksize)

    def close(self, terminate: bool = False) -> None:
        if self.pool is not None:
            (self.pool.terminate if terminate else self.pool.close)()
            self.pool.join()


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
) -> dict[str, Any]:
    """Expand the ImageFolder ``src`` into ``dst`` (``dst/train``, ``dst/val``, metadata.jsonl, dataset.json).

    ``overrides`` sets recipe keys on top of the recipe (``seed``, ``copies``, ``output.format``, ...).
    ``src=None`` uses the built-in example dataset. Returns the summary that ``--json`` prints.
    """
    started = time.perf_counter()
    recipe = load_recipe(recipe, overrides)  # every recipe error before anything is read
    if not 0.0 <= val_fraction < 1.0:
        raise AugexpandError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if src is None:
        from augexpand.example import example_dir

        src = example_dir()
    src, dst = Path(src).expanduser().resolve(), Path(dst).expanduser().resolve()
    if not src.is_dir():
        raise SourceError(f"source folder {src} does not exist" if not src.exists() else f"source {src} is not a folder")
    _check_paths(src, dst)
    if not dry_run:
        _prepare_destination(dst, resume, overwrite)

    workers = max(1, workers or default_workers())
    scan = scan_image_folder(src, strict=strict, imap=_probe_map(workers))
    for s in scan.skipped:
        log.warning("skipped %s: %s", s.rel, s.reason)
    for name in scan.empty_classes:
        log.warning("class folder %r has no readable image: left out", name)
    t_scan = time.perf_counter()

    ctx = _Context(str(src), str(dst), [s.rel for s in scan.sources], [s.label for s in scan.sources],
                   scan.classes, recipe)
    pool = _Pool(workers, ctx)
    try:
        plan = make_plan(scan, recipe, val_fraction,
                         imap=lambda fn, items: pool.imap(_descriptor, items, chunksize=8))
        for note in plan.notes:
            log.info("%s", note)
        t_plan = time.perf_counter()
        fingerprint = _fingerprint(scan, recipe, val_fraction)
        if dry_run:
            return _summary(scan, plan, recipe, {}, [], dst, workers, fingerprint, dry_run=True,
                            timings={"scan": t_scan - started, "plan": t_plan - t_scan})
        records, failures, reused = _execute(pool, plan, scan, recipe, dst, fingerprint, resume, strict, progress)
    except BaseException:
        pool.close(terminate=True)
        raise
    pool.close()
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
    summary = _summary(scan, plan, recipe, records, unreadable, dst, workers, fingerprint, reused=reused,
                       timings=timings)
    for split in ("train", "val"):
        rows = [records[i] for i in sorted(records) if records[i]["split"] == split]
        if rows:
            write_metadata(dst / split / METADATA_NAME, ({k: v for k, v in r.items() if k != "split"} for r in rows))
    summary["timings"]["total"] = time.perf_counter() - started
    write_card(dst, _card(summary, recipe))
    shutil.rmtree(dst / STATE_DIR, ignore_errors=True)
    return summary


def _execute(pool: _Pool, plan: Plan, scan: ScanResult, recipe: Recipe, dst: Path, fingerprint: str,
             resume: bool, strict: bool, progress: bool) -> tuple[dict[int, dict], list[dict], int]:
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
        if previous != fingerprint:
            raise DestinationError(f"cannot resume into {dst}: it was made from a different source, recipe, seed or "
                                   f"split", hint="use --overwrite to start it again")
        if card is not None:  # a finished run: its rows are all there
            done = {r["row"]: {**r, "split": split} for split in ("train", "val")
                    for r in _metadata_or_empty(dst / split / METADATA_NAME)}
        done.update(_read_journal(journal_path))
        done = {i: r for i, r in done.items() if i < len(plan.rows) and (dst / r["split"] / r["file_name"]).is_file()}
        for folder in (dst / "train", dst / "val"):
            for tmp in folder.rglob("*.augexpand-tmp") if folder.exists() else []:
                if is_temp_file(tmp.name):
                    tmp.unlink()
    state.mkdir(parents=True, exist_ok=True)
    write_atomic(state / "run.json", json.dumps({"tool": "augexpand", "fingerprint": fingerprint}) + "\n")
    for split in ("train", "val"):
        if any(r.split == split for r in plan.rows):
            for name in scan.classes:
                (dst / split / name).mkdir(parents=True, exist_ok=True)

    todo = [r for r in plan.rows if r.index not in done]
    records = dict(done)
    failures: list[dict[str, Any]] = []
    bar = tqdm(total=len(todo), unit="img", desc="expand", disable=not progress, dynamic_ncols=True,
               file=sys.stderr)
    # Each task goes with its group's key: a worker that gets the next piece of the same group keeps its images.
    with open(journal_path, "a", encoding="utf-8") as journal:
        for results in pool.imap(_run_task, _tasks(todo, plan.groups, pool.workers), unordered=True):
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
             workers: int, fingerprint: str, *, dry_run: bool = False, reused: int = 0,
             timings: dict[str, float]) -> dict[str, Any]:
    classes = scan.classes
    source_counts = scan.counts()
    val_counts = Counter(classes[scan.sources[i].label] for i in plan.val_sources)
    train_source_counts = Counter(classes[scan.sources[i].label] for i in plan.train_sources)
    if dry_run:
        per_class_op = plan.counts(classes)
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
        "val_images": len(plan.val_sources),
        "resumed_rows": reused,
        "imbalance_ratio": {"source": _ratio(list(source_counts.values())), "train": _ratio(counts_after)},
        "oversample_counts": plan.oversample_counts,
        "skipped": skipped,
        "ignored_non_image_files": scan.ignored,
        "empty_classes": scan.empty_classes,
        "converted_to_rgb8": scan.conversions,
        "notes": plan.notes,
        "workers": workers,
        "fingerprint": fingerprint,
        "timings": {k: round(v, 4) for k, v in timings.items()},
        "images_per_second": round((made - reused) / timings["write"], 1) if timings.get("write") else None,
    }


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
