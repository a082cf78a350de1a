"""Does an expanded few-shot set train a better classifier? Original images vs `augexpand expand` of them.

Real data: scikit-learn's handwritten digits (8x8, 10 classes), upscaled to 32x32 RGB. For each seed:

- draw ``--shots`` training images per class (the few-shot set), 10 per class for validation (curves only), and
  keep every other image (about 1650) as the test set;
- expand the few-shot set with each recipe (the real CLI: ``augexpand expand -r RECIPE --size 32 --seed S``);
- train the same model (smallcnn, width 32) on the original few-shot set and on each expansion, with the same
  number of optimizer steps, batch size, schedule and on-the-fly augmentation, and the same seed;
- score the last checkpoint on the test set (``augexpand.train.evaluate.evaluate_run``).

Prints a Markdown table of test accuracy, mean ± std over the seeds, and draws the curves of the first seed.

    python bench/accuracy_digits.py                                   # light and heavy, 5 seeds
    python bench/accuracy_digits.py --recipes light heavy bench/digits.yaml --seeds 5
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

VAL_PER_CLASS = 10


def write_split(root: Path, images: np.ndarray, labels: np.ndarray, index: np.ndarray, size: int) -> Path:
    """Write images[index] as root/d<label>/<index>.png, upscaled to size x size (bicubic), RGB."""
    for i in index:
        folder = root / f"d{labels[i]}"
        folder.mkdir(parents=True, exist_ok=True)
        image = cv2.resize(images[i], (size, size), interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(str(folder / f"{i:04d}.png"), image)  # grey: the same in BGR and RGB order
    return root


def draw(seed: int, shots: int, images: np.ndarray, labels: np.ndarray, work: Path, size: int) -> tuple[Path, ...]:
    """The few-shot train set, the validation set and the test set of one seed."""
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    for c in range(10):
        members = rng.permutation(np.flatnonzero(labels == c))
        train_idx += list(members[:shots])
        val_idx += list(members[shots:shots + VAL_PER_CLASS])
    test_idx = np.setdiff1d(np.arange(len(labels)), train_idx + val_idx)
    root = work / f"seed{seed}"
    return (write_split(root / "src", images, labels, np.array(train_idx), size),
            write_split(root / "val", images, labels, np.array(val_idx), size),
            write_split(root / "test", images, labels, test_idx, size))


def expand(src: Path, dst: Path, recipe: str, seed: int, size: int) -> int:
    cmd = [sys.executable, "-m", "augexpand", "expand", "-r", recipe, str(src), str(dst), "--size", str(size),
           "--seed", str(seed), "--overwrite", "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-2000:]}{out.stdout[-2000:]}")
    return int(json.loads(out.stdout)["images_out"])


def train_arm(data: Path, val: Path, test: Path, run: Path, seed: int, args) -> dict:
    from augexpand.train.config import make_config
    from augexpand.train.evaluate import evaluate_run
    from augexpand.train.loop import train

    config = make_config(data=data, val=val, out=run, model="smallcnn", size=args.size, steps=args.steps,
                         batch_size=args.batch_size, seed=seed, workers=0, progress=False, flip=args.flip,
                         crop_pad=args.crop_pad, label_smoothing=args.label_smoothing, lr=args.lr)
    start = time.perf_counter()
    summary = train(config, overwrite=True)
    result = evaluate_run(run, test, which="last", workers=0)
    return {"test_acc": result["accuracy"], "train_images": summary["train_images"], "steps": summary["steps"],
            "epochs": summary["epochs"], "seconds": time.perf_counter() - start}


def plot(work: Path, arms: list[str], seed: int, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for arm in arms:
        rows = [json.loads(line) for line in (work / f"seed{seed}" / f"run_{arm}" / "metrics.jsonl").open()]
        steps = [r["step"] for r in rows]
        line, = ax1.plot(steps, [r["train_loss"] for r in rows], label=f"{arm} train")
        ax1.plot(steps, [r["val_loss"] for r in rows], linestyle="--", color=line.get_color(), label=f"{arm} val")
        ax2.plot(steps, [r["train_acc"] for r in rows], color=line.get_color(), alpha=0.35)
        ax2.plot(steps, [r["val_acc"] for r in rows], linestyle="--", color=line.get_color(), label=f"{arm} val")
    ax1.set(xlabel="optimizer step", ylabel="loss", title="loss (solid: train, dashed: val)", yscale="log")
    ax2.set(xlabel="optimizer step", ylabel="accuracy", title="accuracy (faint: train, dashed: val)", ylim=(0, 1.01))
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    ax1.legend(fontsize=7, ncol=2)
    ax2.legend(fontsize=8, loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def report(results: dict[str, list[dict]]) -> str:
    """A Markdown table: test accuracy per training set (mean ± std over seeds), and the paired gain over the
    original images of the same seed (mean ± std, and on how many seeds the expanded set won)."""
    header = "| training set | images | test accuracy (mean ± std) | gain over original, paired (mean ± std) | wins |"
    lines = [header, "|---|---:|---:|---:|---:|"]
    base = [r["test_acc"] for r in results["original"]]
    for arm, rows in results.items():
        accs = [r["test_acc"] for r in rows]
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        images = statistics.mean(r["train_images"] for r in rows)
        if arm == "original":
            lines.append(f"| {arm} | {images:.0f} | {statistics.mean(accs):.4f} ± {sd:.4f} | | |")
            continue
        gains = [100 * (a - b) for a, b in zip(accs, base)]
        gsd = statistics.stdev(gains) if len(gains) > 1 else 0.0
        wins = sum(g > 0 for g in gains)
        lines.append(f"| {arm} | {images:.0f} | {statistics.mean(accs):.4f} ± {sd:.4f} | "
                     f"{statistics.mean(gains):+.1f} ± {gsd:.1f} pts | {wins}/{len(gains)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipes", nargs="+", default=["light", "heavy"])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--shots", type=int, default=5, help="Training images per class.")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--label-smoothing", type=float, default=0.0)
    parser.add_argument("--flip", action=argparse.BooleanOptionalAction, default=False,
                        help="On-the-fly horizontal flip in training (off: digits are not mirror-symmetric).")
    parser.add_argument("--crop-pad", type=float, default=0.125, help="On-the-fly translation in training.")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "augexpand_digits")
    parser.add_argument("--curves", type=Path, default=None, help="Draw the first seed's curves here (PNG).")
    parser.add_argument("--json", type=Path, default=None, help="Write every result to this JSON file.")
    parser.add_argument("--report", type=Path, default=None, help="Only print the table of an earlier --json file.")
    args = parser.parse_args()
    if args.report:
        print(report(json.loads(args.report.read_text())["results"]))
        return
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    logging.getLogger("augexpand").setLevel(logging.ERROR)

    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.clip(digits.images * (255 / 16), 0, 255).astype(np.uint8)
    labels = digits.target
    arms = ["original", *[Path(r).stem for r in args.recipes]]
    results: dict[str, list[dict]] = {arm: [] for arm in arms}
    for seed in range(args.seeds):
        src, val, test = draw(seed, args.shots, images, labels, args.work, args.size)
        sets = {"original": src}
        for recipe, arm in zip(args.recipes, arms[1:]):
            sets[arm] = args.work / f"seed{seed}" / f"expand_{arm}"
            expand(src, sets[arm], recipe, seed, args.size)
        for arm in arms:
            r = train_arm(sets[arm], val, test, args.work / f"seed{seed}" / f"run_{arm}", seed, args)
            results[arm].append(r)
            print(f"seed {seed} {arm:>10}: test acc {r['test_acc']:.4f} ({r['train_images']} train images, "
                  f"{r['epochs']} epochs, {r['steps']} steps, {r['seconds']:.0f} s)", flush=True)

    n_test = sum(1 for _ in (args.work / "seed0" / "test").rglob("*.png"))
    print(f"\nsmallcnn (width 32) at {args.size}x{args.size}, {args.shots} images per class, {args.steps} steps of "
          f"{args.batch_size}, on-the-fly translation {args.crop_pad}, flip {'on' if args.flip else 'off'}; "
          f"test: the {n_test} other digits; {args.seeds} seeds\n")
    print(report(results))
    if args.curves:
        plot(args.work, arms, 0, args.curves, f"digits, {args.shots} per class, seed 0: same model, same steps")
        print(f"\ncurves of seed 0: {args.curves}")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results},
                                        indent=2))


if __name__ == "__main__":
    main()
