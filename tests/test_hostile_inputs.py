"""Hostile inputs met through the real command line: a source that changes under a run, and the like. Each ends in
named skips or one ``Error:`` line, never a traceback."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

import augexpand.expansion
from augexpand.cli import cli


@pytest.mark.parametrize("val_fraction", ["0", "0.5"])
@pytest.mark.parametrize("gone", ["cat/cat_1.jpg", "rocket"])
def test_a_source_that_vanishes_after_the_scan_is_a_named_skip(small_src: Path, tmp_path: Path, monkeypatch,
                                                              gone: str, val_fraction: str):
    # the plan's fingerprint stat()ed every source again after the scan: a file deleted in between (a sync, a
    # cleanup job, a user) was a FileNotFoundError traceback before a single image was made
    scan = augexpand.expansion.scan_image_folder

    def scan_then_delete(src, **kwargs):
        result = scan(src, **kwargs)
        target = Path(src) / gone
        shutil.rmtree(target) if target.is_dir() else target.unlink()
        return result

    monkeypatch.setattr(augexpand.expansion, "scan_image_folder", scan_then_delete)
    dst = tmp_path / "dst"
    result = CliRunner().invoke(cli, ["expand", "--copies", "1", "--size", "16", "-w", "1", "--val-fraction",
                                      val_fraction, "--json", str(small_src), str(dst)])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    card = json.loads((dst / "dataset.json").read_text(encoding="utf-8"))
    lost = {"cat/cat_1.jpg"} if gone.endswith(".jpg") else {"rocket/rocket_0.jpg", "rocket/rocket_1.jpg"}
    assert {s["file"] for s in card["skipped"]} == lost
    assert all("No such file or directory" in s["reason"] for s in card["skipped"])
    for split in ("train", "val"):  # every image written decodes, and none came from a vanished file
        manifest = dst / split / "metadata.jsonl"
        for line in manifest.read_text(encoding="utf-8").splitlines() if manifest.exists() else []:
            record = json.loads(line)
            assert not lost & set(record["sources"])
            assert cv2.imread(str(dst / split / record["file_name"])) is not None


def test_control_characters_in_names_reach_the_terminal_as_percent_codes_one_line_each(small_src: Path,
                                                                                       tmp_path: Path):
    # a name holding an escape sequence retitled the terminal or cleared it when its warning was printed, a
    # carriage return overwrote the line, and a newline split the one-line warning (and the Error line) in two
    (small_src / "cat" / "a\x1b]0;owned\x07\rb\nc.jpg").write_bytes(b"not an image")
    (small_src / "rocket").rename(small_src / "roc\x1b[2Jket")
    runner = CliRunner()
    result = runner.invoke(cli, ["expand", "--copies", "1", "--size", "16", "-w", "1", str(small_src),
                                 str(tmp_path / "dst")])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("warning: skipped")]
    assert warnings == [("warning: skipped cat/a%1B]0;owned%07%0Db%0Ac.jpg: not an image Pillow or OpenCV can "
                        "identify")]
    assert "\x1b" not in result.output and "\r" not in result.output and "\x07" not in result.output
    assert any(line.split() == ["roc%1B[2Jket", "2", "2", "2", "4"] for line in result.output.splitlines())
    # the data keeps the name as it is: the class folder and its label
    card = json.loads((tmp_path / "dst" / "dataset.json").read_text(encoding="utf-8"))
    assert "roc\x1b[2Jket" in card["classes"] and (tmp_path / "dst" / "train" / "roc\x1b[2Jket").is_dir()
    result = runner.invoke(cli, ["expand", "--strict", "--size", "16", str(small_src), str(tmp_path / "d2")])
    assert result.exit_code == 1
    assert result.output == "Error: cat/a%1B]0;owned%07%0Db%0Ac.jpg: not an image Pillow or OpenCV can identify " \
                            "(--strict)\n"


DEEP = "[" * 100_000 + "]" * 100_000  # valid JSON that Python's parser cannot read: a RecursionError, not a ValueError


def _expand(src: Path, dst: Path, *extra: str):
    return CliRunner().invoke(cli, ["expand", "--copies", "1", "--size", "16", "-w", "1", *extra, str(src), str(dst)])


@pytest.mark.parametrize("where, then, words", [
    # (file given a line of 100,000 nested brackets, the command that reads it, its one line)
    ("journal", "--resume", "warning: 1 unreadable line(s) in the manifest or journal of"),
    ("run.json", "--resume", "run.json is damaged: cannot tell which plan"),
    ("train/metadata.jsonl", "--overwrite", "warning: 1 line(s) of the earlier run's manifest or journal could not"),
    ("train/metadata.jsonl", "inspect", "1 line(s) of train/metadata.jsonl are not records of augexpand"),
    ("dataset.json", "inspect", "20 training images in 3 classes"),  # no card: counted from the manifest
])
def test_json_nested_too_deep_for_python_is_a_damaged_line_not_a_traceback(small_src: Path, tmp_path: Path, where: str,
                                                                          then: str, words: str):
    # json.loads raises RecursionError, which the readers of our own files did not catch (only ValueError)
    dst = tmp_path / "dst"
    assert _expand(small_src, dst, *(["--shard", "1/2"] if then == "--resume" else [])).exit_code == 0
    path = next((dst / ".augexpand").glob("journal*.jsonl")) if where == "journal" else \
        dst / ".augexpand" / where if where == "run.json" else dst / where
    with open(path, "a" if where.endswith("l") else "w", encoding="utf-8") as f:
        f.write(DEEP + "\n")
    result = CliRunner().invoke(cli, ["inspect", str(dst)]) if then == "inspect" else _expand(small_src, dst, then)
    assert "Traceback" not in result.output and not isinstance(result.exception, RecursionError), result.output
    assert words in result.output
    assert result.exit_code == (1 if where == "run.json" else 0), result.output


def test_a_training_cache_index_nested_too_deep_is_rebuilt(tmp_path: Path):
    from tests.train_fixtures import write_digits

    data = write_digits(tmp_path / "digits", classes=(0, 1), n=6)
    run = tmp_path / "run"
    fast = ["--size", "16", "--width", "8", "--workers", "0", "--batch-size", "16", "--no-flip", "-q"]
    runner = CliRunner()
    assert runner.invoke(cli, ["train", str(data), "-o", str(run), "--epochs", "1", *fast]).exit_code == 0
    (index,) = (run / "cache").glob("*.json")
    index.write_text(DEEP, encoding="utf-8")
    result = runner.invoke(cli, ["train", "-o", str(run), "--resume", "--epochs", "2", *fast])
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    assert json.loads(index.read_text(encoding="utf-8"))["complete"]  # decoded again and written anew


def test_preview_names_the_partner_that_does_not_decode_not_the_first_image(small_src: Path, tmp_path: Path):
    # a 32-bit float TIFF: its header reads (the scan keeps it), OpenCV cannot decode it. A mixup whose partner it
    # was said "could not make a mixup sample from cat/cat_0.jpg": a good photo, blamed
    from PIL import Image

    Image.fromarray(np.linspace(0, 1, 48 * 40, dtype=np.float32).reshape(40, 48)).save(small_src / "rocket" / "f.tif")
    recipe = tmp_path / "mix.yaml"
    recipe.write_text("copies: 0\nkeep_originals: false\nmix: {mixup: {count: 3}}\noutput: {size: 32}\n")
    result = CliRunner().invoke(cli, ["preview", "-r", str(recipe), "-n", "8", "--tile", "32", str(small_src), "-o",
                                      str(tmp_path / "sheet.png")])
    assert result.exit_code == 0, result.output
    blamed = [line for line in result.output.splitlines() if line.startswith("warning: preview: could not make")]
    assert blamed and all(line.startswith("warning: preview: could not make a mixup sample from rocket/f.tif: "
                                          "ImageReadError: OpenCV cannot decode it") for line in blamed), blamed


def _scan_bomb(image, scans: int) -> bytes:
    """A progressive JPEG of ``image`` whose last scan is repeated until the file holds ``scans`` scans (libjpeg
    decodes each one: a pass over the whole image; it only warns that the progression is inconsistent)."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", progressive=True, quality=90)
    data = buffer.getvalue()
    last, end = data.rindex(b"\xff\xda"), data.rindex(b"\xff\xd9")
    have = data.count(b"\xff\xda")
    return data[:end] + data[last:end] * (scans - have) + data[end:]


def test_a_progressive_jpeg_of_too_many_scans_is_a_named_skip(small_src: Path, tmp_path: Path, photos):
    # 125 KB, 16 megapixels and 1,000 scans took 36 s to decode, and each row that used it decoded it again: a few
    # such files made a run of hours. Here a small one, so that the test is fast either way
    from augexpand.folder import decode_image

    image = photos["astronaut"]
    (small_src / "cat" / "bomb.jpg").write_bytes(_scan_bomb(image, 101))
    (small_src / "cat" / "many.jpg").write_bytes(_scan_bomb(image, 100))  # at the limit (MAX_JPEG_SCANS): decoded
    assert decode_image(small_src / "cat" / "many.jpg").shape == image.shape
    result = CliRunner().invoke(cli, ["expand", "--copies", "1", "--size", "16", "-w", "1", "--json",
                                      str(small_src), str(tmp_path / "dst")])
    assert result.exit_code == 0, result.output
    assert "warning: skipped cat/bomb.jpg: a JPEG of 101 scans: at most 100 are decoded" in result.output
    card = json.loads((tmp_path / "dst" / "dataset.json").read_text(encoding="utf-8"))
    assert [s["file"] for s in card["skipped"]] == ["cat/bomb.jpg"]
    assert card["counts"]["source"]["cat"] == 6  # the 5 photos and many.jpg


def test_tune_names_a_recipe_that_fails_without_expands_hint(tmp_path: Path):
    # the skip said "...; fix the recipe (or the images), then run again with --overwrite": expand's hint, and tune
    # has no --overwrite
    pytest.importorskip("torch")
    from augexpand import tune as T
    from tests.test_tune import write_digits

    src = write_digits(tmp_path / "digits", {0: 6, 1: 6})
    broken = {"copies": 1, "pipeline": [{"RandomCrop": {"height": 40, "width": 40}}], "output": {"size": 12}}
    s = T.tune(src, candidates=[T.Candidate(T.NONE, None, "baseline"), T.Candidate("broken", broken, "test")],
               steps=2, max_splits=2)
    skipped = {r["name"]: r["skipped"] for r in s["candidates"]}["broken"]
    assert re.match(r"\d+ of \d+ images could not be made; first: row \d+ from d\d/\d+\.png: CropSizeError: ", skipped)
    assert "--overwrite" not in skipped


def test_libpng_and_libjpeg_keep_their_complaints_off_stderr(small_src: Path, tmp_path: Path, photos):
    # OpenCV's libpng and libjpeg write to file descriptor 2 themselves, whatever OpenCV's log level: a damaged PNG
    # added "libpng error: IDAT: invalid literal/lengths set" (twice: the orientation test and the row decoded it),
    # a progressive JPEG of an odd scan sequence "Inconsistent progression sequence for component 0 coefficient 1"
    import subprocess
    import sys

    png = bytearray(cv2.imencode(".png", photos["coffee"][:40, :48])[1].tobytes())
    at = png.index(b"IDAT") + 40
    png[at:at + 200] = bytes(200)  # corrupt pixels, an intact end: only decoding finds out
    (small_src / "coffee" / "bad.png").write_bytes(bytes(png))
    (small_src / "cat" / "odd.jpg").write_bytes(_scan_bomb(photos["chelsea"][:40, :48], 30))  # decodes
    done = subprocess.run([sys.executable, "-m", "augexpand", "expand", "--copies", "1", "--size", "16", "-w", "1",
                           "-q", str(small_src), str(tmp_path / "dst")], capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [("warning: skipped coffee/bad.png: OpenCV cannot decode it (corrupt, "
                                        "truncated, or a kind of image it cannot read)")]
    card = json.loads((tmp_path / "dst" / "dataset.json").read_text(encoding="utf-8"))
    assert card["counts"]["source"] == {"cat": 6, "coffee": 3, "rocket": 2}  # odd.jpg decoded and counted


@pytest.mark.parametrize("command, name, code", [
    (["tune", "{src}", "-o", "{out}", "--budget", "1"], "best.yaml", 2),  # refused before the search
    (["preview", "-r", "light", "{src}", "-o", "{out}"], "sheet.png", 1),
    (["inspect", "{src}", "--plot", "{out}"], "chart.png", 1),
])
def test_an_output_path_that_is_a_fifo_or_a_device_is_never_replaced(small_src: Path, tmp_path: Path, command,
                                                                     name: str, code: int):
    # the atomic write renamed its temporary file onto whatever was there: `tune -o /dev/full`, run as root,
    # replaced the device /dev/full with a regular file holding the recipe (a FIFO here: tests make no devices)
    import os
    import stat

    fifo = tmp_path / name
    os.mkfifo(fifo)
    args = [a.replace("{src}", str(small_src)).replace("{out}", str(fifo)) for a in command]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == code, result.output
    assert f"cannot write {fifo}: it is a FIFO, not a regular file; it is never replaced" in result.output
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_a_jpeg_header_padded_with_megabytes_of_junk_is_skipped_at_once(small_src: Path, tmp_path: Path):
    # Pillow's parser steps over junk between markers one byte at a time in Python: a 20 MB file of fill bytes took
    # 16 s to probe, a partial download padded with zeros as long (here 4 MB each, about 3 s each before)
    import time

    head = (small_src / "cat" / "cat_0.jpg").read_bytes()[:600]
    (small_src / "cat" / "zeros.jpg").write_bytes(head + bytes(4_000_000) + b"\xff\xd9")  # ends as a JPEG does
    (small_src / "cat" / "fill.jpg").write_bytes(b"\xff\xd8" + b"\xff" * 4_000_000 + b"\xff\xd9")
    (small_src / "cat" / "padded.jpg").write_bytes(  # a little padding is fine
        b"\xff\xd8" + b"\xff" * 100 + (small_src / "cat" / "cat_1.jpg").read_bytes()[2:])
    started = time.perf_counter()
    result = CliRunner().invoke(cli, ["expand", "--copies", "0", "--size", "16", "-w", "1", "--dry-run", "--json",
                                      str(small_src), str(tmp_path / "dst")])
    assert time.perf_counter() - started < 5
    assert result.exit_code == 0, result.output
    for name in ("zeros", "fill"):
        assert (f"warning: skipped cat/{name}.jpg: a JPEG whose header holds more than 64 KB of padding or junk "
                f"between its markers") in result.output
    summary = json.loads(result.output[result.output.index("{"):])
    assert summary["counts"]["source"]["cat"] == 6  # the 5 photos and padded.jpg


def test_a_png_of_many_thousand_chunks_before_its_pixels_is_skipped_at_once(small_src: Path, tmp_path: Path):
    # Pillow parses (and checks the CRC of) each chunk in Python: a million empty chunks, 12 MB, took 6 s to probe
    import struct
    import time
    import zlib

    png = (small_src / "cat" / "cat_0.jpg").read_bytes()
    png = cv2.imencode(".png", cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR))[1].tobytes()
    at = png.index(b"IDAT") - 4
    empty = struct.pack(">I", 0) + b"abCd" + struct.pack(">I", zlib.crc32(b"abCd"))
    (small_src / "cat" / "chunky.png").write_bytes(png[:at] + empty * 400_000 + png[at:])
    (small_src / "cat" / "some.png").write_bytes(png[:at] + empty * 100 + png[at:])  # a few are fine
    started = time.perf_counter()
    result = CliRunner().invoke(cli, ["expand", "--copies", "0", "--size", "16", "-w", "1", "--dry-run", "--json",
                                      str(small_src), str(tmp_path / "dst")])
    assert time.perf_counter() - started < 5
    assert result.exit_code == 0, result.output
    assert "warning: skipped cat/chunky.png: a PNG of more than 10,000 chunks before its pixels" in result.output
    summary = json.loads(result.output[result.output.index("{"):])
    assert summary["counts"]["source"]["cat"] == 6  # the 5 photos and some.png


def test_a_training_image_that_vanishes_after_the_split_is_read_is_a_named_skip(tmp_path: Path, monkeypatch):
    # the cache's fingerprint stat()ed every file again: one deleted in between was a FileNotFoundError traceback
    import augexpand.train.data as D
    from tests.train_fixtures import write_digits

    data = write_digits(tmp_path / "digits", classes=(0, 1), n=6)
    read_split = D.read_split

    def read_then_delete(root, classes, *args):
        split = read_split(root, classes, *args)
        (Path(root) / split.files[0]).unlink()
        return split

    monkeypatch.setattr(D, "read_split", read_then_delete)
    fast = ["--size", "16", "--width", "8", "--workers", "0", "--batch-size", "16", "--no-flip", "--epochs", "1"]
    result = CliRunner().invoke(cli, ["train", str(data), "-o", str(tmp_path / "run"), *fast, "--json"])
    assert result.exit_code == 0, result.output
    assert "warning: skipped" in result.output and "d0/0_0.png: cannot read: No such file or directory" in result.output
    assert json.loads(result.output[result.output.index("{"):])["train_images"] == 11


def test_tune_leaves_out_a_source_gone_since_the_scan_or_whose_pixels_do_not_decode(tmp_path: Path, photos,
                                                                                     monkeypatch):
    # putting the sources into a split copied a file deleted since the scan (a FileNotFoundError traceback), and
    # decoded a large one for the proxy: a float TIFF, whose header the scan reads, failed the whole search
    pytest.importorskip("torch")
    import augexpand.folder
    from augexpand import tune as T
    from tests.conftest import crops, save_rgb

    src = tmp_path / "photos"
    for seed, name in enumerate(("chelsea", "coffee")):
        for k, image in enumerate(crops(photos[name], 4, seed=seed, size=(200, 150))):  # over 128 px: reduced
            save_rgb(src / name / f"{name}_{k}.jpg", image, quality=90)
    floats = np.linspace(0, 1, 200 * 150, dtype=np.float32).reshape(150, 200)
    for k in range(3):  # in the training part of the split for sure
        save_rgb(src / "coffee" / f"float{k}.tif", floats)
    scan = augexpand.folder.scan_image_folder

    def scan_then_delete(root, *args, **kwargs):
        result = scan(root, *args, **kwargs)
        if Path(root) == src:
            (src / "chelsea" / "chelsea_0.jpg").unlink()
        return result

    monkeypatch.setattr(augexpand.folder, "scan_image_folder", scan_then_delete)
    placed = []

    def trial(candidate, split_dir, work, split, seed, proxy):
        placed.extend(p.relative_to(split_dir).as_posix() for p in split_dir.rglob("*.*"))
        return {"score": 0.5, "accuracy": 0.5, "loss": 1.0, "images": 8}

    monkeypatch.setattr(T, "_trial", trial)
    light = {"copies": 1, "pipeline": ["HorizontalFlip"], "output": {"size": 32}}
    s = T.tune(src, candidates=[T.Candidate(T.NONE, None, "baseline"), T.Candidate("light", light, "test")],
               max_splits=1)
    assert [r["splits"] for r in s["candidates"]] == [1, 1]
    assert not any(p.startswith("train/") and "float" in p or "chelsea_0" in p for p in placed)
    photos_placed = {p.split("/", 2)[2].removesuffix(".png") for p in placed if "float" not in p}
    assert photos_placed == {*(f"chelsea_{k}.jpg" for k in (1, 2, 3)), *(f"coffee_{k}.jpg" for k in range(4))}


def test_a_class_name_the_charts_font_cannot_draw_is_one_note_not_matplotlib_warnings(small_src: Path,
                                                                                     tmp_path: Path):
    # matplotlib warned twice per missing character, each warning with a line of our source code under it:
    # "folder.py:936: UserWarning: Glyph 29483 (\N{CJK UNIFIED IDEOGRAPH-732B}) missing from font(s) DejaVu Sans."
    import warnings

    (small_src / "cat").rename(small_src / "猫")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning that reaches the user fails the command here
        result = CliRunner().invoke(cli, ["inspect", str(small_src), "--plot", str(tmp_path / "counts.png")])
    assert result.exit_code == 0, result.output
    assert "note: counts.png: the font has no glyph for 猫 (drawn as boxes)" in result.output
    assert "UserWarning" not in result.output and "Glyph" not in result.output
    assert cv2.imread(str(tmp_path / "counts.png")) is not None


def test_a_manifest_entry_that_is_a_fifo_is_named_as_such_not_as_missing(small_src: Path, tmp_path: Path):
    # it said "1 file(s) listed in .../metadata.jsonl do not exist": the file is there, a FIFO
    import os

    dst = tmp_path / "dst"
    assert _expand(small_src, dst).exit_code == 0
    first = json.loads((dst / "train" / "metadata.jsonl").read_text(encoding="utf-8").splitlines()[0])["file_name"]
    (dst / "train" / first).unlink()
    os.mkfifo(dst / "train" / first)
    result = CliRunner().invoke(cli, ["train", str(dst), "-o", str(tmp_path / "run"), "--epochs", "1"])
    assert result.exit_code == 1
    assert result.output.splitlines()[-1] == (f"Error: 1 file(s) listed in {dst / 'train' / 'metadata.jsonl'} are not "
                                              f"regular files (a FIFO, a device or a folder), e.g. {first!r}")


@pytest.mark.parametrize("target, words", [("folder", "is not a file"), ("/dev/zero", "is not a file"),
                                           ("missing.json", "not found")])
def test_a_pipeline_path_that_is_a_folder_or_a_device_is_not_called_missing(tmp_path: Path, target: str, words: str):
    # a folder or a device was "pipeline file ... not found"
    (tmp_path / "folder").mkdir()
    path = target if target.startswith("/") else str(tmp_path / target)
    (tmp_path / "r.yaml").write_text(f"pipeline: {path}\n", encoding="utf-8")
    result = CliRunner().invoke(cli, ["validate", str(tmp_path / "r.yaml")])
    assert result.exit_code == 1
    assert result.output == f"Error: pipeline file {path} {words} ({tmp_path / 'r.yaml'}, line 1, pipeline)\n"


@pytest.mark.parametrize("orientation", range(1, 9))
def test_the_scan_gives_an_exif_rotated_tiff_the_size_it_decodes_to(tmp_path: Path, photos, orientation: int):
    # Pillow 11+ reports a TIFF's size already turned by its orientation tag; the scan turned it once more: a
    # 60x40 TIFF of orientation 6 decodes to 40x60 and was recorded as 60x40
    from PIL import Image, ImageOps

    from augexpand.folder import decode_image, scan_image_folder

    path = tmp_path / "src" / "cat" / "t.tif"
    path.parent.mkdir(parents=True)
    Image.fromarray(photos["astronaut"][:40, :60]).save(path, tiffinfo={0x0112: orientation})
    (source,) = scan_image_folder(tmp_path / "src").sources
    decoded = decode_image(path)
    assert (source.height, source.width) == decoded.shape[:2]
    upright = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
    assert np.array_equal(decoded, upright)


def test_an_albumentations_warning_at_apply_time_is_said_once_not_per_worker(small_src: Path, tmp_path: Path):
    # the recipe's trial run said it in one line; each worker then printed albumentations' UserWarning again, with
    # a line of albumentations' source under it
    import subprocess
    import sys

    (tmp_path / "r.yaml").write_text("copies: 1\npipeline: [ToRGB]\noutput: {size: 16}\n", encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "augexpand", "expand", "-r", str(tmp_path / "r.yaml"), "-w", "2",
                           "-q", str(small_src), str(tmp_path / "dst")], capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [f"warning: {tmp_path / 'r.yaml'}: albumentations: The image is already an RGB."]


@pytest.mark.parametrize("command", [
    ["validate", "{long}.yaml"],
    ["inspect", "{long}"],
    ["expand", "{long}", "{tmp}/dst"],
    ["expand", "-r", "{long}.yaml", "{src}", "{tmp}/dst"],
    ["preview", "-r", "light", "{src}", "-o", "{long}.png"],
    ["inspect", "{src}", "--plot", "{long}.png"],
    ["tune", "{src}", "-o", "{long}.yaml"],
    ["train", "{src}", "--out", "{long}"],
    ["evaluate", "{long}", "{src}"],
])
def test_a_path_with_a_name_over_255_bytes_is_one_error_line(small_src: Path, tmp_path: Path, command):
    # pathlib's exists(), is_dir() and is_file() raise OSError for a name the file system cannot hold (Python 3.11):
    # a traceback in every command that looked at such a path
    long = str(tmp_path / ("y" * 300))
    args = [a.format(long=long, tmp=tmp_path, src=small_src) for a in command]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code in (1, 2), result.output
    assert "Traceback" not in result.output and not isinstance(result.exception, OSError), result.output
    error = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(error) == 1 and error[0].endswith("File name too long"), result.output


def test_evaluate_names_its_chart_after_a_long_folder_within_the_file_name_limit(tmp_path: Path):
    from tests.train_fixtures import write_digits

    data = write_digits(tmp_path / "digits", classes=(0, 1), n=6)
    run = tmp_path / "run"
    fast = ["--size", "16", "--width", "8", "--workers", "0", "--batch-size", "16", "--no-flip", "-q"]
    assert CliRunner().invoke(cli, ["train", str(data), "-o", str(run), "--epochs", "1", *fast]).exit_code == 0
    folder = data.rename(tmp_path / ("x" * 250))
    result = CliRunner().invoke(cli, ["evaluate", str(run), str(folder), "--json"])
    assert result.exit_code == 0, result.output
    png = Path(json.loads(result.output[result.output.index("{"):])["confusion_png"])
    assert png.is_file() and png.name == f"confusion_{'x' * 200}.png"


def test_example_into_a_file_says_it_is_not_a_folder(small_src: Path):
    # it said "... is not empty" of a file (or of /dev/null)
    target = small_src / "cat" / "cat_0.jpg"
    before = target.read_bytes()
    result = CliRunner().invoke(cli, ["example", str(target)])
    assert result.exit_code == 1
    assert result.output == f"Error: {target} exists and is not a folder; choose a new folder for the example\n"
    assert target.read_bytes() == before


def test_inspect_counts_a_large_manifest_in_memory_that_does_not_grow_with_it(small_src: Path, tmp_path: Path):
    # every record was kept as a dict (1.7 GB of memory for 500,000 lines), and a line was read whole however long
    # (a 300 MB line: 300 MB more); now the counts are gathered line by line and a line over 1 MB is read past
    import tracemalloc

    from augexpand.inspection import inspect_folder

    dst = tmp_path / "dst"
    assert _expand(small_src, dst).exit_code == 0
    manifest = dst / "train" / "metadata.jsonl"
    lines = manifest.read_text(encoding="utf-8").splitlines()
    expected = inspect_folder(dst)
    with open(manifest, "a", encoding="utf-8") as f:
        f.write("\n".join(lines * 600) + "\n")  # 12,000 more records: 600 times each image
        f.write('{"label": "' + "x" * 20_000_000 + '"}\n')  # one line of 20 MB
    tracemalloc.start()
    try:
        report = inspect_folder(dst)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 6_000_000, peak
    assert report["counts"] == {c: 601 * n for c, n in expected["counts"].items()}
    assert report["per_class_op"] == {c: {op: 601 * n for op, n in ops.items()}
                                      for c, ops in expected["per_class_op"].items()}
    assert report["soft_counts"] == pytest.approx({c: 601 * w for c, w in expected["soft_counts"].items()})
    assert "1 line(s) of train/metadata.jsonl are not records of augexpand: left out" in report["notes"]


def test_reading_a_dataset_card_allocates_what_it_holds_not_its_limit(small_src: Path, tmp_path: Path):
    # read(limit + 1) allocates the limit up front: 1 GB (expand, inspect) and 64 MB (train) for a card of 4 KB, a
    # MemoryError under `ulimit -v 1000000`
    import tracemalloc

    from augexpand.manifest import read_card
    from augexpand.train.data import _card

    assert _expand(small_src, tmp_path / "dst").exit_code == 0
    for read in (read_card, _card):
        tracemalloc.start()
        try:
            card = read(tmp_path / "dst")
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert card["classes"] == ["cat", "coffee", "rocket"]
        assert peak < 1_000_000, (read, peak)


def test_a_fifo_in_place_of_a_runs_config_is_one_line_not_a_hang(tmp_path: Path):
    # train --resume read RUN/config.yaml with read_text(): a FIFO of that name waited for a writer for ever
    import os
    import subprocess
    import sys

    from tests.train_fixtures import write_digits

    data = write_digits(tmp_path / "digits", classes=(0, 1), n=6)
    run = tmp_path / "run"
    fast = ["--size", "16", "--width", "8", "--workers", "0", "--batch-size", "16", "--no-flip", "-q"]
    assert CliRunner().invoke(cli, ["train", str(data), "-o", str(run), "--epochs", "1", *fast]).exit_code == 0
    (run / "config.yaml").unlink()
    os.mkfifo(run / "config.yaml")
    done = subprocess.run([sys.executable, "-m", "augexpand", "train", str(data), "-o", str(run), "--resume",
                           "--epochs", "2", "-q"], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == (f"Error: {run / 'config.yaml'} is not a regular file, where the run "
                                            f"keeps its config.yaml; move it away")


@pytest.mark.parametrize("kind", ["link", "fifo"])
def test_the_training_cache_is_never_written_through_a_link_or_into_a_fifo(tmp_path: Path, kind: str):
    # the cache .npy is written in place (a memory map): a link in its place had the file it leads to overwritten
    # with the decoded images, and a FIFO was "Error: File or stream is not seekable."
    import os

    from tests.train_fixtures import write_digits

    data = write_digits(tmp_path / "digits", classes=(0, 1), n=6)
    run = tmp_path / "run"
    fast = ["--size", "16", "--width", "8", "--workers", "0", "--batch-size", "16", "--no-flip", "-q"]
    assert CliRunner().invoke(cli, ["train", str(data), "-o", str(run), "--epochs", "1", *fast]).exit_code == 0
    (cache,) = (run / "cache").glob("*.npy")
    cache.unlink()
    precious = tmp_path / "precious.npy"
    precious.write_bytes(b"the user's own file")
    os.symlink(precious, cache) if kind == "link" else os.mkfifo(cache)
    result = CliRunner().invoke(cli, ["train", "-o", str(run), "--resume", "--epochs", "2", "-q"])
    assert result.exit_code == 1, result.output
    assert (f"Error: cannot write the decoded cache {cache}: it is a link or not a regular file; remove it (the "
            f"cache is made again)") in result.output.splitlines()
    assert precious.read_bytes() == b"the user's own file"


def test_a_damaged_training_cache_is_made_again(tmp_path: Path):
    # a cache file replaced or damaged behind its index (which still said "complete") was np.load's ValueError
    # ("This file contains pickled (object) data"), a traceback
    from tests.train_fixtures import write_digits

    data = write_digits(tmp_path / "digits", classes=(0, 1), n=6)
    run = tmp_path / "run"
    fast = ["--size", "16", "--width", "8", "--workers", "0", "--batch-size", "16", "--no-flip", "-q"]
    assert CliRunner().invoke(cli, ["train", str(data), "-o", str(run), "--epochs", "1", *fast]).exit_code == 0
    (cache,) = (run / "cache").glob("*.npy")
    good = np.load(cache)
    cache.write_bytes(b"\x93NUMPY" + bytes(200))
    result = CliRunner().invoke(cli, ["train", "-o", str(run), "--resume", "--epochs", "2", "-q"])
    assert result.exit_code == 0, result.output
    assert np.array_equal(np.load(cache), good)


def test_the_run_lock_is_never_taken_through_a_link(tmp_path: Path):
    # RUN/.lock was opened through a link: the file it led to was truncated and given the pid of the run
    import os

    from tests.train_fixtures import write_digits

    data = write_digits(tmp_path / "digits", classes=(0, 1), n=6)
    precious = tmp_path / "precious.txt"
    precious.write_text("the user's own file")
    run = tmp_path / "run"
    run.mkdir()
    os.symlink(precious, run / ".lock")
    result = CliRunner().invoke(cli, ["train", str(data), "-o", str(run), "--epochs", "1", "--size", "16", "-q"])
    assert result.exit_code == 1
    assert f"Error: cannot create the lock file {run / '.lock'}: it is a link; remove it" in result.output.splitlines()
    assert precious.read_text() == "the user's own file"


def test_a_checkpoint_is_never_written_through_a_link_at_its_temporary_name(tmp_path: Path):
    # checkpoints went to the fixed name RUN/.best.pt.tmp, opened through a link in its place: on --resume, the
    # file it led to was overwritten with the checkpoint (and the link renamed to best.pt)
    import os

    from tests.train_fixtures import write_digits

    data = write_digits(tmp_path / "digits", classes=(0, 1), n=6)
    run = tmp_path / "run"
    fast = ["--size", "16", "--width", "8", "--workers", "0", "--batch-size", "16", "--no-flip", "-q"]
    assert CliRunner().invoke(cli, ["train", str(data), "-o", str(run), "--epochs", "1", *fast]).exit_code == 0
    precious = tmp_path / "precious.txt"
    precious.write_text("the user's own file")
    for name in (".best.pt.tmp", ".last.pt.tmp"):
        os.symlink(precious, run / name)
    result = CliRunner().invoke(cli, ["train", "-o", str(run), "--resume", "--epochs", "2", "-q"])
    assert result.exit_code == 0, result.output
    assert precious.read_text() == "the user's own file"
    assert not (run / "best.pt").is_symlink() and (run / "best.pt").read_bytes()[:4] == b"PK\x03\x04"
    assert sorted(p.name for p in run.glob(".*.tmp")) == [".best.pt.tmp", ".last.pt.tmp"]  # left as they were


def test_running_out_of_memory_is_one_error_line(small_src: Path, monkeypatch):
    import augexpand.inspection

    def exhausted(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(augexpand.inspection, "inspect_folder", exhausted)
    result = CliRunner().invoke(cli, ["inspect", str(small_src)])
    assert result.exit_code == 1
    assert result.output == ("Error: out of memory: fewer --workers, a smaller output size or a lower --max-pixels "
                             "need less\n")
