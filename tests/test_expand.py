"""expand end to end: what is written, decoded back; determinism; resume; refusals; val split; compatibility."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

import augexpand.executors
from augexpand.errors import DestinationError, ExpandError
from augexpand.expansion import expand
from augexpand.folder import IMAGE_EXTENSIONS, decode_image
from augexpand.manifest import read_metadata
from augexpand.rows import RowMaker
from tests.conftest import tree_digest


def run(src, dst, recipe, **kwargs):
    kwargs.setdefault("workers", 1)
    return expand(src, dst, recipe, **kwargs)


def output_files(split_dir: Path) -> list[str]:
    return sorted(p.relative_to(split_dir).as_posix() for p in split_dir.rglob("*")
                  if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def test_messy_folder_end_to_end(messy_src: Path, tmp_path: Path, tiny_recipe: Path):
    before = tree_digest(messy_src)
    dst = tmp_path / "out"
    summary = run(messy_src, dst, tiny_recipe)

    assert tree_digest(messy_src) == before  # the source is never written to
    train = dst / "train"
    records = read_metadata(train / "metadata.jsonl")
    files = output_files(train)
    assert sorted(r["file_name"] for r in records) == files
    n_src = 14  # readable sources: cat 4, coffee 8, rocket 2
    expected = n_src * (1 + 2) + n_src * 1 + round(0.5 * 4) + round(0.5 * 8) + round(0.5 * 2)
    assert len(files) == summary["images_out"] == expected
    classes = ["cat", "coffee", "rocket"]
    for r in records:
        image = decode_image(train / r["file_name"])
        assert image.shape == (32, 32, 3)
        soft = np.asarray(r["soft_label"])
        assert soft.shape == (3,) and abs(soft.sum() - 1) < 1e-9
        assert r["label"] == classes[int(np.argmax(soft))] == r["file_name"].split("/")[0]
        assert all((messy_src / s).is_file() for s in r["sources"])
        assert Path(r["sources"][0]).stem.replace("IMG_1", "sub_deeper_IMG_1") in r["file_name"] or \
            "sub_deeper" in r["file_name"]
        assert r["op"] in ("original", "augment", "mixup", "cutmix")

    card = json.loads((dst / "dataset.json").read_text())
    assert card["tool"] == "augexpand" and card["classes"] == classes
    assert card["counts"]["source"] == {"cat": 4, "coffee": 8, "rocket": 2}
    assert sum(card["counts"]["train"].values()) == len(files)
    assert {s["file"] for s in card["skipped"]} == {"cat/empty.jpg", "cat/half.jpg", "coffee/fake.png",
                                                    "broken/only.jpg", "root.jpg"}
    assert card["empty_classes"] == ["broken"]
    assert card["converted_to_rgb8"]["16-bit"] == 1
    assert card["recipe"]["pipeline"]["transform"]["__class_fullname__"] == "Compose"
    assert card["seed"] == 7 and "albumentations" in card["versions"]
    assert not (dst / ".augexpand").exists()
    assert not list(dst.rglob("*augexpand-tmp"))


def test_originals_are_the_sources_resized(small_src: Path, tmp_path: Path):
    run(small_src, tmp_path / "out", {"copies": 0, "output": {"format": "png"}})
    records = read_metadata(tmp_path / "out" / "train" / "metadata.jsonl")
    assert len(records) == 10 and {r["op"] for r in records} == {"original"}
    for r in records:
        written = decode_image(tmp_path / "out" / "train" / r["file_name"])
        assert np.array_equal(written, decode_image(small_src / r["sources"][0]))  # PNG, native size: lossless
        assert r["file_name"] == r["sources"][0].replace(".jpg", ".png")


@pytest.mark.parametrize("recipe", ["tiny", "heavy", "balance"])
def test_same_bytes_with_one_worker_or_two(small_src: Path, tmp_path: Path, tiny_recipe: Path, recipe: str):
    spec = tiny_recipe if recipe == "tiny" else recipe
    overrides = {"output.size": 48, "copies": 1} if recipe != "tiny" else None
    run(small_src, tmp_path / "w1", spec, overrides=overrides, workers=1)
    run(small_src, tmp_path / "w2", spec, overrides=overrides, workers=2)
    one, two = tree_digest(tmp_path / "w1" / "train"), tree_digest(tmp_path / "w2" / "train")
    assert one == two and len(one) > 10


def test_more_workers_than_the_machine_can_run_are_capped(small_src, tmp_path, tiny_recipe, monkeypatch, caplog):
    # --workers 100000 forked 100000 processes (each with its pipeline and a decode cache of up to 128 MB)
    monkeypatch.setattr(augexpand.executors, "default_workers", lambda: 1)  # a machine of one core
    caplog.set_level(logging.INFO, logger="augexpand")
    summary = run(small_src, tmp_path / "out", tiny_recipe, workers=9)
    assert summary["workers"] == 4 and "at most 4 worker processes" in caplog.text
    run(small_src, tmp_path / "w1", tiny_recipe, workers=1)
    assert tree_digest(tmp_path / "out" / "train") == tree_digest(tmp_path / "w1" / "train")


def test_another_seed_gives_other_images_and_the_same_names(small_src: Path, tmp_path: Path, tiny_recipe: Path):
    run(small_src, tmp_path / "a", tiny_recipe)
    run(small_src, tmp_path / "b", tiny_recipe, overrides={"seed": 8})
    a, b = tree_digest(tmp_path / "a" / "train"), tree_digest(tmp_path / "b" / "train")
    augmented = [k for k in a if "__augment_" in k]
    assert augmented and all(k in b for k in augmented)
    assert sum(a[k] != b[k] for k in augmented) >= len(augmented) - 1


def test_resume_after_an_interruption_gives_the_same_files(small_src, tmp_path, tiny_recipe, monkeypatch):
    run(small_src, tmp_path / "whole", tiny_recipe)

    real = RowMaker.run_row
    calls = {"n": 0}

    def dies_midway(self, row):
        calls["n"] += 1
        if calls["n"] == 17:
            raise KeyboardInterrupt
        return real(self, row)

    monkeypatch.setattr(RowMaker, "run_row", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        run(small_src, tmp_path / "cut", tiny_recipe)
    monkeypatch.setattr(RowMaker, "run_row", real)
    cut = tmp_path / "cut"
    assert not (cut / "dataset.json").exists() and not (cut / "train" / "metadata.jsonl").exists()
    assert len(output_files(cut / "train")) == 16

    with pytest.raises(DestinationError, match="not empty.*--resume"):
        run(small_src, cut, tiny_recipe)
    # Each file is journaled (by the worker that wrote it) before it gets its name; a journal line cut short by
    # the interruption is skipped, and its file made again, identically.
    (journal,) = (cut / ".augexpand").glob("journal-*.jsonl")
    lines = journal.read_text().splitlines()
    assert len(lines) == 16
    journal.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:20])

    summary = run(small_src, cut, tiny_recipe, resume=True)
    assert summary["resumed_rows"] == len(lines) - 1
    cut_files, whole_files = tree_digest(cut), tree_digest(tmp_path / "whole")
    assert cut_files.pop("dataset.json") and whole_files.pop("dataset.json")  # timings differ
    assert cut_files == whole_files  # every image and metadata.jsonl, byte for byte
    cards = [json.loads((d / "dataset.json").read_text()) for d in (cut, tmp_path / "whole")]
    assert cards[0]["counts"] == cards[1]["counts"]

    again = run(small_src, cut, tiny_recipe, resume=True)  # a finished run: nothing to redo
    assert again["resumed_rows"] == again["images_out"]


def test_a_worker_killed_mid_run_is_one_error_and_resume_finishes(small_src, tmp_path, tiny_recipe, monkeypatch):
    """A pool replaces a worker the system kills (out of memory), but the task it held never returns: the run
    must say so, not wait for ever; what was made is journaled, and --resume completes it."""
    import os
    import signal

    run(small_src, tmp_path / "whole", tiny_recipe)
    real = RowMaker.run_task
    parent, done = os.getpid(), []  # each forked worker counts its own tasks

    def killed_on_its_second_task(self, rows, key=None):
        if os.getpid() != parent and len(done) == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        done.append(key)
        return real(self, rows, key)

    monkeypatch.setattr(RowMaker, "run_task", killed_on_its_second_task)  # forked workers inherit it
    monkeypatch.setattr(augexpand.executors._Watched, "POLL_S", 0.1)
    cut = tmp_path / "cut"
    with pytest.raises(augexpand.executors.WorkerDied, match=r"killed by SIGKILL.*--resume"):
        run(small_src, cut, tiny_recipe, workers=2)
    monkeypatch.undo()
    summary = run(small_src, cut, tiny_recipe, resume=True, workers=2)
    assert 0 < summary["resumed_rows"] < summary["images_out"]
    cut_files, whole_files = tree_digest(cut), tree_digest(tmp_path / "whole")
    assert cut_files.pop("dataset.json") and whole_files.pop("dataset.json")  # timings differ
    assert cut_files == whole_files


def test_terminating_workers_that_lost_their_sigterm_does_not_wait_for_ever(small_src, tmp_path, monkeypatch):
    """A worker forked to replace a dead one can lose the SIGTERM that Pool.terminate sends (it lands before the
    child's interpreter has set up its signals), then waits for ever on the task queue's lock that terminate holds;
    so did the run, joining it (seen once in a full test run). Workers that ignore SIGTERM stand in for it: the
    pool must still be gone within seconds, its workers killed."""
    import signal
    import threading

    from augexpand.recipe import load_recipe
    from augexpand.rows import RowContext

    def deaf_worker(ctx, decoded=None):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        augexpand.executors._init_worker(ctx, decoded)

    monkeypatch.setattr(augexpand.executors, "_init_pool_worker", deaf_worker)
    monkeypatch.setattr(augexpand.executors, "STOP_GRACE_S", 0.5)
    ctx = RowContext(str(small_src), str(tmp_path), [], [], ["a"], load_recipe({}))
    executor = augexpand.executors.LocalExecutor(2, ctx)
    workers = list(executor.pool._pool)
    assert executor.map(abs, [-1, -2, -3]) == [1, 2, 3]  # the workers run
    import time

    busy = [executor.pool.apply_async(time.sleep, (120,)) for _ in workers]  # each worker holds a task
    time.sleep(0.5)
    stopping = threading.Thread(target=executor.close, kwargs={"terminate": True}, daemon=True)
    stopping.start()
    stopping.join(20)
    assert not stopping.is_alive(), "terminating the pool waited for workers that ignore SIGTERM"
    assert [w.exitcode for w in workers] == [-signal.SIGKILL] * 2 and not any(b.ready() for b in busy)


def test_resume_into_an_empty_folder_is_a_fresh_run(small_src, tmp_path, tiny_recipe):
    summary = run(small_src, tmp_path / "new", tiny_recipe, resume=True)
    assert summary["resumed_rows"] == 0 and summary["images_out"] == 45


def test_resume_refuses_a_different_recipe(small_src, tmp_path, tiny_recipe):
    run(small_src, tmp_path / "out", tiny_recipe)
    with pytest.raises(DestinationError, match="different source, recipe, seed"):
        run(small_src, tmp_path / "out", tiny_recipe, overrides={"seed": 99}, resume=True)


def test_destination_refusals(small_src: Path, tmp_path: Path):
    with pytest.raises(DestinationError, match="is the source"):
        run(small_src, small_src, "light")
    with pytest.raises(DestinationError, match="inside the source"):
        run(small_src, small_src / "cat" / "out", "light")
    with pytest.raises(DestinationError, match="contains the source"):
        run(small_src, small_src.parent, "light", overwrite=True)

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.txt").write_text("precious")
    with pytest.raises(DestinationError, match="not empty"):
        run(small_src, mine, "light")
    with pytest.raises(DestinationError, match="not written by augexpand.*nothing was deleted"):
        run(small_src, mine, "light", overwrite=True)
    with pytest.raises(DestinationError, match="cannot resume"):
        run(small_src, mine, "light", resume=True)
    assert (mine / "thesis.txt").read_text() == "precious"


def test_overwrite_replaces_an_earlier_run_only(small_src: Path, tmp_path: Path, tiny_recipe: Path):
    dst = tmp_path / "out"
    run(small_src, dst, tiny_recipe)
    (dst / "README.txt").write_text("the user's own note")
    run(small_src, dst, tiny_recipe, overrides={"copies": 0}, overwrite=True)
    assert (dst / "README.txt").read_text() == "the user's own note"
    assert not [f for f in output_files(dst / "train") if "__augment_" in f]


def test_val_split_holds_out_untouched_sources(small_src: Path, tmp_path: Path, tiny_recipe: Path):
    dst = tmp_path / "out"
    summary = run(small_src, dst, tiny_recipe, val_fraction=0.4)
    val = read_metadata(dst / "val" / "metadata.jsonl")
    assert summary["counts"]["val"] == {"cat": 2, "coffee": 1, "rocket": 1}  # round(0.4 n), one kept for training
    held_out = {r["sources"][0] for r in val}
    for r in val:
        assert r["op"] == "original"
        assert (dst / "val" / r["file_name"]).read_bytes() == (small_src / r["sources"][0]).read_bytes()
    train = read_metadata(dst / "train" / "metadata.jsonl")
    assert not held_out & {s for r in train for s in r["sources"]}  # no leakage, partners included


def test_target_per_class_gives_minorities_more_copies(small_src: Path, tmp_path: Path):
    summary = run(small_src, tmp_path / "out", {"copies": 1, "target_per_class": 8, "output": {"size": 32}})
    assert summary["counts"]["train"] == {"cat": 10, "coffee": 8, "rocket": 8}  # cat: 5 + 5 copies already > 8
    assert summary["counts"]["per_class_op"]["rocket"] == {"original": 2, "augment": 6}


def test_dry_run_writes_nothing(small_src: Path, tmp_path: Path, tiny_recipe: Path):
    summary = run(small_src, tmp_path / "out", tiny_recipe, dry_run=True)
    assert not (tmp_path / "out").exists()
    real = run(small_src, tmp_path / "real", tiny_recipe)
    assert summary["images_out"] == real["images_out"]
    assert summary["counts"]["per_op"] == real["counts"]["per_op"]


def test_a_recipe_that_fails_on_the_images_is_one_clear_error(small_src: Path, tmp_path: Path):
    from augexpand.expansion import ExpandError

    recipe = {"pipeline": [{"RandomCrop": {"height": 500, "width": 500}}], "copies": 1}
    with pytest.raises(ExpandError, match=r"10 of 20 images could not be made; first: row 5 from cat/cat_0\.jpg: CropSizeError: Crop size .*"
                       r"exceeds image dimensions.*--overwrite"):
        run(small_src, tmp_path / "out", recipe)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_mix_only_recipe_leaving_some_sources_unused_runs(small_src: Path, tmp_path: Path, seed: int):
    # the last sources, first of no row and no partner, were outside the partner-group array: an IndexError
    recipe = {"copies": 0, "keep_originals": False, "mix": {"mixup": {"count": 0.2}}, "output": {"size": 32}}
    summary = run(small_src, tmp_path / "out", recipe, seed=seed, val_fraction=0.2)
    assert summary["images_out"] == summary["counts"]["per_op"]["mixup"] > 0
    assert len(output_files(tmp_path / "out" / "train")) == summary["images_out"]


def test_a_recipe_that_makes_no_training_image_is_refused(small_src: Path, tmp_path: Path):
    # it "made 0 training images", said it wrote train/ (metadata.jsonl), which it did not, and copied val/
    recipe = {"copies": 0, "keep_originals": False}
    with pytest.raises(ExpandError, match="makes no training images from .*src"):
        run(small_src, tmp_path / "out", recipe, val_fraction=0.3)
    assert not (tmp_path / "out").exists()
    assert run(small_src, tmp_path / "out", recipe, dry_run=True)["images_out"] == 0  # a dry run says so


def test_example_dataset_expands(tmp_path: Path):
    summary = run(None, tmp_path / "out", "light", overrides={"copies": 1, "output.size": 64})
    assert summary["counts"]["source"] == {"cat": 14, "coffee": 10, "flower": 4, "rocket": 6}
    assert summary["images_out"] == 68


def read_like_torchvision(root: Path) -> tuple[list[str], list[tuple[str, int]]]:
    """torchvision's ImageFolder rules: sorted class folders, files with image extensions, walked in sorted order."""
    classes = sorted(e.name for e in root.iterdir() if e.is_dir())
    samples = []
    for i, c in enumerate(classes):
        for dirpath, _, files in sorted(__import__("os").walk(root / c, followlinks=True)):
            for f in sorted(files):
                if Path(f).suffix.lower() in {".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff",
                                              ".webp"}:
                    samples.append((Path(dirpath, f).relative_to(root).as_posix(), i))
    return classes, samples


def test_train_folder_reads_as_a_torchvision_imagefolder(small_src: Path, tmp_path: Path, tiny_recipe: Path):
    run(small_src, tmp_path / "out", tiny_recipe)
    train = tmp_path / "out" / "train"
    classes, samples = read_like_torchvision(train)
    card = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert classes == card["classes"]
    by_file = {r["file_name"]: r for r in read_metadata(train / "metadata.jsonl")}
    assert sorted(f for f, _ in samples) == sorted(by_file)
    for f, i in samples:
        assert classes[i] == by_file[f]["label"]


def test_hugging_face_imagefolder_loads_the_same_rows(small_src: Path, tmp_path: Path, tiny_recipe: Path):
    datasets = pytest.importorskip("datasets")
    dst = tmp_path / "out"
    run(small_src, dst, tiny_recipe, val_fraction=0.3)
    loaded = datasets.load_dataset("imagefolder", data_dir=str(dst), cache_dir=str(tmp_path / "hf"))
    assert set(loaded) == {"train", "validation"}
    for split, folder in (("train", "train"), ("validation", "val")):
        manifest = {r["file_name"]: r for r in read_metadata(dst / folder / "metadata.jsonl")}
        rows = loaded[split]
        assert len(rows) == len(manifest)
        got = sorted((r["label"], tuple(r["soft_label"]), r["op"]) for r in rows)
        want = sorted((r["label"], tuple(r["soft_label"]), r["op"]) for r in manifest.values())
        assert got == want
        first = rows[0]
        assert first["image"].size[0] > 0
