"""augexpand tune: leak-free splits, the budget, determinism, never a pick below no expansion, and its errors.

Real pixels: scikit-learn's handwritten digits at 12x12, a few per class, so that each proxy training (a handful
of optimizer steps of a small CNN) takes well under a second.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from click.testing import CliRunner

pytest.importorskip("torch")

from augexpand import tune as T
from augexpand.cli import cli
from augexpand.manifest import read_metadata
from augexpand.recipe import load_recipe

# A cheap recipe that uses every way a held-out image could leak in: copies, mixing partners and SMOTE neighbours.
MIXING = {"seed": 3, "copies": 1, "keep_originals": True,
          "pipeline": [{"Affine": {"rotate": [-10, 10], "p": 1.0}}],
          "mix": {"mixup": {"alpha": 0.4, "count": 1.0}, "cutmix": {"count": 0.5}},
          "oversample": {"method": "smote", "k_neighbors": 1, "sampling_strategy": "all"},
          "output": {"size": 12, "format": "png"}}
LIGHT = {"seed": 0, "copies": 1, "pipeline": [{"Affine": {"translate_percent": [-0.1, 0.1], "p": 1.0}}],
         "output": {"size": 12, "format": "png"}}


def write_digits(root: Path, per_class: dict[int, int], size: int = 12, offset: int = 0) -> Path:
    """root/d<k>/<i>.png: real handwritten digits of class k, upscaled to size x size."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.clip(digits.images * (255 / 16), 0, 255).astype(np.uint8)
    for k, n in per_class.items():
        members = np.flatnonzero(digits.target == k)[offset:offset + n]
        (root / f"d{k}").mkdir(parents=True, exist_ok=True)
        for i in members:
            cv2.imwrite(str(root / f"d{k}" / f"{i:04d}.png"), cv2.resize(images[i], (size, size)))
    return root


@pytest.fixture
def digits_src(tmp_path: Path) -> Path:
    return write_digits(tmp_path / "digits", {0: 7, 1: 6, 7: 4})


def candidates(*recipes: tuple[str, dict]) -> list[T.Candidate]:
    return [T.Candidate(T.NONE, None, "baseline"), *(T.Candidate(n, r, "test") for n, r in recipes)]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------------- splits


def test_splits_are_stratified_folds_that_cover_every_image_once_per_repeat():
    labels = np.array([0] * 7 + [1] * 3 + [2] * 2)
    splits = T.make_splits(labels, folds=3, seed=5, count=6)
    assert [s.tolist() for s in splits] == [s.tolist() for s in T.make_splits(labels, 3, 5, 6)]  # seeded
    for repeat in (splits[:3], splits[3:]):
        together = np.concatenate(repeat)
        assert sorted(together.tolist()) == list(range(len(labels)))  # each image held out once per repeat
    for held in splits:
        for c, n in ((0, 7), (1, 3), (2, 2)):
            out = int(np.sum(labels[held] == c))
            assert out in (n // 3, -(-n // 3)) and out < n  # in proportion, and never the whole class
    assert splits[0].tolist() != splits[3].tolist()  # a new shuffle per repeat


def test_held_out_images_never_reach_any_expansion(digits_src: Path, tmp_path: Path):
    work = tmp_path / "work"
    summary = T.tune(digits_src, candidates=candidates(("mixing", MIXING)), steps=3, max_splits=2,
                     budget_minutes=10, workdir=work)
    assert summary["candidates"][1]["skipped"] is None and summary["candidates"][1]["splits"] == 2
    checked = 0
    for split in sorted(work.glob("split*")):
        held = {p.relative_to(split / "heldout").as_posix() for p in (split / "heldout").rglob("*.png")}
        train = {p.relative_to(split / "train").as_posix() for p in (split / "train").rglob("*.png")}
        assert held and train and not held & train
        held_hashes = {sha(split / "heldout" / r) for r in held}
        assert held_hashes == {sha(digits_src / r) for r in held}  # the originals, untouched
        for metadata in work.glob(f"expand-{split.name[5:]}-*/train/metadata.jsonl"):
            records = read_metadata(metadata)
            ops = {r["op"] for r in records}
            assert {"mixup", "cutmix", "smote", "augment"} <= ops
            sources = {s for r in records for s in r["sources"]}
            assert sources <= train and not sources & held
            assert not {sha(split / "train" / s) for s in sources} & held_hashes
            checked += len(records)
    assert checked > 0


# ---------------------------------------------------------------------------------------------------- pick


def fake_trials(monkeypatch, scores: dict[str, list[float]], seconds: float = 0.0, clock: list | None = None):
    """Replace the proxy training by a table of scores per candidate and split (and a fake clock)."""

    def trial(candidate, split_dir, work, split, seed, proxy):
        if clock is not None:
            clock[0] += seconds
        return {"score": scores[candidate.name][split], "accuracy": scores[candidate.name][split], "images": 10}

    monkeypatch.setattr(T, "_trial", trial)


def test_never_picks_a_recipe_below_no_expansion(digits_src, monkeypatch):
    fake_trials(monkeypatch, {T.NONE: [0.8, 0.7, 0.9, 0.8], "worse": [0.7, 0.6, 0.8, 0.7],
                              "noisy": [0.9, 0.6, 0.95, 0.6]})
    s = T.tune(digits_src, candidates=candidates(("worse", LIGHT), ("noisy", LIGHT)), max_splits=4)
    assert s["pick"] == T.NONE and not s["helps"]
    assert "no candidate beat no expansion" in s["reason"]
    text = T.winner_yaml(s)
    assert "# nothing helped" in text
    recipe = yaml.safe_load(text)
    assert recipe["copies"] == 0 and recipe["keep_originals"] is True and not recipe.get("mix")
    load_recipe(recipe)  # a valid recipe


def test_a_gain_within_its_standard_error_is_not_a_pick(digits_src, monkeypatch):
    # mean gain +2.5 pts, but the paired gains (+20, -15, +15, -10) spread far more than that
    fake_trials(monkeypatch, {T.NONE: [0.7, 0.8, 0.7, 0.8], "lucky": [0.9, 0.65, 0.85, 0.7]})
    s = T.tune(digits_src, candidates=candidates(("lucky", LIGHT)), max_splits=4)
    assert s["pick"] == T.NONE and "not a reliable gain" in s["reason"]


def test_a_gain_of_one_standard_error_is_not_enough(digits_src, monkeypatch):
    # paired gains +4, +1, +4, +1, +4, -2 pts: mean +2.0, standard error 1.0 (2.0 standard errors) pass the 1.48
    # that a one-sided t-test at 10 % needs on 6 splits; +4, -2, +4, -2, +4, +1: mean +1.5, se 1.2 (1.25) do not,
    # though they would pass a rule of one standard error
    base = [0.70, 0.80, 0.70, 0.80, 0.70, 0.80]
    fake_trials(monkeypatch, {T.NONE: base, "a": [b + g for b, g in zip(base, [0.04, 0.01, 0.04, 0.01, 0.04, -0.02])]})
    s = T.tune(digits_src, candidates=candidates(("a", LIGHT)), max_splits=6)
    assert s["pick"] == "a" and "1.48 needed" in s["reason"]
    fake_trials(monkeypatch, {T.NONE: base, "b": [b + g for b, g in zip(base, [0.04, -0.02, 0.04, -0.02, 0.04, 0.01])]})
    s = T.tune(digits_src, candidates=candidates(("b", LIGHT)), max_splits=6)
    assert s["pick"] == T.NONE and "needs 1.48 standard errors" in s["reason"]
    assert T._t_quantile(5) == pytest.approx(1.476, abs=1e-3) and T._t_quantile(2) == pytest.approx(1.886, abs=1e-3)


def test_one_split_is_never_enough_evidence(digits_src, monkeypatch):
    fake_trials(monkeypatch, {T.NONE: [0.7], "a": [0.9]})
    s = T.tune(digits_src, candidates=candidates(("a", LIGHT)), max_splits=1)
    assert s["pick"] == T.NONE and "on 1 split only: not enough evidence (a recommendation needs 2" in s["reason"]


def test_a_reliable_gain_is_picked_and_written_with_its_scores(digits_src, monkeypatch):
    fake_trials(monkeypatch, {T.NONE: [0.7, 0.8, 0.7, 0.8], "good": [0.8, 0.85, 0.8, 0.9],
                              "bad": [0.5, 0.5, 0.5, 0.5]})
    s = T.tune(digits_src, candidates=candidates(("bad", MIXING), ("good", LIGHT)), max_splits=4)
    assert s["pick"] == "good" and s["helps"] and s["recipe"] == LIGHT
    rows = {r["name"]: r for r in s["candidates"]}
    assert rows["good"]["splits"] == 4 and rows["bad"]["splits"] == 1  # halved away after the first split
    assert rows["good"]["gain"] == pytest.approx(0.0875) and rows["none"]["mean"] == pytest.approx(0.75)
    text = T.winner_yaml(s)
    assert "# good: 0.838" in text and "+8.8" in text
    assert yaml.safe_load(text) == LIGHT


def test_the_budget_stops_the_search_between_rungs(digits_src, monkeypatch):
    clock = [0.0]
    scores = {n: [0.5 + 0.01 * i] * 8 for i, n in enumerate([T.NONE, "a", "b", "c", "d"])}
    fake_trials(monkeypatch, scores, seconds=30.0, clock=clock)
    s = T.tune(digits_src, candidates=candidates(*((n, LIGHT) for n in "abcd")), budget_minutes=6,
               clock=lambda: clock[0])
    # rung 1: 5 trainings on one split (150 s); rung 2: none and the best third (c, d) on two more splits, a full
    # round of 3 folds (180 s); rung 3 (none and d on 3 more splits, 180 s) would end past 360 s: never starts
    assert clock[0] == 330.0 and s["seconds"] == 330.0 and s["stopped_by_budget"]
    assert [r["splits"] for r in s["rungs"]] == [1, 3]
    assert [r["splits"] for r in s["candidates"]] == [3, 1, 1, 3, 3]
    assert s["pick"] == "d" and "3 paired splits" in s["reason"]  # it gains 4 pts on every split


def test_a_budget_too_small_for_one_candidate_is_refused_early(digits_src, monkeypatch):
    clock = [0.0]
    fake_trials(monkeypatch, {n: [0.5] * 8 for n in (T.NONE, "a", "b")}, seconds=40.0, clock=clock)
    with pytest.raises(T.TuneError, match=r"a budget of 1 min is too small to score even one candidate: one proxy "
                                          r"training takes about 40 s here; give --budget 6 or fewer candidates"):
        T.tune(digits_src, candidates=candidates(("a", LIGHT), ("b", LIGHT)), budget_minutes=1,
               clock=lambda: clock[0])
    assert clock[0] == 40.0  # refused after the baseline's training


def test_a_short_budget_scores_what_fits_and_says_so(digits_src, monkeypatch, caplog):
    clock = [0.0]
    fake_trials(monkeypatch, {n: [0.5 + 0.1 * (n == "b")] * 8 for n in (T.NONE, "a", "b", "c")}, seconds=40.0,
                clock=clock)
    s = T.tune(digits_src, candidates=candidates(("a", LIGHT), ("b", LIGHT), ("c", LIGHT)), budget_minutes=2,
               clock=lambda: clock[0])
    assert clock[0] == 120.0 and s["seconds"] <= 120 and s["stopped_by_budget"]
    assert [r["splits"] for r in s["candidates"]] == [1, 1, 1, 0]
    assert "cannot score each of the 3 candidates once and the best third on 3 splits" in caplog.text
    assert s["pick"] == T.NONE and "on 1 split only" in s["reason"]  # b leads, on one split only


def test_real_run_is_deterministic_and_within_budget(digits_src):
    import time

    kwargs = {"candidates": candidates(("light", LIGHT), ("mixing", MIXING)), "steps": 4, "max_splits": 2,
              "budget_minutes": 0.5}
    start = time.perf_counter()
    first = T.tune(digits_src, **kwargs)
    assert time.perf_counter() - start <= 30 + 5
    second = T.tune(digits_src, **kwargs)
    assert [r.get("scores") for r in first["candidates"]] == [r.get("scores") for r in second["candidates"]]
    assert first["pick"] == second["pick"]
    assert all(r["splits"] for r in first["candidates"])


# ---------------------------------------------------------------------------------------------------- the CLI


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_cli_writes_the_recipe_table_json_and_chart(digits_src, tmp_path, monkeypatch):
    fake_trials(monkeypatch, {T.NONE: [0.7, 0.8] * 4, "tiny": [0.9, 0.95] * 4})
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(LIGHT))
    out, chart = tmp_path / "best.yaml", tmp_path / "scores.png"
    result = invoke("tune", digits_src, "-o", out, "-c", recipe, "--only", "--plot", chart)
    assert result.exit_code == 0, result.output
    assert "* tiny" in result.output and "+17.5" in result.output and "pick: tiny" in result.output
    assert yaml.safe_load(out.read_text()) == LIGHT and out.read_text().startswith("# augexpand tune on")
    assert cv2.imread(str(chart)) is not None
    result = invoke("tune", digits_src, "-c", recipe, "--only", "--json")
    summary = json.loads(result.output)
    assert summary["pick"] == "tiny" and summary["metric"] == "balanced_accuracy"
    assert [r["name"] for r in summary["candidates"]] == ["none", "tiny"]


def test_a_recipe_that_fails_on_these_images_is_a_named_skip(digits_src):
    broken = {"copies": 1, "pipeline": [{"RandomCrop": {"height": 40, "width": 40}}], "output": {"size": 12}}
    s = T.tune(digits_src, candidates=candidates(("broken", broken), ("light", LIGHT)), steps=3, max_splits=2)
    rows = {r["name"]: r for r in s["candidates"]}
    assert rows["broken"]["skipped"] and rows["broken"]["splits"] == 0
    assert rows["light"]["skipped"] is None and rows["light"]["splits"] == 2
    assert "skipped:" in T.format_table(s)


def test_a_class_folder_name_that_is_not_utf8_is_scored(digits_src):
    import os

    # expand names that class caf%E9; the held-out images must carry the same name (they were a class mismatch)
    os.rename(digits_src / "d7", os.fsencode(digits_src) + b"/caf\xe9")
    s = T.tune(digits_src, candidates=candidates(("light", LIGHT)), steps=3, max_splits=2)
    rows = {r["name"]: r for r in s["candidates"]}
    assert rows["light"]["skipped"] is None and rows["light"]["splits"] == 2


def test_cli_errors_are_one_line(digits_src, tmp_path):
    one = write_digits(tmp_path / "one", {0: 3, 1: 1})
    result = invoke("tune", one)
    assert result.exit_code == 1
    assert result.output.strip() == ("Error: class 'd1' has 1 image: too small to split (tune holds out part of "
                                     "every class and needs at least 2 images per class)")
    result = invoke("tune", digits_src, "-c", tmp_path / "missing.yaml")
    assert result.exit_code == 2 and "Error: Invalid value for --candidate: recipe " in result.output
    assert "missing.yaml" in result.output and "Traceback" not in result.output
    result = invoke("tune", digits_src, "-c", "heavvy")
    assert result.exit_code == 2 and "did you mean 'heavy'" in result.output
    result = invoke("tune", digits_src, "--only")
    assert result.exit_code == 2 and "--only needs at least one --candidate" in result.output
    result = invoke("tune", digits_src, "-c", "none", "--only")
    assert result.exit_code == 1 and result.output == "Error: no candidate to score besides no expansion\n"
    result = invoke("tune", digits_src, "-c", "light", "--only", "--budget", "0.001", "--steps", "10")
    assert result.exit_code == 1 and result.output.startswith("Error: ") and "too small" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_a_budget_spent_before_the_first_training_is_too_small_not_a_pick(digits_src):
    # a slow machine (here a clock that jumps a second a call) spends a tiny budget on placing the first split's
    # images: that was a summary of nothing scored (exit 0), or the "too small" error, depending on the machine's load
    import itertools

    ticks = itertools.count(0.0, 1.0)
    with pytest.raises(T.TuneError, match=r"a budget of 0.001 min is too small to score even one candidate: \d+\.\d s "
                                          r"went on reading and splitting the images before the first training"):
        T.tune(digits_src, candidates=candidates(("light", LIGHT)), budget_minutes=0.001, steps=3,
               clock=lambda: next(ticks))


def test_output_paths_are_checked_before_the_search_and_never_inside_src(digits_src, tmp_path, monkeypatch):
    calls = []
    fake_trials(monkeypatch, {T.NONE: [0.7] * 8, "light": [0.8] * 8})
    monkeypatch.setattr(T, "_trial", lambda *a, _t=T._trial: calls.append(1) or _t(*a))
    (tmp_path / "file").write_text("x")
    before = {p: p.read_bytes() for p in digits_src.rglob("*") if p.is_file()}
    for args, message in [
        (["-o", tmp_path / "nowhere" / "best.yaml"], "Invalid value for '-o' / '--output': "),
        (["-o", tmp_path / "file" / "best.yaml"], "is not a folder"),
        (["-o", tmp_path], "is a folder; give a file name"),
        (["-o", digits_src / "best.yaml"], "would be written inside the source"),
        (["-o", digits_src / "d0" / "best.yaml"], "would be written inside the source"),
        (["--plot", tmp_path / "nowhere" / "scores.png"], "Invalid value for '--plot': "),
        (["--plot", digits_src / "d1" / "scores.png"], "would be written inside the source"),  # an image of d1
        (["--plot", tmp_path / "scores.txt"], "must end in .png, .svg or .pdf"),
        (["--budget", "nan"], "Invalid value for '--budget'"),
    ]:
        result = invoke("tune", digits_src, "-c", "light", "--only", *args)
        assert result.exit_code == 2, result.output
        assert message in result.output and "Traceback" not in result.output
        assert result.output.strip().splitlines()[-1].startswith("Error: Invalid value for ")
    assert calls == [] and {p: p.read_bytes() for p in digits_src.rglob("*") if p.is_file()} == before


def test_a_write_error_names_the_output_not_its_temporary_file(digits_src, tmp_path, monkeypatch):
    import augexpand.folder

    fake_trials(monkeypatch, {T.NONE: [0.7] * 8, "light": [0.8] * 8})

    def refused(path, data):  # what a read-only file system answers (root writes through permissions)
        raise PermissionError(13, "Permission denied", str(Path(path).parent / ".123-abc.augexpand-tmp"))

    monkeypatch.setattr(augexpand.folder, "write_atomic", refused)
    result = invoke("tune", digits_src, "-c", "light", "--only", "-o", tmp_path / "best.yaml")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.strip().splitlines()[-1] == f"Error: cannot write {tmp_path / 'best.yaml'}: Permission denied"


def test_ctrl_c_stops_cleanly_with_the_best_so_far(digits_src, tmp_path, monkeypatch):
    scores = {T.NONE: [0.6, 0.6, 0.6, 0.6], "good": [0.9, 0.85, 0.9, 0.8], "meh": [0.5] * 4}
    calls = []

    def trial(candidate, split_dir, work, split, seed, proxy):
        calls.append((candidate.name, split))
        if len(calls) == 9:  # rung 3 (split 3): the second training
            raise KeyboardInterrupt
        return {"score": scores[candidate.name][split], "accuracy": 0.0, "loss": 1.0, "images": 10}

    monkeypatch.setattr(T, "_trial", trial)
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(T.tempfile, "tempdir", str(tmp_path / "tmp"))  # where tune makes its temporary folder
    out = tmp_path / "best.yaml"
    s = T.tune(digits_src, candidates=candidates(("good", LIGHT), ("meh", MIXING)), max_splits=4)
    assert s["interrupted"] and calls[-1] == ("good", 3)
    rows = {r["name"]: r for r in s["candidates"]}
    assert rows["good"]["splits"] == 3 and rows["none"]["splits"] == 4  # none scored on split 3, good not yet
    assert s["pick"] == "good" and "3 paired splits" in s["reason"]
    calls.clear()
    (tmp_path / "good.yaml").write_text(yaml.safe_dump(LIGHT))
    (tmp_path / "meh.yaml").write_text(yaml.safe_dump(MIXING))
    result = invoke("tune", digits_src, "-o", out, "-c", tmp_path / "good.yaml", "-c", tmp_path / "meh.yaml",
                    "--only")
    assert result.exit_code == 130 and "interrupted: the pick is the best so far" in result.output
    assert yaml.safe_load(out.read_text()) == LIGHT and "# (interrupted: the best so far)" in out.read_text()
    assert not list((tmp_path / "tmp").iterdir())  # its temporary folder is gone


@pytest.mark.parametrize(("digits", "kept"), [(True, True), (False, False)])
def test_the_baseline_flips_as_train_would_on_the_raw_images(tmp_path, digits, kept):
    # README: tune's proxies follow train's on-the-fly flip rule. Train tests a raw folder's images; the baseline
    # is an expansion, so its card must carry that decision (it said "free", and digits trained mirrored).
    from augexpand import expand
    from augexpand.train.data import orientation_kept

    src = write_digits(tmp_path / "digits", {k: 5 for k in range(10)}) if digits else None  # else the photos
    expand(src, tmp_path / "out", T.NO_EXPANSION, workers=1)
    assert orientation_kept(tmp_path / "out") is kept


def test_ctrl_c_in_the_first_training_still_ends_cleanly(digits_src, tmp_path, monkeypatch):
    def trial(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(T, "_trial", trial)
    out, chart = tmp_path / "best.yaml", tmp_path / "scores.png"
    result = invoke("tune", digits_src, "-c", "light", "--only", "-o", out, "--plot", chart, "--json")
    assert result.exit_code == 130, result.output
    summary = json.loads(result.stdout)  # stdout is the JSON alone
    assert summary["interrupted"] and summary["pick"] == T.NONE and "plot" not in summary
    assert yaml.safe_load(out.read_text()) == T.NO_EXPANSION and not chart.exists()
    assert "nothing was scored: no chart drawn" in result.stderr


def test_large_photos_are_reduced_for_the_proxy_and_held_out_ones_kept(tmp_path, photos, monkeypatch):
    """Real photos over 128 px: the training part of a split is reduced (short side 128, PNG), so that a proxy
    expansion costs what small images cost; the held-out part stays the original files."""
    from tests.conftest import crops, save_rgb

    src = tmp_path / "photos"
    for seed, name in enumerate(("chelsea", "coffee", "rocket")):
        for k, image in enumerate(crops(photos[name], 4, seed=seed, size=(200, 150))):
            save_rgb(src / name / f"{name}_{k}.jpg", image, quality=90)
    seen = []

    def trial(candidate, split_dir, work, split, seed, proxy):
        for p in (split_dir / "train").rglob("*.*"):
            image = cv2.imread(str(p))
            seen.append(("train", p.name, min(image.shape[:2])))
        for p in (split_dir / "heldout").rglob("*.*"):
            seen.append(("heldout", p.name, sha(p) == sha(src / p.parent.name / p.name)))
        return {"score": 0.5, "accuracy": 0.5, "loss": 1.0, "images": 8}

    monkeypatch.setattr(T, "_trial", trial)
    s = T.tune(src, candidates=candidates(("light", LIGHT)), max_splits=1)
    assert s["proxy"]["size"] == 32
    assert {(part, extra) for part, _, extra in seen} == {("train", 128), ("heldout", True)}
    assert all(name.endswith(".jpg.png") for part, name, _ in seen if part == "train")


def test_a_large_jpeg_is_decoded_reduced_for_the_proxy(tmp_path, photos):
    from augexpand.folder import decode_image
    from tests.conftest import jpeg_decodes, psnr, save_rgb

    src = tmp_path / "big.jpg"
    save_rgb(src, cv2.resize(photos["chelsea"], (1200, 900), interpolation=cv2.INTER_LINEAR), quality=90)
    with jpeg_decodes() as shapes:
        T._place(src, tmp_path / "out" / "big.jpg", 128)
    assert shapes == [(225, 300, 3)]  # 1/4: the largest JPEG scale whose short side still holds 128
    placed = decode_image(tmp_path / "out" / "big.jpg.png")
    assert placed.shape == (128, 171, 3)
    full = cv2.resize(decode_image(src), (171, 128), interpolation=cv2.INTER_AREA)
    assert psnr(placed, full) > 35  # as the full decode makes it


def test_one_plural_for_tune_and_train_and_tune_imports_no_torch_for_it():
    import subprocess
    import sys

    from augexpand.formatting import plural
    from augexpand.train import cli as train_cli
    from augexpand.train import loop

    assert [plural(n, "split") for n in (0, 1, 2)] == ["0 splits", "1 split", "2 splits"]
    # one definition (tune's and the loop's own copies are gone; train's command line took the loop's private one)
    assert T.plural is plural and loop.plural is plural
    assert not hasattr(T, "_plural") and not hasattr(loop, "_plural") and not hasattr(train_cli, "_plural")
    code = "import sys, augexpand.tune, augexpand.formatting; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"
