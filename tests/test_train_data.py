"""The training data path: splits, soft labels from metadata.jsonl, the decoded cache, batches and augmentation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from augexpand.errors import TrainingError
from augexpand.train import data as D
from tests.train_fixtures import write_digits, write_expanded


def test_expanded_split_reads_soft_labels_in_class_order(tmp_path):
    dst = write_expanded(tmp_path / "dst", classes=(0, 1, 2), n=4, mixed=3)
    train, val, classes = D.find_splits(dst)
    assert (train, val, classes) == (dst / "train", dst / "val", ["d0", "d1", "d2"])
    split = D.read_split(train, classes)
    records = [json.loads(line) for line in (train / "metadata.jsonl").read_text().splitlines()]
    assert split.files == [r["file_name"] for r in records]
    np.testing.assert_allclose(split.targets, [r["soft_label"] for r in records], atol=1e-7)
    assert split.soft and split.ops.count("mixup") == 3
    assert split.targets.shape == (15, 3) and np.allclose(split.targets.sum(1), 1)


def test_dataset_json_decides_the_class_order(tmp_path):
    dst = write_expanded(tmp_path / "dst", classes=(0, 1), n=2, mixed=0, with_val=False)
    (dst / "dataset.json").write_text(json.dumps({"classes": ["d1", "d0"]}))  # not the sorted order
    _, _, classes = D.find_splits(dst)
    assert classes == ["d1", "d0"]


def test_plain_image_folder_gets_one_hot_labels(tmp_path):
    root = write_digits(tmp_path / "plain", classes=(3, 5), n=3)
    (root / "d5" / "nested").mkdir()
    (root / "d5" / "5_0.png").rename(root / "d5" / "nested" / "deep.PNG")
    (root / "d3" / "notes.txt").write_text("x")
    (root / ".hidden").mkdir()
    train, val, classes = D.find_splits(root)
    assert (train, val, classes) == (root, None, ["d3", "d5"])
    split = D.read_split(train, classes)
    assert len(split) == 6 and "d5/nested/deep.PNG" in split.files
    assert split.targets.tolist() == [[1, 0]] * 3 + [[0, 1]] * 3 and not split.soft


@pytest.mark.parametrize(("make", "message"), [
    (lambda p: None, r"dataset folder .* does not exist"),
    (lambda p: p.mkdir(), r"has neither a train/ split nor class folders"),
    (lambda p: (p / "val" / "d0").mkdir(parents=True), r"has no train/ split \(it has val\)"),
])
def test_bad_dataset_folders(tmp_path, make, message):
    make(tmp_path / "data")
    with pytest.raises(TrainingError, match=message):
        D.find_splits(tmp_path / "data")


def test_empty_class_folders_are_an_error(tmp_path):
    (tmp_path / "data" / "cat").mkdir(parents=True)
    (tmp_path / "data" / "dog").mkdir()
    with pytest.raises(TrainingError, match=r"no images in .*data"):
        D.read_split(tmp_path / "data", ["cat", "dog"])


def test_class_mismatch_is_named(tmp_path):
    root = write_digits(tmp_path / "val", classes=(0, 7), n=1)
    with pytest.raises(TrainingError, match=r"class mismatch: .* has class\(es\) 'd7' that the training set does "
                                            r"not have \(its classes: d0, d1\)"):
        D.read_split(root, ["d0", "d1"])


def test_missing_validation_folder(tmp_path):
    dst = write_expanded(tmp_path / "dst", n=2, mixed=0, with_val=False)
    with pytest.raises(TrainingError, match=r"validation folder .*nope does not exist"):
        D.find_splits(dst, tmp_path / "nope")


@pytest.mark.parametrize(("record", "message"), [
    ({"file_name": "d0/0_0.png", "label": "d0", "soft_label": [0.5, 0.5]}, r"soft_label has 2 values, the data"),
    ({"file_name": "d0/0_0.png", "label": "d0", "soft_label": [0.5, 0.6, 0]}, r"must be non-negative and sum to 1"),
    ({"file_name": "d0/gone.png", "label": "d0"}, r"1 file\(s\) listed in .* do not exist, e.g. 'd0/gone.png'"),
    ({"file_name": "d0/0_0.png", "label": "zebra"}, r"class mismatch: .*'zebra'"),
    ({"name": "d0/0_0.png"}, r"line 1: expected a JSON object with 'file_name'"),
])
def test_bad_metadata_lines(tmp_path, record, message):
    dst = write_expanded(tmp_path / "dst", n=1, mixed=0, with_val=False)
    (dst / "train" / "metadata.jsonl").write_text(json.dumps(record) + "\n")
    with pytest.raises(TrainingError, match=message):
        D.read_split(dst / "train", ["d0", "d1", "d2"])


def test_cache_decodes_once_and_is_reused(tmp_path):
    root = write_digits(tmp_path / "img", classes=(0, 1), n=3, size=20)
    (root / "d1" / "broken.png").write_bytes(b"not a png")
    split = D.read_split(root, ["d0", "d1"])
    path, used = D.build_cache(split, 16, tmp_path / "cache" / "train_16.npy", workers=0)
    cache = np.load(path, mmap_mode="r")
    assert cache.shape == (7, 16, 16, 3) and cache.dtype == np.uint8
    assert len(used) == 6 and "d1/broken.png" not in used.files  # the broken file is left out, with a warning
    from augexpand.folder import decode_image

    first = used.files[0]
    np.testing.assert_array_equal(cache[used.rows[0]], D.fit_image(decode_image(root / first), 16))
    mtime = path.stat().st_mtime_ns
    D.build_cache(split, 16, path, workers=0)
    assert path.stat().st_mtime_ns == mtime  # same files, same size: not rebuilt


def test_batches_are_the_same_with_or_without_workers(tmp_path):
    root = write_digits(tmp_path / "img", classes=(0, 1, 2), n=5)
    split = D.read_split(root, ["d0", "d1", "d2"])
    path, split = D.build_cache(split, 16, tmp_path / "c.npy")
    dataset = D.CachedBatches(path, split, 16, seed=3)
    plan = D.EpochPlan(len(split), 4, seed=3)

    def epoch(workers):
        loader = torch.utils.data.DataLoader(dataset, batch_size=None, sampler=plan, num_workers=workers)
        return [(x.clone(), y.clone()) for x, y in loader]

    a, b = epoch(0), epoch(2)
    assert len(a) == len(plan) == 4  # 15 images, batches of 4: the last batch of 3 is kept (>= half a batch)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert xa.dtype == torch.uint8 and xa.shape[1:] == (16, 16, 3)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    plan.set_epoch(1)
    assert not all(torch.equal(x, y) for (x, _), (y, _) in zip(a, epoch(0)))  # a new epoch, a new order


def test_augment_batch_translates_and_flips():
    batch = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    same = D.augment_batch(batch, np.random.default_rng(0), flip=False, pad=0)
    np.testing.assert_array_equal(same, batch)
    out = D.augment_batch(batch, np.random.default_rng(0), flip=True, pad=1)
    assert out.shape == batch.shape and not np.shares_memory(out, batch)
    padded = np.pad(batch, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    for i in range(2):  # every output is some 4x4 window of the padded image, maybe mirrored
        windows = [padded[i, y:y + 4, x:x + 4] for y in range(3) for x in range(3)]
        assert any(np.array_equal(out[i], w) or np.array_equal(out[i], w[:, ::-1]) for w in windows)


@pytest.mark.parametrize(("size", "pad", "flip"), [(4, 1, True), (16, 2, True), (16, 8, False), (17, 0, True)])
def test_augment_indices_gather_what_augment_batch_makes(size, pad, flip):
    batch = np.random.default_rng(1).integers(0, 256, (9, size, size, 3), dtype=np.uint8)
    want = D.augment_batch(batch, np.random.default_rng([5, 2]), flip, pad)
    rows, cols = D.augment_indices(9, size, np.random.default_rng([5, 2]), flip, pad)
    got = batch[np.arange(9)[:, None, None], rows[:, :, None], cols[:, None, :]]
    np.testing.assert_array_equal(got, want)
    if flip:  # some image of the batch really is mirrored (the check above covers both kinds)
        flips = D.augment_draws(9, np.random.default_rng([5, 2]), flip, pad)[2]
        assert flips.any() and not flips.all()


def test_device_batches_are_the_loader_batches(tmp_path):
    """The cache held on the device (here the CPU) yields the DataLoader's batches, pixel for pixel."""
    root = write_digits(tmp_path / "img", classes=(0, 1, 2), n=6, size=20)
    (root / "d2" / "broken.png").write_bytes(b"not a png")  # a cache row that is skipped: split.rows is used
    split = D.read_split(root, ["d0", "d1", "d2"])
    path, split = D.build_cache(split, 16, tmp_path / "c.npy")
    assert split.rows is not None and len(split) == 18
    plan = D.EpochPlan(len(split), 5, seed=7)
    dataset = D.CachedBatches(path, split, 16, seed=7, flip=True, crop_pad=0.25)
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, sampler=plan)
    on_device = D.DeviceBatches(path, split, 16, plan, torch.device("cpu"), seed=7, flip=True, crop_pad=0.25,
                                chunk=4)
    for epoch in range(2):
        plan.set_epoch(epoch)
        want, got = list(loader), list(on_device)
        assert len(got) == len(want) == len(on_device) == 4
        for (xa, ya), (xb, yb) in zip(want, got):
            assert xb.dtype == torch.uint8 and torch.equal(xa, xb) and torch.equal(ya, yb)
    plain = D.DeviceBatches(path, split, 16, D.EpochPlan(len(split), 8, 0, shuffle=False), "cpu", augment=False)
    first = next(iter(plain))[0].numpy()
    np.testing.assert_array_equal(first, np.load(path)[split.rows[:8]])  # no augmentation: the cache rows


@pytest.mark.parametrize(("n", "batch", "expected"), [
    (10, 16, 1),   # fewer images than a batch: one batch of all of them
    (32, 16, 2),
    (40, 16, 3),   # a last batch of 8 (half a batch) is kept
    (39, 16, 2),   # a last batch of 7 is dropped
])
def test_batch_count(n, batch, expected):
    assert D.batch_count(n, batch) == expected


def test_fit_image_scales_the_short_side_and_centre_crops():
    image = np.zeros((40, 80, 3), np.uint8)
    image[:, 30:50] = 255  # a centred vertical band
    out = D.fit_image(image, 20)
    assert out.shape == (20, 20, 3)
    assert out[:, 5:15].min() > 200 and out[:, :3].max() < 50


def test_fit_image_of_a_very_long_image_stays_small():
    import resource

    # a 4x150000 PNG is a 1 KB file; scaled whole to a short side of 64 it was 460 MB (a 1x999999 one, 12 GB)
    image = np.zeros((4, 150_000, 3), np.uint8)
    image[:, 74_999:75_001] = 255  # a band of the two middle columns
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = D.fit_image(image, 64)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # KiB
    assert out.shape == (64, 64, 3) and out[:, 26:38].min() > 200 and out[:, :8].max() < 50


@pytest.mark.parametrize(("line", "message"), [
    # not JSON a parser survives, or not UTF-8
    (b"[" * 100_000 + b"]" * 100_000, r"line 1: expected a JSON object with 'file_name'"),
    (b'{"file_name": "d0/0_0.png", "label": "d\xe9"}', r"line 1: not UTF-8 text"),
    # wrong types
    (b'{"file_name": 5, "label": "d0"}', r"line 1: file_name must be a relative path \(a string\), got 5"),
    (b'{"file_name": "d0/0_0.png", "label": ["d0"]}', r"line 1: label must be a class name \(a string\), got \['d0'\]"),
    (b'{"file_name": "d0/0_0.png", "soft_label": "abc"}', r"line 1: soft_label must be a list of 3 numbers"),
    (b'{"file_name": "d0/0_0.png", "soft_label": [[1], 0, 0]}', r"line 1: soft_label must be a list of 3 numbers"),
    (b'{"file_name": "d0/0_0.png", "soft_label": [1' + b"0" * 400 + b", 0, 0]}",
     r"line 1: soft_label must be a list of 3 numbers"),
    # NaN and null are not probabilities (they would train on NaN targets)
    (b'{"file_name": "d0/0_0.png", "soft_label": [NaN, 0, 1]}', r"line 1: soft_label must be non-negative and sum"),
    (b'{"file_name": "d0/0_0.png", "soft_label": [null, 0, 1]}', r"line 1: soft_label must be non-negative and sum"),
    # paths that leave the split, or that no file system holds
    (b'{"file_name": "/etc/hostname", "label": "d0"}', r"line 1: file_name must be a relative path inside"),
    (b'{"file_name": "../dataset.json", "label": "d0"}', r"line 1: file_name must be a relative path inside"),
    (b'{"file_name": "d0/' + b"a" * 5000 + b'.png", "label": "d0"}', r"1 file\(s\) listed in .* do not exist"),
])
def test_hostile_metadata_lines_are_one_error(tmp_path, line, message):
    dst = write_expanded(tmp_path / "dst", n=1, mixed=0, with_val=False)
    (dst / "train" / "metadata.jsonl").write_bytes(line + b"\n")
    with pytest.raises(TrainingError, match=message):
        D.read_split(dst / "train", ["d0", "d1", "d2"])


@pytest.mark.parametrize(("card", "expected"), [
    ('{"classes": ["d1", "d0", "d1"]}', ["d0", "d1"]),  # duplicates: a head with two outputs of one name
    ("[" * 100_000 + "]" * 100_000, ["d0", "d1"]),  # nesting deeper than the JSON parser's recursion
])
def test_a_hostile_dataset_card_is_left_aside(tmp_path, card, expected):
    dst = write_expanded(tmp_path / "dst", classes=(0, 1), n=2, mixed=0, with_val=False)
    (dst / "dataset.json").write_text(card)
    assert D.find_splits(dst)[2] == expected
    assert D.source_resolution(dst) is None and D.orientation_kept(dst) is None


def test_a_fifo_named_dataset_json_is_not_read(tmp_path):
    import os
    import threading

    dst = write_expanded(tmp_path / "dst", classes=(0, 1), n=2, mixed=0, with_val=False)
    (dst / "dataset.json").unlink()
    os.mkfifo(dst / "dataset.json")
    done = []
    reader = threading.Thread(target=lambda: done.append(D.orientation_kept(dst)), daemon=True)
    reader.start()
    reader.join(5)
    blocked = reader.is_alive()
    if blocked:  # waiting in open() for a writer: give it one so that the test ends
        os.close(os.open(dst / "dataset.json", os.O_WRONLY | os.O_NONBLOCK))
        reader.join(5)
    assert not blocked and done == [None] and D.source_resolution(dst) is None


def test_more_classes_than_a_head_may_have_are_refused(tmp_path):
    dst = write_digits(tmp_path / "dst", classes=(0, 1), n=1)
    names = [f"c{i}" for i in range(D.MAX_CLASSES - 1)] + ["d0", "d1"]  # one too many, as the card says
    (dst / "dataset.json").write_text(json.dumps({"classes": names}))
    with pytest.raises(TrainingError, match=r"has 1001 classes; a classifier here has at most 1000"):
        D.find_splits(dst)


def test_an_oversized_card_or_metadata_line_is_not_read_whole(tmp_path, monkeypatch):
    dst = write_expanded(tmp_path / "dst", classes=(0, 1), n=2, mixed=0, with_val=False)
    monkeypatch.setattr(D, "MAX_CARD_BYTES", 10_000)  # 64 MB in use
    card = json.dumps({"classes": ["d1", "d0"], "padding": "x" * 10_000})
    (dst / "dataset.json").write_text(card)  # a card past the limit is left aside (folder order, not the card's)
    assert D.find_splits(dst)[2] == ["d0", "d1"]
    line = json.dumps({"file_name": "d0/0_0.png", "label": "d0", "padding": "x" * D.MAX_METADATA_LINE})
    (dst / "train" / "metadata.jsonl").write_text(line + "\n")
    with pytest.raises(TrainingError, match=r"metadata.jsonl, line 1: longer than 1 MB"):
        D.read_split(dst / "train", ["d0", "d1"])


def test_the_cache_of_large_jpegs_decodes_them_reduced_at_full_quality(tmp_path):
    import cv2
    from skimage import data

    from augexpand.folder import decode_image
    from tests.conftest import jpeg_decodes, psnr

    root = tmp_path / "photos"
    for cls, photo in (("cat", data.chelsea()), ("coffee", data.coffee())):
        (root / cls).mkdir(parents=True)
        big = cv2.resize(photo, (1800, 1200), interpolation=cv2.INTER_LINEAR)  # a real photo at 1/8 is 225x150
        assert cv2.imwrite(str(root / cls / "a.jpg"), cv2.cvtColor(big, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
    split = D.read_split(root, ["cat", "coffee"])
    with jpeg_decodes() as decoded:
        path, used = D.build_cache(split, 64, tmp_path / "c.npy")
    assert decoded == [(150, 225, 3)] * 2  # 1/8 of 1800x1200 still has a short side over 64
    cache = np.load(path)
    assert len(used) == 2 and used.rows is None  # both decoded: cache rows are the files' order
    for row, name in enumerate(used.files):
        full = D.fit_image(decode_image(root / name), 64)  # the whole 1800x1200 decode, area-averaged to 64
        assert psnr(cache[row], full) > 35
    assert not np.array_equal(cache[0], cache[1])


def test_fit_image_shrinks_a_little_bilinearly_and_a_lot_by_area():
    import cv2

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(240, 320, 3), dtype=np.uint8)
    small = cv2.resize(image, (299, 224), interpolation=cv2.INTER_LINEAR)[:, 37:261]
    np.testing.assert_array_equal(D.fit_image(image, 224), small)  # 0.93: bilinear (area takes 6x longer)
    area = cv2.resize(image, (128, 96), interpolation=cv2.INTER_AREA)[:, 16:112]
    np.testing.assert_array_equal(D.fit_image(image, 96), area)  # 0.4: area-averaged, no aliasing
