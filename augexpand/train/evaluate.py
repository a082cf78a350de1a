"""Scoring a trained run on an ImageFolder: top-1 accuracy, balanced accuracy, macro-F1, per-class recall,
precision and F1, and the confusion matrix."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from augexpand.errors import TrainingError
from augexpand.train import data as D
from augexpand.train.loop import (
    Runtime,
    eval_batch_size,
    evaluate,
    load_checkpoint,
    loader_workers,
    model_from_checkpoint,
    resolve_device,
)

__all__ = ["checkpoint_path", "classification_scores", "evaluate_run", "format_report", "plot_confusion"]

log = logging.getLogger(__name__)


def checkpoint_path(run: Path, which: str = "best") -> Path:
    """The checkpoint file of a run folder (``best`` or ``last``), or ``run`` itself when it is a file."""
    run = Path(run)
    if run.is_file():
        return run
    if not run.exists():
        raise TrainingError(f"run {run} does not exist")
    return run / f"{which}.pt"


def classification_scores(confusion: np.ndarray) -> dict[str, Any]:
    """Scores from a confusion matrix (rows: true class, columns: predicted), defined as scikit-learn defines them.

    - ``balanced_accuracy``: the mean recall over the classes that occur in the true labels
      (``sklearn.metrics.balanced_accuracy_score``);
    - ``macro_f1``: the mean F1 over the classes that occur in the true or the predicted labels, a class with no
      true positive scoring 0 (``f1_score(average="macro")``);
    - per class: ``recall`` (None when the class has no image), ``precision`` (None when never predicted), ``f1``.
    """
    c = np.asarray(confusion, dtype=np.float64)
    tp = np.diag(c)
    support, predicted = c.sum(1), c.sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.where(support > 0, tp / support, np.nan)
        precision = np.where(predicted > 0, tp / predicted, np.nan)
        denom = support + predicted  # 2 tp + fp + fn
        f1 = np.where(denom > 0, 2 * tp / denom, np.nan)
    present = support > 0
    seen = (support > 0) | (predicted > 0)
    total = c.sum()
    return {
        "accuracy": float(tp.sum() / total) if total else 0.0,
        "balanced_accuracy": float(recall[present].mean()) if present.any() else 0.0,
        "macro_f1": float(f1[seen].mean()) if seen.any() else 0.0,
        "recall": [None if np.isnan(v) else float(v) for v in recall],
        "precision": [None if np.isnan(v) else float(v) for v in precision],
        "f1": [None if np.isnan(v) else float(v) for v in f1],
    }


def evaluate_run(run: Path, folder: Path, which: str = "best", device: str = "auto", batch_size: int = 256,
                 workers: int = 2, progress: bool = False) -> dict[str, Any]:
    """Evaluate a run's checkpoint on the ImageFolder ``folder`` (or a split with metadata.jsonl).

    The folder's classes must be among the run's classes (a subset is fine); anything else is a class mismatch.
    """
    path = checkpoint_path(run, which)
    ckpt = load_checkpoint(path)
    classes = list(ckpt["classes"])
    folder = Path(folder)
    if not folder.is_dir():
        raise TrainingError(f"evaluation folder {folder} does not exist" if not folder.exists()
                            else f"evaluation path {folder} is not a folder")
    splits = [name for name in ("train", "val", "test") if (folder / name).is_dir() and name not in classes]
    if splits:
        raise TrainingError(f"{folder} holds splits ({', '.join(splits)}), not class folders",
                            hint=f"evaluate one split, e.g. {folder / splits[-1]}")
    split = D.read_split(folder, classes)
    split = D.readable(split)  # FileBatches cannot skip a file: leave out what its header rules out
    size = int(ckpt["size"])
    model = model_from_checkpoint(ckpt)
    rt = Runtime.create(resolve_device(device), amp=True, channels_last=True)
    model.to(rt.device)
    if rt.channels_last:
        model.to(memory_format=torch.channels_last)
    dataset = D.FileBatches(split, size, augment=False)
    workers = loader_workers(workers)  # at most one per core
    plan = D.EpochPlan(len(split), eval_batch_size(batch_size, size), 0, shuffle=False)
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, sampler=plan, num_workers=workers,
                                         worker_init_fn=D._worker_init if workers else None,
                                         pin_memory=rt.device.type == "cuda")
    result = evaluate(model, loader, rt, len(classes))
    confusion = result["confusion"]
    scores = classification_scores(confusion)
    per_class = {}
    for i, name in enumerate(classes):
        # "accuracy" of a class is its recall (kept under that name for earlier readers of the JSON)
        per_class[name] = {"images": int(confusion[i].sum()), "accuracy": scores["recall"][i],
                           "precision": scores["precision"][i], "f1": scores["f1"][i]}
    return {
        "checkpoint": str(path),
        "folder": str(folder),
        "images": int(result["images"]),
        "accuracy": result["acc"],
        "balanced_accuracy": scores["balanced_accuracy"],
        "macro_f1": scores["macro_f1"],
        "loss": result["loss"],
        "classes": classes,
        "per_class": per_class,
        "confusion": confusion.tolist(),
        "skipped": split.skipped,  # files left out (unreadable): {"file": relative to the folder, "reason"}
    }


def format_report(result: dict[str, Any]) -> str:
    """The accuracy, balanced accuracy and macro-F1, a per-class table and the confusion matrix as plain text."""
    classes = result["classes"]
    title = (f"top-1 accuracy {result['accuracy']:.4f} on {result['images']} images of {result['folder']} "
             f"({result['checkpoint']})")
    present = sum(1 for row in result["per_class"].values() if row["images"])
    lines = [title,
             f"balanced accuracy {result['balanced_accuracy']:.4f} (mean recall over the {present} classes present)",
             f"macro-F1 {result['macro_f1']:.4f}", ""]
    width = max(5, *(len(c) for c in classes))
    lines.append(f"  {'class'.ljust(width)}  images    recall  precision        F1")

    def num(v: float | None, w: int) -> str:
        return ("-" if v is None else f"{v:.4f}").rjust(w)

    for name, row in result["per_class"].items():
        lines.append(f"  {name.ljust(width)}  {row['images']:>6}  {num(row['accuracy'], 8)}  "
                     f"{num(row['precision'], 9)}  {num(row['f1'], 8)}")
    lines += ["", "confusion matrix (rows: true class, columns: predicted class)"]
    confusion = np.asarray(result["confusion"])
    cell = max(len(str(confusion.max())), 3)
    short = [c[:cell] for c in classes]
    lines.append("  " + " " * width + "  " + " ".join(s.rjust(cell) for s in short))
    for name, row in zip(classes, confusion):
        lines.append(f"  {name.ljust(width)}  " + " ".join(str(v).rjust(cell) for v in row))
    return "\n".join(lines)


def plot_confusion(result: dict[str, Any], path: Path) -> None:
    """The confusion matrix as a PNG: counts in each cell, colour by the fraction of the true class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from augexpand.folder import display_name

    classes = [display_name(c) for c in result["classes"]]  # a name that is not UTF-8: %XX, as the output names it
    confusion = np.asarray(result["confusion"], dtype=float)
    fraction = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    n = len(classes)
    side = min(2 + 0.55 * n, 18)
    fig, ax = plt.subplots(figsize=(side + 1, side))
    im = ax.imshow(fraction, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), classes, rotation=45, ha="right")
    ax.set_yticks(range(n), classes)
    ax.set(xlabel="predicted", ylabel="true", title=f"top-1 accuracy {result['accuracy']:.3f} "
                                                    f"({result['images']} images)")
    if n <= 30:
        for i in range(n):
            for j in range(n):
                if confusion[i, j]:
                    ax.text(j, i, int(confusion[i, j]), ha="center", va="center", fontsize=8,
                            color="white" if fraction[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    import warnings

    from augexpand.folder import GLYPH_WARNING, write_figure

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", GLYPH_WARNING)  # write_figure says it once
        fig.tight_layout()

    try:
        write_figure(fig, path)
    finally:
        plt.close(fig)
