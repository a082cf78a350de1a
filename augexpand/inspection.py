"""Class counts of a folder: a source ImageFolder, or an ``augexpand expand`` output (per op, val, imbalance).

A source folder is counted by file extension alone (no image is opened), with the scanner's rules: classes are
the sorted non-hidden folders, images anywhere below them, hidden files and folders skipped. An expanded folder is
counted from its ``train/metadata.jsonl`` (hard label, op and soft label of every image) and ``val/``.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from augexpand.errors import AugexpandError, DestinationError, SourceError
from augexpand.folder import (
    IMAGE_EXTENSIONS,
    _class_folders,
    _hidden,
    display_name,
    open_regular,
    walk_class,
    write_figure,
)
from augexpand.manifest import CARD_NAME, METADATA_NAME, read_card

__all__ = ["InspectError", "count_image_folder", "format_report", "inspect_folder", "plot_counts"]


class InspectError(AugexpandError):
    """A folder that is neither an ImageFolder nor an augexpand output, or a manifest that cannot be read."""


def count_image_folder(root: Path) -> dict[str, Any]:
    """Image files per class folder of ``root`` by extension: counts, empty classes, non-image files, images
    lying outside any class folder, and what the scanner's safety rules pass over (non-regular files, folder links
    that loop or leave their class, unreadable folders). A name that is not UTF-8 is shown with %XX bytes."""
    class_dirs, passed = _class_folders(root)
    counts: dict[str, int] = {}
    ignored = 0
    for d in class_dirs:
        files, more = walk_class(d, root, extensions=None)
        passed += more
        images = sum(f.suffix.lower() in IMAGE_EXTENSIONS for f in files)
        counts[display_name(d.name)] = images
        ignored += len(files) - images
    outside = sum(p.suffix.lower() in IMAGE_EXTENSIONS and not _hidden(p.name) and p.is_file() for p in root.iterdir())
    return {"counts": counts, "empty_classes": [c for c, n in counts.items() if n == 0], "ignored_files": ignored,
            "outside_class_folders": outside, "passed_over": [{"file": s.rel, "reason": s.reason} for s in passed]}


def _is_record(r: Any) -> bool:
    """A metadata.jsonl line as augexpand writes it, as far as counting goes: a class name as its label, an op
    name, soft-label weights in [0, 1]."""
    soft = r.get("soft_label", []) if isinstance(r, dict) else None
    return (isinstance(r, dict) and isinstance(r.get("label"), str) and isinstance(r.get("op", ""), str)
            and isinstance(soft, list) and all(isinstance(w, (int, float)) and not isinstance(w, bool)
                                               and math.isfinite(w) and 0 <= w <= 1 for w in soft))


MAX_LINE = 1 << 20  # a metadata line longer than this is not one of ours (as train reads them)


class _Tally:
    """What counting needs of a metadata.jsonl, gathered line by line in memory that does not grow with it: images
    per (label, op), the sum of the soft labels by position, and how many lines are not records."""

    def __init__(self) -> None:
        self.pairs: Counter = Counter()
        self.soft: list[float] = []
        self.records = 0
        self.bad = 0

    def add(self, r: dict[str, Any]) -> None:
        self.pairs[r["label"], r.get("op", "?")] += 1
        soft = r.get("soft_label") or []
        self.soft.extend([0.0] * (len(soft) - len(self.soft)))
        for k, w in enumerate(soft):
            self.soft[k] += w
        self.records += 1

    def labels(self) -> Counter:
        per: Counter = Counter()
        for (label, _), n in self.pairs.items():
            per[label] += n
        return per


def _lines(f) -> Iterator[bytes | None]:
    """The lines of a binary file; None for one longer than MAX_LINE (read past, never held whole)."""
    while True:
        raw = f.readline(MAX_LINE + 1)
        if not raw:
            return
        if len(raw) > MAX_LINE and not raw.endswith(b"\n"):
            while raw and not raw.endswith(b"\n"):
                raw = f.readline(1 << 20)
            yield None
            continue
        yield raw


def _read_records(manifest: Path) -> _Tally:
    """The tally of a metadata.jsonl's records; the lines that are not records (damaged, or edited by hand) are
    left out and counted, to be said."""
    tally = _Tally()
    try:
        with open_regular(manifest) as f:
            for raw in _lines(f):
                if raw is not None and not raw.strip():
                    continue
                try:
                    r = json.loads(raw.decode("utf-8")) if raw is not None else None
                except (ValueError, RecursionError):  # RecursionError: a line of thousands of nested brackets
                    r = None
                if _is_record(r):
                    tally.add(r)
                else:
                    tally.bad += 1
    except OSError as exc:
        raise InspectError(f"cannot read {manifest}: {exc.strerror or exc}") from None
    return tally


def imbalance_ratio(counts: dict[str, float]) -> float | None:
    """Largest over smallest class count, empty classes left out (None with no images)."""
    values = [v for v in counts.values() if v > 0]
    return round(max(values) / min(values), 3) if values else None


def inspect_folder(path: str | Path) -> dict[str, Any]:
    """Count the images of a source ImageFolder or of an expanded folder (detected by ``dataset.json`` or
    ``train/metadata.jsonl``; a ``train`` folder with its ``metadata.jsonl`` works too). Returns the report that
    ``--json`` prints."""
    root = Path(path).expanduser()
    if not root.exists():
        raise SourceError(f"{root} does not exist")
    if not root.is_dir():
        raise SourceError(f"{root} is not a folder")
    card = read_card(root)
    if card is not None or (root / "train" / METADATA_NAME).is_file():
        return _inspect_expanded(root, root / "train", card)
    if (root / METADATA_NAME).is_file():  # DST/train itself
        return _inspect_expanded(root, root, read_card(root.parent) if root.name == "train" else None)
    if (root / ".augexpand").is_dir():  # a run under way or stopped: not a source whose one class is "train"
        raise InspectError(f"{root} is an unfinished augexpand expand (no train/{METADATA_NAME} yet)",
                           hint="finish it first: the same `augexpand expand` command with --resume, without --shard")
    found = count_image_folder(root)
    if not found["counts"]:
        raise InspectError(f"{root} has no class folders; expected an ImageFolder ({root}/<class>/<image>) or an "
                           f"augexpand output (with {CARD_NAME} and train/{METADATA_NAME})")
    counts = found["counts"]
    return {"dir": str(root), "kind": "source", "classes": list(counts), "counts": counts,
            "total": sum(counts.values()), "imbalance_ratio": imbalance_ratio(counts), **found}


def _inspect_expanded(root: Path, train: Path, card: dict | None) -> dict[str, Any]:
    from augexpand.plan import OPS

    manifest = train / METADATA_NAME
    tally = _Tally()
    notes: list[str] = []
    if manifest.is_file():
        tally = _read_records(manifest)
        if tally.bad:
            notes.append(f"{tally.bad} line(s) of train/{METADATA_NAME} are not records of augexpand: left out")
    folders = count_image_folder(train) if train.is_dir() else {"counts": {}}
    classes = list(card["classes"]) if card else sorted(set(tally.labels()) | set(folders["counts"]))
    if tally.records:
        per_class_op = {c: Counter() for c in classes}
        for (label, op), n in tally.pairs.items():
            per_class_op.setdefault(label, Counter())[op] += n
        soft = {c: tally.soft[k] if k < len(tally.soft) else 0.0 for k, c in enumerate(classes)}
        order = {op: i for i, op in enumerate(OPS)}
        per_class_op = {c: dict(sorted(v.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))
                        for c, v in per_class_op.items()}
        counts = {c: sum(v.values()) for c, v in per_class_op.items()}
        per_op: Counter = Counter()
        for v in per_class_op.values():
            per_op.update(v)
        per_op_sorted = dict(sorted(per_op.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))
        soft_counts = {c: round(v, 3) for c, v in soft.items()}
    else:
        notes.append(f"no {manifest.relative_to(root) if manifest.is_relative_to(root) else manifest}: "
                     f"counted image files per class folder (no per-op counts)")
        counts = {c: folders["counts"].get(c, 0) for c in classes}
        per_class_op, per_op_sorted, soft_counts = {}, {}, None
    val = _val_counts(root / "val", classes, notes) if train != root else None
    source = (card.get("counts") or {}).get("source") if card and isinstance(card.get("counts"), dict) else None
    if not (isinstance(source, dict) and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0
                                             for n in source.values())):
        source = None  # a card edited by hand: its source counts are left out
    return {
        "dir": str(root),
        "kind": "expanded",
        "classes": classes,
        "counts": counts,
        "total": sum(counts.values()),
        "per_op": per_op_sorted,
        "per_class_op": per_class_op,
        "soft_counts": soft_counts,
        "val": val,
        "source": source,
        "imbalance_ratio": imbalance_ratio(counts),
        "imbalance_ratio_soft": imbalance_ratio(soft_counts) if soft_counts else None,
        "imbalance_ratio_source": imbalance_ratio(source) if source else None,
        "recipe": _field(card, "recipe", "source", str),
        "seed": _field(card, "seed", None, int),
        "notes": notes,
    }


def _field(card: dict | None, key: str, inner: str | None, kind: type) -> Any:
    """``card[key]`` (or ``card[key][inner]``) if it is of ``kind``, else None (a card edited by hand)."""
    value = card.get(key) if card else None
    if inner is not None:
        value = value.get(inner) if isinstance(value, dict) else None
    return value if isinstance(value, kind) and not isinstance(value, bool) else None


def _val_counts(val: Path, classes: list[str], notes: list[str]) -> dict[str, int] | None:
    if not val.is_dir():
        return None
    manifest = val / METADATA_NAME
    if manifest.is_file():
        tally = _read_records(manifest)
        if tally.bad:
            notes.append(f"{tally.bad} line(s) of val/{METADATA_NAME} are not records of augexpand: left out")
        per = tally.labels()
    else:
        per = Counter(count_image_folder(val)["counts"])
    return {c: per.get(c, 0) for c in classes}


# --------------------------------------------------------------------------------------------------------------
# Showing a report


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    cells = [[str(v) for v in r] for r in [header, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return ["  " + "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths)))
            for r in cells]


def format_report(report: dict[str, Any]) -> str:
    """The report as a table: one line per class, a total line, and the imbalance ratio."""
    classes, counts = report["classes"], report["counts"]
    if report["kind"] == "source":
        lines = [f"ImageFolder {report['dir']}: {report['total']} images in {len(classes)} classes (by extension)"]
        lines += _table(["class", "images"], [[c, counts[c]] for c in classes] + [["total", report["total"]]])
        lines.append(f"imbalance (largest/smallest class): {report['imbalance_ratio']}")
        if report["empty_classes"]:
            lines.append(f"class folders with no image: {', '.join(report['empty_classes'])}")
        if report["outside_class_folders"]:
            lines.append(f"{report['outside_class_folders']} image(s) outside any class folder (not counted)")
        if report["ignored_files"]:
            lines.append(f"{report['ignored_files']} non-image file(s) ignored")
        for item in report.get("passed_over", []):
            lines.append(f"passed over {item['file']}: {item['reason']}")
        return "\n".join(lines)

    ops = list(report["per_op"])
    source, val, soft = report["source"], report["val"], report["soft_counts"]
    recipe = f"recipe {Path(report['recipe']).stem}, " if report.get("recipe") else ""
    seed = f"seed {report['seed']}" if report.get("seed") is not None else ""
    extra = f" ({recipe}{seed})" if recipe or seed else ""
    n_val = sum(val.values()) if val else 0
    lines = [f"augexpand output {report['dir']}: {report['total']} training images in {len(classes)} classes"
             + (f", {n_val} val" if val else "") + extra]
    header = ["class", *(["source"] if source else []), *(["val"] if val else []), *ops, "train",
              *(["soft"] if soft else [])]
    rows = []
    for c in classes:
        per = report["per_class_op"].get(c, {})
        rows.append([c, *([source.get(c, 0)] if source else []), *([val[c]] if val else []),
                     *(per.get(op, 0) for op in ops), counts[c], *([f"{soft[c]:.1f}"] if soft else [])])
    rows.append(["total", *([sum(source.values())] if source else []), *([n_val] if val else []),
                 *(report["per_op"][op] for op in ops), report["total"],
                 *([f"{sum(soft.values()):.1f}"] if soft else [])])
    lines += _table(header, rows)
    ratio = f"imbalance (largest/smallest class): {report['imbalance_ratio']} in train by label"
    if report["imbalance_ratio_soft"] is not None:
        ratio += f", {report['imbalance_ratio_soft']} by soft label"
    if report["imbalance_ratio_source"] is not None:
        ratio += f"; {report['imbalance_ratio_source']} in the source"
    lines.append(ratio)
    if soft:
        lines.append("soft: each class's share of the soft labels (a mixup image counts 0.7 + 0.3)")
    lines += report["notes"]
    return "\n".join(lines)


def _refuse_inside(out: Path, report: dict[str, Any]) -> None:
    """The chart is never written into the folder it counts: a source ImageFolder is never written to (and the
    chart would be counted as an image of the class next time), nor an expanded set's train/ or val/ split."""
    where = Path(report["dir"]).resolve()
    target = out.resolve()
    guarded = [where] if report["kind"] == "source" else [where / "train", where / "val"]
    for folder in guarded:
        if target == folder or folder in target.parents:
            what = "the source" if report["kind"] == "source" else f"the split {folder.name}/ of"
            raise DestinationError(f"the chart {out} would be written inside {what} {where}; "
                                   f"{'the source is' if report['kind'] == 'source' else 'its splits are'} never "
                                   f"written to: choose a path outside it")


def plot_counts(report: dict[str, Any], out: str | Path) -> Path:
    """Draw the counts as horizontal bars (stacked by op for an expanded set, val hatched) into a PNG, atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out = Path(out).expanduser()
    if out.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise InspectError(f"the chart's file name must end in .png, .svg or .pdf, got {out.name!r}")
    _refuse_inside(out, report)
    classes = report["classes"]
    fig = Figure(figsize=(8, 1.4 + 0.38 * len(classes)), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    y = list(range(len(classes)))
    left = [0.0] * len(classes)
    if report["kind"] == "expanded" and report["per_op"]:
        segments = [(op, [report["per_class_op"][c].get(op, 0) for c in classes]) for op in report["per_op"]]
    else:
        segments = [("train" if report["kind"] == "expanded" else "images", [report["counts"][c] for c in classes])]
    colours = [f"C{i % 10}" for i in range(len(segments))]
    for (name, values), colour in zip(segments, colours):
        ax.barh(y, values, left=left, color=colour, label=name, height=0.7)
        left = [a + b for a, b in zip(left, values)]
    if report.get("val"):
        values = [report["val"][c] for c in classes]
        ax.barh(y, values, left=left, color="white", edgecolor="0.35", hatch="///", label="val (held out)",
                height=0.7)
        left = [a + b for a, b in zip(left, values)]
    for yi, c, total in zip(y, classes, left):
        ax.text(total, yi, f" {report['counts'][c]}", va="center", fontsize=8)
    ax.set_yticks(y, classes)
    ax.invert_yaxis()
    ax.set_xlim(0, max(left + [1]) * 1.12)
    ax.set_xlabel("images")
    kind = "augexpand output" if report["kind"] == "expanded" else "ImageFolder"
    n_val = sum(report["val"].values()) if report.get("val") else 0
    what = f"{report['total']} training images" + (f" + {n_val} val" if n_val else "") \
        if report["kind"] == "expanded" else f"{report['total']} images"
    ax.set_title(f"{kind} {Path(report['dir']).name}: {what}, imbalance {report['imbalance_ratio']}", fontsize=10)
    if len(segments) > 1 or report.get("val"):
        fig.legend(fontsize=8, loc="outside right upper", frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    return write_figure(fig, out)
