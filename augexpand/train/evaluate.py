"""Scoring a trained run on an ImageFolder: top-1 accuracy, per-class accuracy and the confusion matrix."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from augexpand.errors import TrainingError
from augexpand.train import data as D
from augexpand.train.loop import Runtime, evaluate, load_checkpoint, model_from_checkpoint, resolve_device

__all__ = ["checkpoint_path", "evaluate_run", "format_report", "plot_confusion"]

log = logging.getLogger(__name__)


def checkpoint_path(run: Path, which: str = "best") -> Path:
    """The checkpoint file of a run folder (``best`` or ``last``), or ``run`` itself when it is a file."""
    run = Path(run)
    if run.is_file():
        return run
    if not run.exists():
        raise TrainingError(f"run {run} does not exist")
    return run / f"{which}.pt"


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
    size = int(ckpt["size"])
    model = model_from_checkpoint(ckpt)
    rt = Runtime.create(resolve_device(device), amp=True, channels_last=True)
    model.to(rt.device)
    if rt.channels_last:
        model.to(memory_format=torch.channels_last)
    dataset = D.FileBatches(split, size, augment=False)
    plan = D.EpochPlan(len(split), batch_size, 0, shuffle=False)
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, sampler=plan, num_workers=workers,
                                         worker_init_fn=D._worker_init if workers else None,
                                         pin_memory=rt.device.type == "cuda")
    result = evaluate(model, loader, rt, len(classes))
    confusion = result["confusion"]
    per_class = {}
    for i, name in enumerate(classes):
        n = int(confusion[i].sum())
        per_class[name] = {"images": n, "accuracy": float(confusion[i, i] / n) if n else None}
    return {
        "checkpoint": str(path),
        "folder": str(folder),
        "images": int(result["images"]),
        "accuracy": result["acc"],
        "loss": result["loss"],
        "classes": classes,
        "per_class": per_class,
        "confusion": confusion.tolist(),
    }


def format_report(result: dict[str, Any]) -> str:
    """The accuracy, a per-class table and the confusion matrix as plain text."""
    classes = result["classes"]
    title = (f"top-1 accuracy {result['accuracy']:.4f} on {result['images']} images of {result['folder']} "
             f"({result['checkpoint']})")
    lines = [title, ""]
    width = max(5, *(len(c) for c in classes))
    lines.append(f"  {'class'.ljust(width)}  images  accuracy")
    for name, row in result["per_class"].items():
        acc = "-" if row["accuracy"] is None else f"{row['accuracy']:.4f}"
        lines.append(f"  {name.ljust(width)}  {row['images']:>6}  {acc:>8}")
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

    classes = result["classes"]
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
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
