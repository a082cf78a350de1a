"""Choosing a recipe: candidate recipes scored by short proxy trainings on leak-free splits of the source, budgeted.

``tune(src)`` answers "which expansion makes *my* model better?" on the user's own images:

- **Splits.** The source images are cut into ``folds`` stratified folds (a fresh shuffle per repeat, seeded); a
  split holds out one fold. Only the other folds are expanded: the held-out images are never augmented, mixed,
  used as a mixing partner or as a SMOTE neighbour, and score the model as they are.
- **Proxy trainings.** Each candidate's expansion of a split's training part trains the train command's own
  loop (``augexpand.train.loop.train``) for the same fixed number of optimizer steps, with the same seed and
  the same initial weights as every other candidate on that split (paired comparisons): ``smallcnn`` at the
  source resolution (at most 32 px), one CPU thread, no loader workers (deterministic). "none" trains on the
  split's training images as they are: the baseline.
- **Score.** Balanced accuracy (the mean of per-class recall) on the held-out images: on imbalanced data plain
  accuracy rewards a model that ignores the small classes, which are what expansion is for; on balanced data the
  two are nearly the same.
- **Budget.** Successive halving: every candidate is scored on one split; the best third goes on to a full round
  of ``folds`` splits (every source image held out once), the better half of those to two rounds, up to
  ``max_splits``. "none" is scored on every split, so that each gain is paired. Equal scores (a few held-out
  images make them coarse) are ranked by the held-out cross-entropy. A rung starts only if its estimated time
  (from the trainings measured so far) fits the budget, and no training starts that would end past it.
- **Pick.** Among the candidates scored on the most splits (at least a full round of folds), the one with the
  highest mean gain over "none" wins only if a one-sided paired t-test says the gain is positive at the
  ``1 - CONFIDENCE`` level (its mean over its standard error at least Student's t quantile: 1.48 on 6 splits,
  1.89 on 3); otherwise tune says nothing helped and recommends no expansion. The level is a trade: at one
  standard error (the earlier rule) 3 of the 7 picks of bench/accuracy_tune.py's 15 runs lost 1-4 points in full
  training, all of them gains of 1.2-1.4 standard errors, which the best of a dozen candidates gets by luck.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import os
import shutil
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from augexpand.errors import AugexpandError, ImageReadError
from augexpand.formatting import plural

__all__ = [
    "NONE",
    "Candidate",
    "TuneError",
    "default_candidates",
    "format_table",
    "make_splits",
    "plot_scores",
    "resolve_candidate",
    "tune",
    "winner_yaml",
]

log = logging.getLogger("augexpand")

NONE = "none"  # the baseline: no expansion
PROXY_MAX_SIZE = 32  # proxy trainings run at the source's median short side, at most this
PROXY_SOURCE_MAX_SIDE = 4 * PROXY_MAX_SIZE  # larger sources are reduced (short side) before a proxy expansion
PROXY_BATCH = 32
PROXY_EPOCH_STEPS = 10
PROXY_WIDTH = 16  # smallcnn channels of the first stage: a quarter of the default's arithmetic
DEFAULT_STEPS = 100
DEFAULT_FOLDS = 3
MAX_SPLITS = 6  # two rounds of 3 folds: every source image held out twice
CONFIDENCE = 0.90  # a pick's gain must pass a one-sided paired t-test at the 10 % level
IMBALANCED = 1.5  # from this largest/smallest class ratio on, the balance recipe is a candidate
FLIPS = frozenset({"HorizontalFlip", "VerticalFlip", "Transpose", "D4", "RandomRotate90", "SquareSymmetry"})


class TuneError(AugexpandError):
    """A tune request that cannot be carried out: a folder too small to split, a budget too small."""


# --------------------------------------------------------------------------------------------------- candidates


@dataclass(frozen=True)
class Candidate:
    """A recipe to score: its name in the table, the recipe as a dict (None: no expansion), where it came from."""

    name: str
    recipe: dict[str, Any] | None
    origin: str


def _builtin_dict(name: str) -> dict[str, Any] | None:
    import yaml

    from augexpand.recipe import builtin_recipes

    path = builtin_recipes().get(name)
    return None if path is None else yaml.safe_load(path.read_text(encoding="utf-8"))


def _without_flips(pipeline: Any) -> Any:
    """A compact pipeline without its flips (at any depth); a OneOf/SomeOf left empty is dropped."""
    if not isinstance(pipeline, list):
        return pipeline
    out = []
    for item in pipeline:
        name, params = (item, {}) if isinstance(item, str) else next(iter(item.items()))
        if name in FLIPS:
            continue
        if isinstance(params, dict) and "transforms" in params:
            inner = _without_flips(params["transforms"])
            if not inner:
                continue
            item = {name: {**params, "transforms": inner}}
        out.append(item)
    return out


# name, builtin recipe, changes to it (a dict merges into the section of that name; "noflip": the pipeline
# without its flips), in the order they are listed and scored
DEFAULT_CANDIDATES: list[tuple[str, str, dict[str, Any]]] = [
    ("light", "light", {}),
    ("light_upright", "light_upright", {}),
    ("heavy", "heavy", {}),
    ("heavy_noflip", "heavy", {"noflip": True}),
    ("trivialaugment", "trivialaugment", {}),
    ("trivialaugment_upright", "trivialaugment_upright", {}),
    ("randaugment", "randaugment", {}),
    ("randaugment_upright_m5", "randaugment_upright", {"policy": {"magnitude": 5}}),
    ("autoaugment", "autoaugment", {}),
    ("autoaugment_upright", "autoaugment_upright", {}),
    ("trivialaugment_upright_mixup", "trivialaugment_upright", {"mix": {"mixup": {"alpha": 0.4, "count": 0.5}}}),
]


def _describe(key: str, value: dict[str, Any]) -> str:
    """``policy {magnitude: 5}`` -> "policy magnitude 5"; ``mix {mixup: {alpha: 0.4}}`` -> "+ mixup (alpha 0.4)"."""
    def flat(d: dict[str, Any]) -> str:
        return ", ".join(f"{k} {v}" for k, v in d.items())

    if key == "mix":
        return "+ " + ", ".join(f"{name} ({flat(spec)})" for name, spec in value.items())
    return f"{key} {flat(value)}"


def default_candidates(imbalance: float = 1.0) -> list[Candidate]:
    """The builtin candidates: no expansion, light and heavy with and without flips, the policies at a few
    strengths with and without orientation-keeping, one with mixup, and balance when the classes are imbalanced
    (largest over smallest class at least 1.5). A builtin that this installation lacks is left out."""
    out = [Candidate(NONE, None, "no expansion: the split's training images as they are")]
    for name, builtin, changes in DEFAULT_CANDIDATES:
        base = _builtin_dict(builtin)
        if base is None:
            continue
        if not changes:
            out.append(Candidate(name, base, f"builtin {builtin}"))
            continue
        recipe, words = copy.deepcopy(base), []
        for key, value in changes.items():
            if key == "noflip":
                recipe["pipeline"] = _without_flips(recipe.get("pipeline"))
                words.append("without its flips")
            else:
                recipe[key] = {**(recipe.get(key) or {}), **value}
                words.append(_describe(key, value))
        recipe["description"] = f"{base.get('description', builtin)} ({'; '.join(words)})"
        out.append(Candidate(name, recipe, f"builtin {builtin}, {'; '.join(words)}"))
    if imbalance >= IMBALANCED:
        base = _builtin_dict("balance")
        if base is not None:
            out.append(Candidate("balance", base, f"builtin balance (classes imbalanced {imbalance:.1f}:1)"))
    return out


def resolve_candidate(spec: str | Path, taken: set[str] | None = None) -> Candidate:
    """A ``--candidate``: "none", a builtin recipe name or a recipe file, validated now (a RecipeError if not)."""
    import yaml

    from augexpand.recipe import builtin_recipes, load_recipe

    if str(spec) == NONE:
        return Candidate(NONE, None, "no expansion")
    recipe = load_recipe(spec)  # every recipe error now, with its file and line
    path = Path(spec)
    if path.is_file():
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(data.get("pipeline", []), (list, dict)):  # a pipeline by path: inline what it loaded
            data["pipeline"] = recipe.pipeline
        name, origin = path.stem, str(path)
    else:
        stem = str(spec).removesuffix(".yaml").removesuffix(".yml")
        data = yaml.safe_load(builtin_recipes()[stem].read_text(encoding="utf-8"))
        name, origin = stem, f"builtin {stem}"
    taken = taken or set()
    unique, k = name, 2
    while unique in taken:
        unique, k = f"{name}-{k}", k + 1
    return Candidate(unique, data, origin)


# ------------------------------------------------------------------------------------------------------- splits


def make_splits(labels: list[int] | np.ndarray, folds: int, seed: int, count: int,
                duplicates: list[list[int]] | None = None) -> list[np.ndarray]:
    """The held-out indices of ``count`` splits: split ``s`` holds out fold ``s % folds`` of repeat
    ``s // folds``, where each repeat deals every class's images, freshly shuffled from (seed, repeat, class),
    round-robin into ``folds`` folds (stratified: each class is held out in proportion, never whole).

    ``duplicates``: groups of byte-identical images (``ScanResult.duplicates()``), dealt as one image (of its
    first member's class), so that no held-out image is also a training image under another name."""
    labels = np.asarray(labels)
    lead = np.arange(len(labels))  # the image each one is dealt with: itself, or its group's first member
    for members in duplicates or []:
        lead[members] = members[0]
    leads = np.flatnonzero(lead == np.arange(len(labels)))
    followers: dict[int, list[int]] = {}
    for i in np.flatnonzero(lead != np.arange(len(labels))).tolist():
        followers.setdefault(int(lead[i]), []).append(i)
    out = []
    for s in range(count):
        repeat, fold = divmod(s, folds)
        held = []
        for c in np.unique(labels):
            members = leads[labels[leads] == c]
            order = np.random.default_rng([seed, repeat, int(c), 0x7E5]).permutation(members)
            for i in order[fold::folds].tolist():
                held += [i, *followers.get(i, [])]
        out.append(np.array(sorted(held), dtype=int))
    return out


def _split_seed(seed: int, split: int) -> int:
    return int(np.random.SeedSequence([seed, split, 0x7E5]).generate_state(1)[0] % (2 ** 31))


def _place(src: Path, dst: Path, reduce_to: int | None) -> None:
    """Put a source image at ``dst``: a hard link (a copy across file systems), or, for a large image, a copy
    reduced to ``reduce_to`` pixels on the short side (PNG, lossless) so that proxy expansions cost what small
    images cost."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if reduce_to is not None:
        import cv2

        from augexpand.folder import decode_image, encode_image, write_atomic

        image = decode_image(src, min_side=reduce_to)  # a camera JPEG at the DCT scale that still holds it
        scale = reduce_to / min(image.shape[:2])
        if scale < 1:
            size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
            write_atomic(dst.with_name(dst.name + ".png"), encode_image(cv2.resize(image, size, interpolation=cv2.INTER_AREA),
                                                                "png"))
            return
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


# -------------------------------------------------------------------------------------------------------- trials


@dataclass
class _Score:
    """One candidate's record: its scores and accuracies per split, and how long each trial took."""

    candidate: Candidate
    scores: dict[int, float] = field(default_factory=dict)
    accuracy: dict[int, float] = field(default_factory=dict)
    loss: dict[int, float] = field(default_factory=dict)  # held-out cross-entropy: breaks ties of the score
    images: dict[int, int] = field(default_factory=dict)
    seconds: dict[int, float] = field(default_factory=dict)
    skipped: str | None = None
    rung: int = 0  # the last rung it was scored in (0-based)


@dataclass(frozen=True)
class _Proxy:
    size: int
    steps: int
    batch_size: int
    flip: bool | None  # None: as train decides (off when the expansion's card says orientation was kept)
    width: int = PROXY_WIDTH


def _balanced_accuracy(result: dict[str, Any]) -> float:
    recalls = [c["accuracy"] for c in result["per_class"].values() if c["images"]]
    return float(np.mean(recalls))


def _trial(candidate: Candidate, split_dir: Path, work: Path, split: int, seed: int, proxy: _Proxy) -> dict[str, Any]:
    """Expand the split's training part with the candidate, train the proxy on it, score it on the held-out part."""
    from augexpand.expansion import expand
    from augexpand.train.config import make_config
    from augexpand.train.evaluate import evaluate_run
    from augexpand.train.loop import train

    data = split_dir / "train"
    tag = hashlib.sha1(candidate.name.encode()).hexdigest()[:10]
    expanded = work / f"expand-{split}-{tag}"
    run = work / f"run-{split}-{tag}"
    try:
        if candidate.recipe is not None:
            made = expand(data, expanded, candidate.recipe, workers=1, progress=False,
                          overrides={"seed": seed, "output.size": [proxy.size, proxy.size]})
            data, n = expanded, made["images_out"]
        else:
            n = sum(1 for p in data.rglob("*") if p.is_file())
        # A tiny set is passed over several times per epoch (as train does for its own tiny sets): about
        # PROXY_EPOCH_STEPS steps per epoch, so that per-epoch checkpoints do not outweigh the steps themselves
        repeats = max(1, math.ceil(PROXY_EPOCH_STEPS * proxy.batch_size / max(n, 1)))
        config = make_config(data=data, out=run, model="smallcnn", width=proxy.width, size=proxy.size,
                             steps=proxy.steps, repeats=repeats, batch_size=proxy.batch_size, seed=seed, workers=0,
                             progress=False, flip=proxy.flip, device="cpu")
        summary = train(config, overwrite=True)
        result = evaluate_run(run, split_dir / "heldout", which="last", device="cpu", workers=0)
    finally:
        shutil.rmtree(run, ignore_errors=True)
    return {"score": _balanced_accuracy(result), "accuracy": result["accuracy"], "loss": result["loss"],
            "images": summary["train_images"]}


# ------------------------------------------------------------------------------------------------------ the search


def _no_plot(*args: Any, **kwargs: Any) -> None:
    return None


class _Quiet:
    """For the length of a tune: library notes off during trainings, one torch thread (the proxy is tiny; more
    threads only fight over shared cores, and one thread gives the same floats every time), no curve plots."""

    def __enter__(self):
        import matplotlib
        import torch

        matplotlib.use("Agg")
        import matplotlib.pyplot  # imported once here, not inside the first timed training
        torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)  # the optimizers' first use imports dynamo
        self.logger = logging.getLogger("augexpand")
        self.level = self.logger.level
        self.threads = torch.get_num_threads()
        torch.set_num_threads(1)
        # The proxy runs are thrown away: their loss curves would cost a third of a small proxy's time to draw
        from augexpand.train import loop

        self.plot_curves = loop.plot_curves
        loop.plot_curves = _no_plot
        return self

    def mute(self) -> None:
        self.logger.setLevel(logging.ERROR)

    def unmute(self) -> None:
        self.logger.setLevel(self.level)

    def __exit__(self, *exc) -> None:
        import torch

        from augexpand.train import loop

        self.logger.setLevel(self.level)
        torch.set_num_threads(self.threads)
        loop.plot_curves = self.plot_curves


def _stats(values: list[float]) -> tuple[float, float]:
    return (statistics.mean(values), statistics.stdev(values)) if len(values) > 1 else (values[0], 0.0)


def _rank_key(rec: _Score) -> tuple[float, float]:
    """Higher mean score first; on a tie (a few held-out images make scores coarse), lower held-out loss."""
    return -statistics.mean(rec.scores.values()), statistics.mean(rec.loss.values()) if rec.loss else 0.0


def _gains(rec: _Score, base: _Score) -> list[float]:
    return [rec.scores[s] - base.scores[s] for s in sorted(rec.scores) if s in base.scores]


def _t_quantile(df: int, confidence: float = CONFIDENCE) -> float:
    """Student's t quantile: the mean gain over its standard error that a one-sided test at this level needs."""
    from scipy.stats import t

    return float(t.ppf(confidence, df))


def _decide(records: dict[str, _Score], min_splits: int = 2) -> tuple[str, str]:
    """The pick and the reason: the best mean gain over none among the candidates scored on the most splits, if
    it was measured on at least ``min_splits`` splits and a one-sided paired t-test at level ``1 - CONFIDENCE``
    says it is positive (mean over standard error at least the t quantile); else none."""
    base = records[NONE]
    scored = [r for n, r in records.items() if n != NONE and r.skipped is None and r.scores]
    if not base.scores or not scored:
        return NONE, "no candidate was scored"
    most = max(len(r.scores) for r in scored)
    group = [r for r in scored if len(r.scores) == most]
    best = min(group, key=lambda r: (-statistics.mean(_gains(r, base)), _rank_key(r)[1]))  # ties: lower loss
    gains = _gains(best, base)
    mean = statistics.mean(gains)
    name = best.candidate.name
    pts = f"{100 * mean:+.1f}"
    if mean <= 0:
        return NONE, f"no candidate beat no expansion (best: {name}, {pts} pts)"
    if len(gains) < max(2, min_splits):  # a t-test needs two paired gains at least
        return NONE, (f"{name} gained {pts} pts on {len(gains)} split{'s' * (len(gains) > 1)} only: not enough "
                      f"evidence (a recommendation needs {max(2, min_splits)}: a larger --budget scores more)")
    se = statistics.stdev(gains) / math.sqrt(len(gains))
    need = _t_quantile(len(gains) - 1)
    if mean < need * se:
        return NONE, (f"{name} gained {pts} ± {100 * se:.1f} pts (standard error, {len(gains)} splits): not a "
                      f"reliable gain (a pick needs {need:.2f} standard errors, a one-sided test at "
                      f"{100 * (1 - CONFIDENCE):.0f} %)")
    return name, (f"gained {pts} ± {100 * se:.1f} pts (standard error) over no expansion on {len(gains)} paired "
                  f"splits ({mean / se if se else math.inf:.1f} standard errors, {need:.2f} needed)")


def _refuse_splits(src: Path) -> None:
    """SRC with a train/ split of class folders (an expand output, or a train/val/test layout) is not one class
    folder per class: its splits were scored as classes (an expand output failed on a temporary folder's name)."""
    try:
        nested = (src / "train").is_dir() and any(p.is_dir() for p in (src / "train").iterdir())
    except OSError:
        return
    if nested:
        splits = [n for n in ("train", "val", "test") if (src / n).is_dir()]
        raise TuneError(f"{src} holds splits ({', '.join(splits)}), not class folders",
                        hint=f"tune the source images (one folder per class), e.g. {src / 'train'}")


def tune(
    src: str | Path | None,
    *,
    candidates: list[Candidate] | None = None,
    extra: list[Candidate] | None = None,
    budget_minutes: float = 5.0,
    seed: int = 0,
    folds: int = DEFAULT_FOLDS,
    max_splits: int = MAX_SPLITS,
    steps: int = DEFAULT_STEPS,
    flip: bool | None = None,
    progress: bool = False,
    workdir: str | Path | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Any]:
    """Score the candidates (default: ``default_candidates()`` plus ``extra``) on ``src`` and pick the best.

    Returns the summary that ``augexpand tune --json`` prints; ``summary["recipe"]`` is the recipe to write
    (see ``winner_yaml``). ``workdir`` keeps the splits and expansions there (for inspection) instead of in a
    temporary folder that is removed. Ctrl-C stops the search: the summary then says ``interrupted`` and
    holds the pick from what was scored.
    """
    from augexpand.folder import class_output_names, display_name, scan_image_folder

    started = clock()
    budget = budget_minutes * 60.0
    if budget <= 0:
        raise TuneError(f"the budget must be positive, got {budget_minutes} minutes")
    if folds < 2:
        raise TuneError(f"folds must be at least 2, got {folds}")
    if src is None:
        from augexpand.example import example_dir

        src = example_dir()
    src = Path(src)
    _refuse_splits(src)
    scan = scan_image_folder(src)
    for s in scan.skipped:
        log.warning("skipped %s: %s", s.rel, s.reason)
    counts = scan.counts()
    if len(counts) < 2:
        raise TuneError(f"{src} has {len(counts)} class with readable images; tune needs at least 2 classes")
    small = [name for name, n in counts.items() if n < 2]
    if small:
        raise TuneError(f"class {small[0]!r} has {counts[small[0]]} image: too small to split (tune holds out "
                        f"part of every class and needs at least 2 images per class)")
    duplicates = scan.duplicates()
    distinct = Counter(scan.classes[s.label] for s in scan.sources)
    for members in duplicates:
        for i in members[1:]:
            distinct[scan.classes[scan.sources[i].label]] -= 1
    small = [name for name, n in distinct.items() if n < 2]
    if small:
        raise TuneError(f"class {small[0]!r} has {counts[small[0]]} images but {distinct[small[0]]} different from "
                        f"each other and from other classes' images (the rest are byte-identical copies): too small "
                        f"to split (tune holds out part of every class and needs at least 2 different images per "
                        f"class)")
    if max(distinct.values()) < folds:  # a fold would hold out nothing: "evaluation folder .../heldout does not exist"
        log.info("--folds %d: the largest class has %d different images, so %d folds", folds, max(distinct.values()),
                 max(distinct.values()))
        folds = max(distinct.values())
    imbalance = max(counts.values()) / min(counts.values())
    pool = list(candidates) if candidates is not None else default_candidates(imbalance)
    names = {c.name for c in pool}
    for c in extra or []:
        if c.name not in names:
            pool.append(c)
            names.add(c.name)
    if not any(c.name == NONE for c in pool):
        pool.insert(0, Candidate(NONE, None, "no expansion"))
    pool.sort(key=lambda c: c.name != NONE)  # none first: its trial calibrates the budget
    if len(pool) < 2:
        raise TuneError("no candidate to score besides no expansion")

    sides = sorted(min(s.width, s.height) for s in scan.sources)
    median_side = sides[len(sides) // 2]
    proxy = _Proxy(size=max(8, min(PROXY_MAX_SIZE, median_side)), steps=steps, batch_size=PROXY_BATCH, flip=flip)
    labels = [s.label for s in scan.sources]
    # both parts of a split under the class names expand gives its output (a name that is not UTF-8 becomes %XX):
    # the held-out images must carry the labels every candidate's training data has
    folders = class_output_names(scan.classes)
    max_splits = max(1, max_splits)
    splits = make_splits(labels, folds, seed, max_splits, duplicates)
    records = {c.name: _Score(c) for c in pool}
    rungs: list[dict[str, Any]] = []
    interrupted = stopped_by_budget = False
    reduce_to = PROXY_SOURCE_MAX_SIDE if median_side > PROXY_SOURCE_MAX_SIDE else None

    def estimate(names: list[str]) -> float:
        """Seconds to score these candidates once more: each one's own mean so far, else the mean of all."""
        everyone = [t for r in records.values() for t in r.seconds.values()]
        fallback = statistics.mean(everyone) if everyone else 0.0
        return sum(statistics.mean(records[n].seconds.values()) if records[n].seconds else fallback for n in names)

    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="augexpand-tune-")
        work = Path(tmp.name)
    else:
        work = Path(workdir)
        work.mkdir(parents=True, exist_ok=True)
    from tqdm import tqdm

    bar = tqdm(total=len(pool), unit="training", desc="tune", disable=not progress, leave=False, dynamic_ncols=True)
    survivors = [c.name for c in pool]
    unplaced: dict[str, str] = {}  # sources that could not be put into a split: left out of every split
    try:
        with _Quiet() as quiet:
            done_splits, rung = 0, 0
            while done_splits < max_splits:
                target = min(max_splits, 1 if rung == 0 else folds * 2 ** (rung - 1))
                new = list(range(done_splits, target))
                if rung > 0:  # the next rung starts only if it fits the budget
                    if clock() - started + estimate(survivors) * len(new) > budget:
                        stopped_by_budget = True
                        break
                    bar.total += len(survivors) * len(new)
                    bar.refresh()
                bar.set_description(f"tune rung {rung + 1}: {len(survivors)} x {target} split{'s' * (target > 1)}")
                for s in new:
                    split_dir = work / f"split{s}"
                    held = set(splits[s].tolist())
                    for i, source in enumerate(scan.sources):
                        if source.rel in unplaced:
                            continue
                        part = "heldout" if i in held else "train"
                        placed = Path(folders[source.label], *Path(source.rel).parts[1:])
                        try:
                            _place(src / source.rel, split_dir / part / placed, reduce_to if part == "train" else None)
                        except (ImageReadError, OSError) as exc:  # gone since the scan, or its pixels do not decode
                            if isinstance(exc, OSError) and exc.filename != str(src / source.rel):
                                raise  # the work folder's fault (a full disk), not the image's
                            unplaced[source.rel] = (exc.message if isinstance(exc, ImageReadError) else
                                                    f"cannot read: {exc.strerror or exc}")
                            log.warning("skipped %s: %s", display_name(source.rel), unplaced[source.rel])
                    for name in survivors:
                        rec = records[name]
                        if rec.skipped is not None:
                            continue
                        if clock() - started + estimate([name]) > budget:  # the next training would end too late
                            raise _OverBudget
                        quiet.mute()
                        try:
                            _run_one(rec, split_dir, work, s, _split_seed(seed, s), proxy, rung, clock)
                        finally:
                            quiet.unmute()
                        if rec.skipped is not None:
                            log.warning("skipped candidate %s: %s", name, rec.skipped)
                        bar.update(1)
                        if rung == 0:
                            _check_budget(records, survivors, started, budget, budget_minutes, clock, estimate, folds)
                    if workdir is None:
                        shutil.rmtree(split_dir, ignore_errors=True)
                        for leftover in work.glob(f"expand-{s}-*"):
                            shutil.rmtree(leftover, ignore_errors=True)
                done_splits = target
                alive = [n for n in survivors if n != NONE and records[n].skipped is None]
                rungs.append({"rung": rung + 1, "splits": target, "candidates": [NONE, *alive]})
                ranked = sorted(alive, key=lambda n: _rank_key(records[n]))
                keep = set(ranked[:max(1, math.ceil(len(ranked) / (3 if rung == 0 else 2)))])
                survivors = [NONE, *[n for n in alive if n in keep]]
                rung += 1
    except _OverBudget:
        if not records[NONE].seconds:  # the budget ran out before the baseline was scored: nothing to compare with
            raise TuneError(f"a budget of {budget_minutes:g} min is too small to score even one candidate: "
                            f"{clock() - started:.1f} s went on reading and splitting the images before the first "
                            f"training", hint="give a larger --budget") from None
        stopped_by_budget = True
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
        if tmp is not None:
            tmp.cleanup()

    pick, reason = _decide(records, min(folds, max_splits))
    return _summary(src, records, pick, reason, pool, proxy, seed, folds, budget_minutes, clock() - started,
                    rungs, interrupted, stopped_by_budget, imbalance)


class _OverBudget(Exception):
    """The next training would end past the budget (a short budget, or the machine slowed down): stop with what
    was scored."""


def _run_one(rec: _Score, split_dir: Path, work: Path, split: int, seed: int, proxy: _Proxy, rung: int,
             clock: Callable[[], float]) -> None:
    """Score one candidate on one split into its record; a candidate that fails is skipped with the reason."""
    t0 = clock()
    try:
        out = _trial(rec.candidate, split_dir, work, split, seed, proxy)
    except AugexpandError as exc:
        if rec.candidate.name == NONE:
            raise
        rec.skipped = exc.message.splitlines()[0]  # without its hint: an expand hint ("--overwrite") is not for tune
    except Exception as exc:  # any failure of a recipe on these images is a named skip, never a traceback
        if rec.candidate.name == NONE:
            raise
        text = str(exc).strip().splitlines()
        rec.skipped = f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
    else:
        rec.scores[split], rec.accuracy[split], rec.images[split] = out["score"], out["accuracy"], out["images"]
        rec.loss[split] = out.get("loss", 0.0)
        rec.seconds[split] = clock() - t0
        rec.rung = rung


def _check_budget(records, survivors, started, budget, budget_minutes, clock, estimate, folds) -> None:
    """In the first rung. After the baseline's training: refuse when not even one candidate can be scored. After
    the second training: say so when the budget cannot score every candidate once and the best third on a full
    round of folds (the least that can recommend anything), and what budget would."""
    timed = [n for n in survivors if records[n].seconds]
    if len(timed) not in (1, 2):
        return
    left = [n for n in survivors if not records[n].seconds and records[n].skipped is None]
    third = [NONE, *survivors[1:1 + math.ceil((len(survivors) - 1) / 3)]]
    elapsed = clock() - started
    need = elapsed + estimate(left) + estimate(third) * (folds - 1)
    one = estimate([NONE])
    advice = f"give --budget {math.ceil(need / 60 + 0.5)} or fewer candidates"
    if len(timed) == 1 and elapsed + estimate(left[:1]) > budget:
        raise TuneError(f"a budget of {budget_minutes:g} min is too small to score even one candidate: one proxy "
                        f"training takes about {one:.0f} s here", hint=advice)
    if len(timed) == 2 and need > budget:
        log.warning("a budget of %g min cannot score each of the %d candidates once and the best third on %d splits "
                    "here "
                    "(about %.1f min; one proxy training about %.0f s): %s", budget_minutes, len(survivors) - 1, folds,
                    need / 60, one, advice)


def _summary(src, records, pick, reason, pool, proxy, seed, folds, budget_minutes, elapsed, rungs, interrupted,
             stopped_by_budget, imbalance) -> dict[str, Any]:
    base = records[NONE]
    rows = []
    for c in pool:
        r = records[c.name]
        row: dict[str, Any] = {"name": c.name, "origin": c.origin, "splits": len(r.scores), "steps": proxy.steps,
                               "skipped": r.skipped}
        if r.scores:
            mean, std = _stats(list(r.scores.values()))
            row.update({"mean": round(mean, 4), "std": round(std, 4),
                        "accuracy": round(statistics.mean(r.accuracy.values()), 4),
                        "loss": round(statistics.mean(r.loss.values()), 4) if r.loss else None,
                        "images": round(statistics.mean(r.images.values())),
                        "seconds": round(statistics.mean(r.seconds.values()), 2),
                        "scores": {str(k): round(v, 4) for k, v in sorted(r.scores.items())}})
            if c.name != NONE:
                gains = _gains(r, base)
                if gains:
                    g, gs = _stats(gains)
                    row.update({"gain": round(g, 4), "gain_std": round(gs, 4),
                                "gain_se": round(gs / math.sqrt(len(gains)), 4) if len(gains) > 1 else None})
        rows.append(row)
    winner = records[pick].candidate
    recipe = winner.recipe if winner.recipe is not None else NO_EXPANSION
    return {
        "src": str(src),
        "seed": seed,
        "metric": "balanced_accuracy",
        "pick": pick,
        "helps": pick != NONE,
        "reason": reason,
        "recipe": copy.deepcopy(recipe),
        "candidates": rows,
        "proxy": {"model": "smallcnn", "width": proxy.width, "size": proxy.size, "steps": proxy.steps, "batch_size": proxy.batch_size,
                  "flip": proxy.flip, "folds": folds, "held_out": round(1 / folds, 3), "device": "cpu"},
        "rungs": rungs,
        "imbalance": round(imbalance, 2),
        "budget_minutes": budget_minutes,
        "seconds": round(elapsed, 1),
        "stopped_by_budget": stopped_by_budget,
        "interrupted": interrupted,
    }


NO_EXPANSION: dict[str, Any] = {
    "description": "No expansion: the source images as they are (augexpand tune found no recipe that helps).",
    "seed": 0,
    "copies": 0,
    "keep_originals": True,
    "pipeline": [],
    # Recorded in dataset.json as train's raw-folder test would decide it, so the baseline's proxy (and a later
    # `augexpand train` on this recipe's output) flips only where mirror images keep their class, as train does.
    "orientation": "auto",
    "output": {"size": None, "format": "png"},
}


# ------------------------------------------------------------------------------------------------------ reporting


def _row_text(row: dict[str, Any]) -> list[str]:
    if row.get("mean") is None:
        return [row["name"], "-", "-", str(row["splits"]), str(row["steps"]),
                f"skipped: {row['skipped']}" if row["skipped"] else "not scored"]
    gain = ""
    if row.get("gain") is not None:
        gain = f"{100 * row['gain']:+.1f} ± {100 * row['gain_std']:.1f}"
    note = f"skipped: {row['skipped']}" if row["skipped"] else ""
    return [row["name"], f"{row['mean']:.3f} ± {row['std']:.3f}", gain or "(baseline)" if row["name"] == NONE
            else gain, str(row["splits"]), str(row["steps"]), note]


def format_table(summary: dict[str, Any]) -> str:
    """The candidates as a plain-text table, best first (mean balanced accuracy on held-out images, gain over
    no expansion in points, paired by split)."""
    rows = sorted(summary["candidates"], key=lambda r: (-(r["splits"]), -(r.get("mean") or -1.0)))
    header = ["candidate", "balanced acc", "gain (pts)", "splits", "steps", ""]
    table = [header, *[_row_text(r) for r in rows]]
    widths = [max(len(t[i]) for t in table) for i in range(len(header))]
    lines = []
    for t in table:
        mark = "*" if t[0] == summary["pick"] else " "
        cells = [t[0].ljust(widths[0])] + [t[i].rjust(widths[i]) for i in range(1, 5)] + [t[5]]
        lines.append((mark if t is not header else " ") + " " + "  ".join(cells).rstrip())
    return "\n".join(lines)


def winner_yaml(summary: dict[str, Any]) -> str:
    """The picked recipe as YAML, with a header comment of the scores."""
    import yaml

    rows = {r["name"]: r for r in summary["candidates"]}
    base = rows[NONE]
    proxy = summary["proxy"]
    lines = [f"# augexpand tune on {summary['src']} (seed {summary['seed']}): balanced accuracy on held-out images,",
             (f"# proxy trainings of {proxy['model']} at {proxy['size']}x{proxy['size']}, {proxy['steps']} steps "
              f"of {proxy['batch_size']}, {proxy['folds']}-fold splits"),
             f"# no expansion: {base.get('mean', 0):.3f} ± {base.get('std', 0):.3f} over {plural(base['splits'], 'split')}"]
    if summary["helps"]:
        w = rows[summary["pick"]]
        lines.append(f"# {w['name']}: {w['mean']:.3f} ± {w['std']:.3f} over {plural(w['splits'], 'split')}, gain "
                     f"{100 * w['gain']:+.1f} ± {100 * w['gain_std']:.1f} pts (paired), from {w['origin']}")
    else:
        lines.append(f"# nothing helped: {summary['reason']}; this is the no-harm choice (no expansion)")
    if summary["interrupted"]:
        lines.append("# (interrupted: the best so far)")
    body = yaml.safe_dump(summary["recipe"], sort_keys=False, default_flow_style=None, width=110)
    return "\n".join(lines) + "\n" + body


def plot_scores(summary: dict[str, Any], path: str | Path) -> Path:
    """A bar chart of every scored candidate: mean balanced accuracy ± std, the baseline as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in summary["candidates"] if r.get("mean") is not None]
    rows.sort(key=lambda r: (r["splits"], r["mean"]))  # as the table, bottom up: the most splits on top
    most = max(r["splits"] for r in rows)
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(rows) + 1.5))
    colours = ["tab:green" if r["name"] == summary["pick"] else ("tab:grey" if r["name"] == NONE else "tab:blue")
               for r in rows]
    for i, (r, colour) in enumerate(zip(rows, colours)):  # fainter: dropped after fewer splits
        ax.barh(i, r["mean"], xerr=r["std"], color=colour, alpha=0.9 if r["splits"] == most else 0.4, capsize=3)
    ax.set_yticks(range(len(rows)), [f"{r['name']} ({r['splits']})" for r in rows])
    base = next((r["mean"] for r in rows if r["name"] == NONE), None)
    if base is not None:
        ax.axvline(base, color="black", linestyle=":", label="no expansion")
        ax.legend(loc="lower right", fontsize=8)
    low = min(r["mean"] - r["std"] for r in rows)
    ax.set_xlim(max(0.0, low - 0.05), 1.0)
    ax.set_xlabel("balanced accuracy on held-out images: mean ± std over (splits)")
    ax.set_title(f"augexpand tune: pick {summary['pick']}", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    from augexpand.folder import write_figure

    try:
        return write_figure(fig, path)
    finally:
        plt.close(fig)
