"""Does `augexpand tune` pick an expansion that trains a better model? Paired against raw training, on real data.

Three real datasets that ship with scikit-learn and scikit-image (nothing is downloaded):

- ``digits5``: scikit-learn's handwritten digits (8x8 scans, 10 classes) upscaled to 16x16, 5 training images
  per class; the test set is every other digit (about 1750).
- ``digits_lt``: the same digits, long-tailed: 20, 14, 10, 7, 5, 4, 3, 3, 2, 2 training images for classes 0-9;
  the test set is every other digit (balanced), scored by balanced accuracy.
- ``textures``: eight grey photos of scikit-image (brick, grass, gravel, moon, cell, coins, camera, clock) cut
  into 16x16 patches (40x40 regions, reduced): 5 training patches per class from the top half of each photo, 40
  test patches per class from the bottom half, so no test pixel was seen in training. Not digits; flips keep labels.
- ``photos`` (not in the default run): nine colour photos (seven of scikit-image, china and flower of scikit-learn)
  cut into 32x32 patches (64x64 regions, reduced), 5 training patches per class from the top half, 40 test patches
  per class from the bottom half. No recipe, default or rule was chosen on it: a check on data nobody tuned for.

For each dataset and seed: draw the training set; run ``augexpand tune`` on it (its default candidates, the given
budget, the seed); then train the same model (``smallcnn``, the train command's defaults, the same number of
optimizer steps, the same seed) on the raw training images, on ``augexpand expand`` of them with the builtin
``light`` and ``heavy``, and with tune's pick; score each on the test set. Digits train and tune with ``--no-flip``
(the documented advice for digits: a mirrored 2 is not a 2); textures with the default flips.

    python bench/accuracy_tune.py                        # 3 datasets x 5 seeds, tune budget 2.5 min (~20 min)
    python bench/accuracy_tune.py --datasets digits5 --seeds 2 --budget 0.5
    python bench/accuracy_tune.py --report results.json  # the tables of an earlier --json run
    python bench/accuracy_tune.py --write digits5 digits/ --seeds 1   # one seed's folders, to try tune on
    python bench/accuracy_tune.py --arms raw light heavy --steps 500  # no tune: the builtin recipes only (~13 min)
    python bench/accuracy_tune.py --arms raw --seed-offset 100 --seeds 3 --extra mine=my.yaml  # choose on other seeds
    python bench/accuracy_tune.py --arms raw --more-data 2 4      # the yardstick: 2x and 4x the real images
    python bench/accuracy_tune.py --datasets digits5 --size 32 --steps 500 --arms raw light heavy  # larger images

Prints (and with --markdown writes) a table per dataset: balanced accuracy on the test set (mean ± std over seeds),
the paired gain over raw training (mean ± std, wins), what tune picked per seed, and tune's wall time against its
budget.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LONG_TAIL = [20, 14, 10, 7, 5, 4, 3, 3, 2, 2]
TEXTURES = ["brick", "grass", "gravel", "moon", "cell", "coins", "camera", "clock"]
DATASETS = {
    "digits5": {"size": 16, "flip": False},
    "digits_lt": {"size": 16, "flip": False},
    "textures": {"size": 16, "flip": True},
    "photos": {"size": 32, "flip": True},
}
PROOF = ["digits5", "digits_lt", "textures"]  # the proof; photos: a check on data no recipe was tuned on
PHOTOS = ["astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
          "china", "flower"]


def _write(root: Path, name: str, image: np.ndarray) -> None:
    root.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(root / f"{name}.png"), image)  # grey: the same in BGR and RGB order


def make_digits(work: Path, seed: int, per_class: list[int], size: int) -> tuple[Path, Path]:
    """The training folder (per_class[k] digits of class k) and the test folder (every other digit)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.clip(digits.images * (255 / 16), 0, 255).astype(np.uint8)
    rng = np.random.default_rng([seed, 1])
    train, test = work / "train", work / "test"
    for k in range(10):
        members = rng.permutation(np.flatnonzero(digits.target == k))
        for j, i in enumerate(members):
            image = cv2.resize(images[i], (size, size), interpolation=cv2.INTER_CUBIC)
            _write((train if j < per_class[k] else test) / f"d{k}", f"{i:04d}", image)
    return train, test


def make_textures(work: Path, seed: int, shots: int, size: int, test_per_class: int = 40) -> tuple[Path, Path]:
    """Grey patches (40x40 regions reduced to size x size) of eight scikit-image photos: training patches from
    the top half of each photo, test patches from the bottom half."""
    from skimage import data

    rng = np.random.default_rng([seed, 2])
    train, test = work / "train", work / "test"
    region = 40
    for name in TEXTURES:
        photo = getattr(data, name)()
        photo = photo if photo.ndim == 2 else cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY)
        h, w = photo.shape
        for folder, n, (y0, y1) in ((train, shots, (0, h // 2 - region)), (test, test_per_class, (h // 2, h - region))):
            for j in range(n):
                y, x = int(rng.integers(y0, y1 + 1)), int(rng.integers(0, w - region + 1))
                patch = cv2.resize(photo[y:y + region, x:x + region], (size, size), interpolation=cv2.INTER_AREA)
                _write(folder / name, f"{name}_{j:03d}", patch)
    return train, test


def make_photos(work: Path, seed: int, shots: int, size: int, test_per_class: int = 40) -> tuple[Path, Path]:
    """Colour patches (64x64 regions reduced to size x size) of nine colour photos (seven of scikit-image, two of
    scikit-learn), one class each: training patches from the top half of each photo, test patches from the bottom
    half. No recipe or default was chosen on these."""
    from skimage import data
    from sklearn.datasets import load_sample_image

    rng = np.random.default_rng([seed, 3])
    train, test = work / "train", work / "test"
    region = 64
    for name in PHOTOS:
        photo = load_sample_image(f"{name}.jpg") if name in ("china", "flower") else getattr(data, name)()
        photo = cv2.cvtColor(np.ascontiguousarray(photo[..., :3]), cv2.COLOR_RGB2BGR)
        h, w = photo.shape[:2]
        for folder, n, (y0, y1) in ((train, shots, (0, h // 2 - region)), (test, test_per_class, (h // 2, h - region))):
            for j in range(n):
                y, x = int(rng.integers(y0, y1 + 1)), int(rng.integers(0, w - region + 1))
                patch = cv2.resize(photo[y:y + region, x:x + region], (size, size), interpolation=cv2.INTER_AREA)
                folder.joinpath(name).mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(folder / name / f"{name}_{j:03d}.png"), patch)
    return train, test


def make_dataset(name: str, work: Path, seed: int, factor: int = 1) -> tuple[Path, Path]:
    """The dataset's training and test folders; ``factor`` times as many real training images per class (the
    same draw's first ones, so the 1x set is part of the 2x set; the test set is what is left, for digits)."""
    size = DATASETS[name]["size"]
    if name == "digits5":
        return make_digits(work, seed, [5 * factor] * 10, size)
    if name == "digits_lt":
        return make_digits(work, seed, [n * factor for n in LONG_TAIL], size)
    if name == "photos":
        return make_photos(work, seed, 5 * factor, size)
    return make_textures(work, seed, 5 * factor, size)


def train_and_score(data: Path, test: Path, run: Path, seed: int, args, flip: bool, size: int) -> dict:
    """The train command's own loop and defaults (smallcnn at the data's size), fixed steps; scored on test."""
    from augexpand.train.config import make_config
    from augexpand.train.evaluate import evaluate_run
    from augexpand.train.loop import train

    config = make_config(data=data, out=run, model="smallcnn", size=size, steps=args.steps, batch_size=32,
                         seed=seed, workers=0, progress=False, flip=flip, device="cpu")
    summary = train(config, overwrite=True)
    result = evaluate_run(run, test, which="last", device="cpu", workers=0)
    recalls = [c["accuracy"] for c in result["per_class"].values() if c["images"]]
    return {"balanced_acc": float(np.mean(recalls)), "acc": result["accuracy"], "images": summary["train_images"]}


def run_seed(name: str, seed: int, args, work: Path) -> dict:
    from augexpand.expansion import expand
    from augexpand.tune import tune

    cfg = DATASETS[name]
    root = work / f"{name}_seed{seed}"
    train_dir, test_dir = make_dataset(name, root, seed)
    out: dict = {"arms": {}}
    for factor in args.more_data:  # more real images instead of expansion: what a gain of a few points is worth
        more_train, more_test = make_dataset(name, root / f"real_x{factor}", seed, factor)
        out["arms"][f"raw_x{factor}"] = train_and_score(more_train, more_test, root / f"run_x{factor}",
                                                                     seed, args, cfg["flip"], cfg["size"])
    arms: dict[str, object] = {arm: (None if arm == "raw" else arm) for arm in args.arms if arm != "tune"}
    arms.update(args.extra)
    if "tune" in args.arms:
        started = time.perf_counter()
        summary = tune(train_dir, budget_minutes=args.budget, seed=seed, flip=cfg["flip"])
        tune_seconds = time.perf_counter() - started
        arms["tune"] = summary["recipe"] if summary["helps"] else None
        out.update({"pick": summary["pick"], "reason": summary["reason"], "tune_seconds": round(tune_seconds, 1),
                    "budget_seconds": args.budget * 60, "stopped_by_budget": summary["stopped_by_budget"],
                    "tune_table": summary["candidates"]})
    for arm, recipe in arms.items():
        if arm == "tune" and recipe is None:  # tune recommended no expansion: that is raw training
            out["arms"][arm] = dict(out["arms"]["raw"])
            continue
        data = train_dir
        if recipe is not None:
            data = root / f"expand_{arm}"
            expand(train_dir, data, recipe, overrides={"seed": seed}, workers=1, overwrite=True)
        out["arms"][arm] = train_and_score(data, test_dir, root / f"run_{arm}", seed, args, cfg["flip"], cfg["size"])
    return out


def _ms(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def report(results: dict) -> str:
    """One Markdown table per dataset, and tune's picks and wall time."""
    lines = []
    for name, seeds in results.items():
        if not seeds:
            continue
        raw = [s["arms"]["raw"]["balanced_acc"] for s in seeds]
        lines += [f"**{name}** ({len(seeds)} seeds)", "",
                  "| training set | images | balanced accuracy (mean ± std) | gain over raw, paired (mean ± std) | wins |",
                  "|---|---:|---:|---:|---:|"]
        for arm in ["raw"] + sorted((a for a in seeds[0]["arms"] if a != "raw"), key=lambda a: a.startswith("raw_x")):
            accs = [s["arms"][arm]["balanced_acc"] for s in seeds]
            images = statistics.mean(s["arms"][arm]["images"] for s in seeds)
            m, sd = _ms(accs)
            if arm == "raw":
                lines.append(f"| raw | {images:.0f} | {m:.4f} ± {sd:.4f} | | |")
                continue
            gains = [100 * (a - b) for a, b in zip(accs, raw)]
            g, gsd = _ms(gains)
            label = "tune's pick" if arm == "tune" else (f"raw, {arm[5:]}x the real images" if arm.startswith("raw_x")
                                                         else arm)
            lines.append(f"| {label} | {images:.0f} | {m:.4f} ± {sd:.4f} | {g:+.1f} ± {gsd:.1f} pts | "
                         f"{sum(x > 0 for x in gains)}/{len(gains)} |")
        if "pick" not in seeds[0]:
            lines.append("")
            continue
        picks = Counter(s["pick"] for s in seeds)
        times = [s["tune_seconds"] for s in seeds]
        lines += ["", "tune picked: " + ", ".join(f"{p} ({n})" for p, n in picks.most_common())
                  + f"; wall time {min(times):.0f}-{max(times):.0f} s for a budget of "
                    f"{seeds[0]['budget_seconds']:.0f} s (within budget: "
                    f"{sum(t <= s['budget_seconds'] for t, s in zip(times, seeds))}/{len(seeds)})", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=PROOF, choices=list(DATASETS),
                        help="default: the proof's three; `photos` (colour 32x32 patches of nine photos) is a check "
                             "on data nothing was tuned on")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--budget", type=float, default=2.5, help="tune's budget in minutes.")
    parser.add_argument("--steps", type=int, default=120, help="Optimizer steps of every full training.")
    parser.add_argument("--size", type=int, default=None,
                        help="Side of every dataset's images in pixels (default 16; the digits are upscaled from 8).")
    parser.add_argument("--seed-offset", type=int, default=0,
                        help="First seed (default 0): e.g. 100 to select recipes on seeds other than the report's.")
    parser.add_argument("--arms", nargs="+", default=["raw", "light", "heavy", "tune"],
                        choices=["raw", "light", "heavy", "tune"],
                        help="Which arms to train (default all; leave out tune to skip its search). raw is always "
                             "trained: gains are paired against it.")
    parser.add_argument("--extra", nargs="+", default=[], metavar="NAME=RECIPE",
                        help="More arms: a recipe file or builtin name to expand with, e.g. light2=my_light.yaml.")
    parser.add_argument("--more-data", nargs="+", type=int, default=[], metavar="FACTOR",
                        help="Also train raw on FACTOR times as many real training images (e.g. 2 4): the yardstick "
                             "for an expansion's gain (digits: tested on the digits left over).")
    parser.add_argument("--work", type=Path, default=None, help="Keep the folders here (default: a temp folder).")
    parser.add_argument("--json", type=Path, default=None, help="Write every result to this JSON file.")
    parser.add_argument("--markdown", type=Path, default=None, help="Write the tables to this Markdown file.")
    parser.add_argument("--report", type=Path, default=None, help="Only print the tables of an earlier --json.")
    parser.add_argument("--write", nargs=2, metavar=("DATASET", "DIR"), default=None,
                        help="Only write one seed's DATASET to DIR/train and DIR/test (for trying augexpand tune).")
    args = parser.parse_args()
    if args.write:
        name, folder = args.write
        if name not in DATASETS:
            parser.error(f"--write: unknown dataset {name!r} (choose from {', '.join(DATASETS)})")
        train_dir, test_dir = make_dataset(name, Path(folder), args.seeds - 1 if args.seeds > 0 else 0)
        print(f"wrote {sum(1 for p in train_dir.rglob('*.png'))} training images to {train_dir} and "
              f"{sum(1 for p in test_dir.rglob('*.png'))} test images to {test_dir}")
        return
    extra = {}
    for item in args.extra:
        name, sep, recipe = item.partition("=")
        if not sep or not name or not recipe or name in ("raw", "light", "heavy", "tune") or name in extra:
            parser.error(f"--extra: expected a new NAME=RECIPE, got {item!r}")
        extra[name] = recipe
    args.extra = extra
    if args.size is not None:
        for cfg in DATASETS.values():
            cfg["size"] = args.size
    if "raw" not in args.arms:
        args.arms = ["raw"] + args.arms
    if args.report:
        print(report(json.loads(args.report.read_text())["results"]))
        return
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    logging.getLogger("augexpand").setLevel(logging.ERROR)
    import torch

    torch.set_num_threads(1)  # 2 shared cores: one thread each is faster than two threads fighting
    tmp = tempfile.TemporaryDirectory(prefix="augexpand-bench-tune-") if args.work is None else None
    work = Path(tmp.name) if tmp else args.work
    results: dict[str, list] = {name: [] for name in args.datasets}
    started = time.perf_counter()
    for seed in range(args.seed_offset, args.seed_offset + args.seeds):
        for name in args.datasets:
            r = run_seed(name, seed, args, work)
            results[name].append(r)
            accs = "  ".join(f"{arm} {v['balanced_acc']:.3f}" for arm, v in r["arms"].items())
            picked = f"  | pick {r['pick']} (tune {r['tune_seconds']:.0f} s)" if "pick" in r else ""
            print(f"{name} seed {seed}: {accs}{picked}", flush=True)
            if args.json:
                args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                 "results": results}, indent=2))
    text = report(results)
    print(f"\nsmallcnn, {args.steps} optimizer steps of 32 for every arm; seeds {args.seed_offset}-"
          f"{args.seed_offset + args.seeds - 1}; tune budget {args.budget:g} min; "
          f"{time.perf_counter() - started:.0f} s in all\n")
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
