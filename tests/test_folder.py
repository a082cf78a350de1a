"""Scanning a messy real-world ImageFolder, decoding every colour mode, encoding and atomic writes."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from augexpand.errors import ImageReadError, SourceError
from augexpand.folder import decode_image, encode_image, safe_stem, scan_image_folder, write_atomic
from tests.conftest import MESSY_BAD


def test_scan_messy_folder_keeps_every_readable_image_and_names_every_bad_one(messy_src: Path):
    scan = scan_image_folder(messy_src)

    assert scan.classes == ["cat", "coffee", "rocket"]  # sorted, `broken` left out
    assert scan.counts() == {"cat": 4, "coffee": 8, "rocket": 2}
    assert scan.empty_classes == ["broken"]
    skipped = {s.rel: s.reason for s in scan.skipped}
    assert set(skipped) == set(MESSY_BAD)
    for rel, words in MESSY_BAD.items():
        assert words in skipped[rel], (rel, skipped[rel])
    assert scan.ignored == 1  # notes.txt; hidden files and folders are not even counted
    rels = {s.rel for s in scan.sources}
    assert "cat/sub/deeper/IMG_1.JPG" in rels
    assert not any("/." in r for r in rels)
    assert scan.conversions == {"16-bit": 1, "CMYK": 1, "RGBA": 1, "grayscale": 1, "palette": 1}


def test_stems_are_safe_and_unique(messy_src: Path):
    scan = scan_image_folder(messy_src)
    stems = [s.stem for s in scan.sources]
    assert len(set(stems)) == len(stems)
    assert "sub_deeper_IMG_1" in stems
    assert safe_stem("../../etc/passwd.jpg") == "etc_passwd"
    assert safe_stem(".hidden.png") == "hidden"
    assert "/" not in safe_stem("a/b\\c:d.jpg")


def test_strict_fails_on_the_first_bad_file(messy_src: Path):
    with pytest.raises(SourceError, match=r"broken/only\.jpg: truncated file .*--strict"):
        scan_image_folder(messy_src, strict=True)


@pytest.mark.parametrize("make, match", [
    (lambda root: None, "does not exist"),
    (lambda root: root.mkdir(), "no class folders"),
    (lambda root: (root / "a").mkdir(parents=True), "no readable image"),
])
def test_unusable_source_folders(tmp_path: Path, make, match):
    root = tmp_path / "src"
    make(root)
    with pytest.raises(SourceError, match=match):
        scan_image_folder(root)


def test_decode_honours_exif_orientation(messy_src: Path):
    stored = np.asarray(Image.open(messy_src / "cat" / "rotated.jpeg").convert("RGB"))
    shown = decode_image(messy_src / "cat" / "rotated.jpeg")
    assert stored.shape == (40, 56, 3)
    assert shown.shape == (56, 40, 3)
    # Orientation 6: displayed = stored rotated 90 degrees clockwise.
    expected = np.rot90(stored, k=-1)
    assert np.abs(shown.astype(int) - expected.astype(int)).mean() < 3


@pytest.mark.parametrize("name", ["gray.jpg", "rgba.png", "palette.png", "deep16.png", "cmyk.jpg", "scan.TIF",
                                  "web.webp", "old.bmp"])
def test_every_mode_decodes_to_8bit_rgb_matching_pillow(messy_src: Path, name: str):
    image = decode_image(messy_src / "coffee" / name)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    reference = Image.open(messy_src / "coffee" / name)
    if reference.mode == "I;16":
        expected = np.asarray(reference).astype(np.uint16) >> 8
        expected = np.repeat(expected[..., None], 3, axis=2)
    else:
        expected = np.asarray(reference.convert("RGB"))
    assert image.shape == expected.shape
    assert np.abs(image.astype(int) - expected.astype(int)).mean() < 4  # CMYK/JPEG decoders differ by rounding


@pytest.mark.parametrize("name, fmt", [("icon.png", "ICO"), ("t.png", "TGA"), ("q.png", "QOI"), ("d.bmp", "DIB"),
                                       ("s.tif", "SGI")])
def test_an_image_pillow_knows_and_opencv_cannot_decode_is_skipped_at_scan(tmp_path: Path, photos, name, fmt):
    # It used to pass the scan (Pillow reads its header) and fail at decode time: still counted as a source image,
    # in the size and imbalance of the source, and in --dry-run's plan.
    cat = tmp_path / "src" / "cat"
    cat.mkdir(parents=True)
    for k in range(2):
        Image.fromarray(photos["chelsea"][k * 20:k * 20 + 60, :80]).save(cat / f"c{k}.jpg")
    Image.fromarray(photos["coffee"][:60, :80]).save(cat / name, format=fmt)
    with pytest.raises(ImageReadError):
        decode_image(cat / name)
    scan = scan_image_folder(tmp_path / "src")
    assert [s.rel for s in scan.sources] == ["cat/c0.jpg", "cat/c1.jpg"] and scan.counts() == {"cat": 2}
    reason = f"an image of kind {fmt}: not one OpenCV decodes (JPEG, PNG, BMP, TIFF, WebP, JPEG 2000, PPM, GIF, AVIF)"
    assert [(s.rel, s.reason) for s in scan.skipped] == [(f"cat/{name}", reason)]


def test_decode_errors_name_the_reason(tmp_path: Path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "junk.jpg").write_bytes(b"\xff\xd8\xff\xe0 junk")
    with pytest.raises(ImageReadError, match="empty file"):
        decode_image(tmp_path / "empty.jpg")
    with pytest.raises(ImageReadError, match="cannot decode"):
        decode_image(tmp_path / "junk.jpg")


@pytest.mark.parametrize("fmt", ["jpg", "png", "webp"])
def test_encode_round_trip(photos, fmt: str):
    image = cv2.resize(photos["astronaut"], (64, 64))
    data = encode_image(image, fmt, quality=95)
    back = decode_image(data)
    assert back.shape == image.shape
    tolerance = 0 if fmt == "png" else 6
    assert np.abs(back.astype(int) - image.astype(int)).mean() <= tolerance


def test_write_atomic_leaves_only_the_file(tmp_path: Path):
    write_atomic(tmp_path / "a.bin", b"12345")
    write_atomic(tmp_path / "a.bin", b"678")
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]
    assert (tmp_path / "a.bin").read_bytes() == b"678"


def test_a_parallel_scan_finds_exactly_what_a_serial_one_does(messy_src: Path, monkeypatch):
    from augexpand import executors

    calls = []
    monkeypatch.setattr(executors, "PARALLEL_SCAN_FILES", 1)
    real_map = executors.probe_map(2)
    serial = scan_image_folder(messy_src)
    parallel = scan_image_folder(messy_src, imap=lambda fn, paths: calls.append(len(paths)) or real_map(fn, paths))
    assert calls and calls[0] == len(serial.sources) + len(serial.skipped) - 1  # all but the root-level image
    assert parallel == serial
    with pytest.raises(SourceError) as info:
        scan_image_folder(messy_src, strict=True, imap=real_map)
    with pytest.raises(SourceError) as serial_info:
        scan_image_folder(messy_src, strict=True)
    assert str(info.value) == str(serial_info.value)


def test_write_atomic_flushes_the_file_to_disk_before_it_takes_its_name(tmp_path: Path, monkeypatch):
    """A power cut after the rename must not leave an empty dataset.json: with sync the data is fsynced first
    (expand's card and manifests, a run's config and summary); other files go without the cost."""
    import os

    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.fstat(fd).st_size)), real_fsync(fd)))
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", Path(b).name)), real_replace(a, b)))
    write_atomic(tmp_path / "dataset.json", '{"classes": ["a"]}', sync=True)
    write_atomic(tmp_path / "metrics.jsonl", "{}\n")
    assert events == [("fsync", 18), ("replace", "dataset.json"), ("replace", "metrics.jsonl")]
    assert (tmp_path / "dataset.json").read_text() == '{"classes": ["a"]}'
