"""Byte-identical source images (the same photo saved twice, under other names or in another class): found by the
scan, reported, and never split between what is trained on and what is held out (expand's val, tune's splits)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from augexpand.cli import cli
from augexpand.expansion import expand
from augexpand.folder import KEY_END, ScanResult, Source, content_key, scan_image_folder
from augexpand.manifest import read_metadata
from augexpand.plan import _VAL_STREAM, _split_val
from tests.conftest import crops, save_rgb

RECIPE = {"seed": 0, "copies": 1, "pipeline": [{"HorizontalFlip": {"p": 0.5}}],
          "mix": {"mixup": {"alpha": 0.4, "count": 0.5}, "samplepairing": {"count": 0.5, "partner": "same"}},
          "output": {"size": 24, "format": "png"}}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def dup_src(tmp_path: Path, photos) -> Path:
    """Real photo crops, 12 per class, and 9 byte-identical copies of some: 2 or 3 of one image in its class (one
    in a sub-folder), and one image of a class saved again in another class."""
    root = tmp_path / "src"
    for name, photo in (("cat", "chelsea"), ("coffee", "coffee"), ("rocket", "rocket")):
        for k, image in enumerate(crops(photos[photo], 12, seed=len(name), size=(32, 28))):
            save_rgb(root / name / f"{name}_{k:02d}.jpg", image, quality=90)
    for name in ("cat", "coffee", "rocket"):
        for k in (1, 4):
            shutil.copyfile(root / name / f"{name}_{k:02d}.jpg", root / name / f"copy_of_{k}.jpg")
    (root / "cat" / "more").mkdir()
    shutil.copyfile(root / "cat" / "cat_01.jpg", root / "cat" / "more" / "again.jpg")
    shutil.copyfile(root / "rocket" / "rocket_07.jpg", root / "coffee" / "not_coffee.jpg")
    shutil.copyfile(root / "coffee" / "coffee_09.jpg", root / "rocket" / "not_rocket.jpg")
    return root


def test_the_scan_finds_exactly_the_byte_identical_files(dup_src):
    scan = scan_image_folder(dup_src)
    groups = [[scan.sources[i].rel for i in g] for g in scan.duplicates()]
    assert sorted(map(sorted, groups)) == sorted(map(sorted, [
        ["cat/cat_01.jpg", "cat/copy_of_1.jpg", "cat/more/again.jpg"], ["cat/cat_04.jpg", "cat/copy_of_4.jpg"],
        ["coffee/coffee_01.jpg", "coffee/copy_of_1.jpg"], ["coffee/coffee_04.jpg", "coffee/copy_of_4.jpg"],
        ["rocket/rocket_01.jpg", "rocket/copy_of_1.jpg"], ["rocket/rocket_04.jpg", "rocket/copy_of_4.jpg"],
        ["coffee/coffee_09.jpg", "rocket/not_rocket.jpg"], ["coffee/not_coffee.jpg", "rocket/rocket_07.jpg"]]))
    # the groups hold exactly the files of equal bytes
    by_hash: dict[str, list[str]] = {}
    for s in scan.sources:
        by_hash.setdefault(sha(dup_src / s.rel), []).append(s.rel)
    assert sorted(sorted(g) for g in by_hash.values() if len(g) > 1) == sorted(sorted(g) for g in groups)


@pytest.mark.parametrize("seed", range(4))
def test_a_held_out_image_is_never_trained_on_under_another_name(dup_src, tmp_path, seed):
    dst = tmp_path / "out"
    summary = expand(dup_src, dst, {**RECIPE, "seed": seed}, workers=1, val_fraction=0.3)
    assert summary["duplicate_sources"]["copies"] == 9 and summary["duplicate_sources"]["groups"] == 8
    val = read_metadata(dst / "val" / "metadata.jsonl")
    train = read_metadata(dst / "train" / "metadata.jsonl")
    held = {sha(dst / "val" / r["file_name"]) for r in val}
    assert {sha(dup_src / r["sources"][0]) for r in val} == held  # untouched copies of their sources
    used = {sha(dup_src / s) for r in train for s in r["sources"]}  # originals, copies and mixing partners
    assert used and held and not used & held
    # every class still holds out its share, less at most what one group of copies would overshoot
    for name, n_src in summary["counts"]["source"].items():
        want = int(np.floor(0.3 * n_src + 0.5))
        assert want - 2 <= summary["counts"]["val"][name] <= want


def test_the_split_of_a_folder_without_copies_is_unchanged(photos, tmp_path):
    """The same draw as before copies were looked for: what a dataset without any gives is the same."""
    root = tmp_path / "src"
    for name, photo in (("cat", "chelsea"), ("rocket", "rocket")):
        for k, image in enumerate(crops(photos[photo], 10, seed=1, size=(20, 16))):
            save_rgb(root / name / f"{k}.png", image)
    scan = scan_image_folder(root)
    assert scan.duplicates() == []
    rng = np.random.default_rng([7, _VAL_STREAM])
    want = []
    for label in (0, 1):
        members = [i for i, s in enumerate(scan.sources) if s.label == label]
        want += [members[j] for j in sorted(rng.choice(len(members), size=3, replace=False).tolist())]
    assert _split_val(scan, 0.3, 7)[1] == sorted(want)


def test_files_are_called_copies_only_when_equal_in_full(tmp_path):
    """A file is keyed by its size and ends; files of equal keys are compared whole."""
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, 5 * KEY_END, dtype=np.uint8).tobytes()
    other = bytearray(data)
    other[len(data) // 2] ^= 0xFF  # the same size and ends, another middle
    files = {"a/x.bin": data, "a/y.bin": bytes(other), "b/z.bin": data, "a/small.bin": data[:1000],
             "b/small.bin": data[:1000]}
    sources = []
    for rel, content in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(content)
        with open(tmp_path / rel, "rb") as f:
            key = content_key(f, len(content))
        sources.append(Source(rel, 0 if rel.startswith("a/") else 1, rel, "RGB", 1, 1, "PNG", key))
    assert sources[0].key == sources[1].key  # the key alone cannot tell them apart ...
    scan = ScanResult(tmp_path, ["a", "b"], sources)
    assert scan.duplicates() == [[0, 2], [3, 4]]  # ... the whole comparison does


def test_the_cli_says_how_many_copies_and_the_card_lists_them(dup_src, tmp_path):
    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps(RECIPE))
    result = CliRunner().invoke(cli, ["expand", "-r", str(recipe), str(dup_src), str(tmp_path / "out"), "-w", "1",
                                      "--val-fraction", "0.3"])
    assert result.exit_code == 0, result.output
    assert ("duplicates: 9 source images are byte-identical copies of others (8 groups, listed in dataset.json); "
            "each group is held out or trained on whole, never split") in result.output.splitlines()
    card = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert ["cat/cat_01.jpg", "cat/copy_of_1.jpg", "cat/more/again.jpg"] in card["duplicate_sources"]["listed"]
    assert os.listdir(dup_src / "cat" / "more") == ["again.jpg"]  # the source is left as it was


def test_tune_deals_copies_together_and_refuses_a_class_of_copies(dup_src, tmp_path):
    pytest.importorskip("torch")
    from augexpand import tune as T

    scan = scan_image_folder(dup_src)
    labels = [s.label for s in scan.sources]
    hashes = [sha(dup_src / s.rel) for s in scan.sources]
    for held in T.make_splits(labels, 3, 0, 6, scan.duplicates()):
        held = set(held.tolist())
        trained = {hashes[i] for i in range(len(hashes)) if i not in held}
        assert held and not {hashes[i] for i in held} & trained
    # without the groups, these splits leak (the test can fail)
    assert any({hashes[i] for i in h} & {hashes[i] for i in range(len(hashes)) if i not in set(h.tolist())}
               for h in T.make_splits(labels, 3, 0, 6))

    two = tmp_path / "two"
    for name in ("a", "b"):
        (two / name).mkdir(parents=True)
    shutil.copyfile(dup_src / "cat" / "cat_00.jpg", two / "a" / "1.jpg")
    shutil.copyfile(dup_src / "cat" / "cat_02.jpg", two / "a" / "2.jpg")
    shutil.copyfile(dup_src / "rocket" / "rocket_00.jpg", two / "b" / "1.jpg")
    shutil.copyfile(dup_src / "rocket" / "rocket_00.jpg", two / "b" / "1 (copy).jpg")
    with pytest.raises(T.TuneError, match=r"class 'b' has 2 images but 1 different .* at least 2 different images"):
        T.tune(two, budget_minutes=1)
