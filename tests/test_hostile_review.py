"""An adversarial review of expand, preview, inspect and validate: what a hostile file, tree or run still got
wrong after the earlier hostile tests (tests/test_hostile_*.py). Each test fails on the code before its fix."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

import augexpand.expansion
from augexpand.cli import cli
from augexpand.errors import ImageReadError
from augexpand.folder import decode_image
from tests.conftest import crops, save_rgb


def jpeg_bomb(image: np.ndarray, side: int = 60000) -> bytes:
    """A real JPEG of ``image`` whose start-of-frame header is rewritten to claim side x side pixels."""
    data = bytearray(cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))[1].tobytes())
    i = data.index(b"\xff\xc0")  # SOF0: length (2), precision (1), height (2), width (2)
    data[i + 5:i + 9] = struct.pack(">HH", side, side)
    return bytes(data)


@pytest.mark.parametrize("reduced", [2, 4, 8])
def test_a_jpeg_bomb_decoded_at_a_reduced_scale_is_refused_at_once(photos, reduced: int):
    # OpenCV checks its pixel limit against the reduced size: 60000x60000 at 1/8 is 56 megapixels, under it, and
    # libjpeg then decoded the bomb's garbage (5 s and 170 MB at 1/8, 13 s at 1/4; a hang with several)
    start = time.monotonic()
    with pytest.raises(ImageReadError, match="decompression bomb"):
        decode_image(jpeg_bomb(photos["chelsea"][:64, :64]), reduced=reduced)
    assert time.monotonic() - start < 1


def test_a_source_that_becomes_a_bomb_after_the_scan_is_a_named_skip(tmp_path: Path, monkeypatch, photos):
    # the scan checks every header against the pixel limit; a file rewritten afterwards (a sync, a user) was
    # decoded at the plan's reduced scale (1/2 for these 96x80 photos) by the orientation test and the rows:
    # minutes and gigabytes for one file
    src = tmp_path / "src"
    for name, photo, n in (("cat", "chelsea", 4), ("coffee", "coffee", 3)):
        for k, image in enumerate(crops(photos[photo], n, seed=len(name), size=(96, 80))):
            save_rgb(src / name / f"{name}_{k}.jpg", image, quality=92)
    scan = augexpand.expansion.scan_image_folder
    bomb = jpeg_bomb(photos["chelsea"][:64, :64])

    def scan_then_rewrite(src, **kwargs):
        result = scan(src, **kwargs)
        (Path(src) / "cat" / "cat_1.jpg").write_bytes(bomb)
        return result

    monkeypatch.setattr(augexpand.expansion, "scan_image_folder", scan_then_rewrite)
    dst = tmp_path / "dst"
    start = time.monotonic()
    result = CliRunner().invoke(cli, ["expand", "-r", "heavy", "--copies", "1", "-w", "1", "--size", "16",
                                      str(src), str(dst)])
    assert result.exit_code == 0, result.output
    assert time.monotonic() - start < 30
    card = json.loads((dst / "dataset.json").read_text(encoding="utf-8"))
    assert [s["file"] for s in card["skipped"]] == ["cat/cat_1.jpg"]
    assert "decompression bomb" in card["skipped"][0]["reason"]
    for line in (dst / "train" / "metadata.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        assert "cat/cat_1.jpg" not in record["sources"]
        assert cv2.imread(str(dst / "train" / record["file_name"])) is not None


@pytest.mark.parametrize("kwargs, words", [
    ({"workers": 0}, "workers must be a whole number of at least 1"),  # was taken as 1 without a word
    ({"workers": "2"}, "workers must be a whole number"),  # was a TypeError from a comparison
    ({"val_fraction": "0.2"}, "val_fraction must be a number in [0, 1)"),
    ({"val_fraction": None}, "val_fraction must be a number in [0, 1)"),
    ({"max_pixels": 0}, "max_pixels must be a whole number of at least 1"),  # was 'no readable image'
    ({"max_pixels": "x"}, "max_pixels must be a whole number"),  # was a ValueError from int()
    ({"recipe": None}, "a recipe is a YAML file's path, a builtin recipe's name, a dict or a Recipe"),
    ({"recipe": 5}, "a recipe is a YAML file's path"),
    ({"overrides": [("copies", 1)]}, "overrides must be a dict of recipe keys"),  # was an AttributeError
    ({"overrides": {1: 2}}, "overrides must be a dict of recipe keys"),
])
def test_the_apis_arguments_of_a_wrong_type_or_value_are_an_augexpand_error(small_src: Path, tmp_path: Path,
                                                                            kwargs: dict, words: str):
    from augexpand import AugexpandError, expand, plan_expansion

    for call in (lambda: expand(small_src, tmp_path / "dst", **{"workers": 1, **kwargs}),
                 lambda: plan_expansion(small_src, **{"workers": 1, **kwargs})):
        with pytest.raises(AugexpandError) as caught:
            call()
        assert words in str(caught.value)
    assert not (tmp_path / "dst").exists()


def test_a_class_folder_link_into_the_destination_is_refused_before_overwrite_deletes_it(small_src: Path,
                                                                                         tmp_path: Path):
    # src/extra -> dst/train/cat: dst is neither inside nor around src, so the path check passed; --overwrite then
    # deleted the earlier run's images, which were this run's sources (8 'cannot read' skips, the class gone)
    dst = tmp_path / "dst"
    runner = CliRunner()
    first = runner.invoke(cli, ["expand", "--copies", "1", "--size", "16", "-w", "1", str(small_src), str(dst)])
    assert first.exit_code == 0, first.output
    before = sorted(p.name for p in (dst / "train" / "cat").iterdir())
    (small_src / "extra").symlink_to(dst / "train" / "cat")
    result = runner.invoke(cli, ["expand", "--copies", "1", "--size", "16", "-w", "1", "--overwrite",
                                 str(small_src), str(dst)])
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: the source's class folder 'extra' is a link to ")
    assert "inside the destination" in result.output and len(result.output.strip().splitlines()) == 1
    assert sorted(p.name for p in (dst / "train" / "cat").iterdir()) == before
    # a link around the source is passed over by the scan, as before: it may hold the destination
    (small_src / "extra").unlink()
    (small_src / "up").symlink_to(tmp_path)
    again = runner.invoke(cli, ["expand", "--copies", "1", "--size", "16", "-w", "1", "--overwrite",
                                str(small_src), str(dst)])
    assert again.exit_code == 0, again.output
    assert "class folder link leads to the source folder or above it" in again.output


def test_planned_images_left_out_for_a_source_that_does_not_decode_are_counted(small_src: Path, tmp_path: Path,
                                                                               photos):
    # a file whose header reads but whose pixels do not is skipped when a row reads it; every planned image that
    # needed it (its own copies, and mixes that took it as a partner) was left out without a word: the run made
    # fewer images than --dry-run said, and nothing said why
    import cv2 as _cv2

    good = _cv2.imencode(".jpg", _cv2.cvtColor(photos["coffee"][:40, :48], _cv2.COLOR_RGB2BGR))[1].tobytes()
    frame = good.index(b"\xff\xc0")
    (small_src / "coffee" / "lossless.jpg").write_bytes(good[:frame + 1] + b"\xc3" + good[frame + 2:])  # SOF3
    args = ["expand", "-r", "heavy", "--copies", "2", "--size", "16", "-w", "2", str(small_src)]
    dry = CliRunner().invoke(cli, [*args, str(tmp_path / "dry"), "--dry-run", "--json"])
    result = CliRunner().invoke(cli, [*args, str(tmp_path / "dst"), "--json"])
    assert dry.exit_code == 0 and result.exit_code == 0, result.output
    planned = json.loads(dry.stdout)["images_out"]
    summary = json.loads(result.stdout)
    assert [s["file"] for s in summary["skipped"]] == ["coffee/lossless.jpg"]
    assert summary["images_not_made"] >= 3  # its original and two copies, and any mix that took it
    assert summary["images_out"] + summary["images_not_made"] == planned
    card = json.loads((tmp_path / "dst" / "dataset.json").read_text(encoding="utf-8"))
    assert card["images_not_made"] == summary["images_not_made"]
    text = CliRunner().invoke(cli, [*args, str(tmp_path / "again")])
    assert f"; {summary['images_not_made']} planned images that needed one of them not made" in text.output


def test_a_folder_at_an_outputs_name_on_resume_is_named_as_such_not_a_full_disk(small_src: Path, tmp_path: Path):
    # the hint was 'free some space (or fix the permissions)' for a folder a user made where an image goes
    dst = tmp_path / "dst"
    args = ["expand", "--copies", "1", "--size", "16", "-w", "1", str(small_src), str(dst)]
    first = CliRunner().invoke(cli, [*args, "--shard", "1/1"])  # images and a journal, no manifest yet
    assert first.exit_code == 0, first.output
    image = min((dst / "train" / "cat").iterdir())
    image.unlink()
    image.mkdir()
    (image / "notes.txt").write_text("mine")
    result = CliRunner().invoke(cli, [*args, "--resume"])
    assert result.exit_code == 1
    assert f"Error: cannot write {image}: a folder stands at that name; move it away" in result.output
    assert "free some space" not in result.output and "Traceback" not in result.output
    assert (image / "notes.txt").read_text() == "mine"


def test_a_manifest_line_of_a_hundred_megabytes_is_read_past_not_held(tmp_path: Path):
    # --overwrite and --resume read the earlier run's manifest and journals line by line, but a line was held
    # whole: a 400 MB line took 1.2 GB (decoded, then parsed), a larger one the machine
    import tracemalloc

    from augexpand.destination import _read_lines

    manifest = tmp_path / "metadata.jsonl"
    record = {"file_name": "cat/a.jpg", "row": 0, "split": "train"}
    with open(manifest, "wb") as f:
        f.write(json.dumps(record).encode() + b"\n")
        f.write(b'{"file_name": "' + b"a" * (100 << 20) + b'"}\n')
        f.write(json.dumps({**record, "row": 1}).encode() + b"\n")
    tracemalloc.start()
    try:
        records, bad = _read_lines(manifest)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [r["row"] for r in records] == [0, 1] and bad == 1
    assert peak < 40 << 20


def test_data_after_an_images_end_is_no_truncation_but_a_cut_image_still_is(tmp_path: Path, photos):
    # a Samsung or Google motion photo carries its video after the JPEG's end, some cameras and apps pad or append
    # a trailer: the end-of-image marker was looked for in the last 4 KB only, and such a photo was skipped as
    # 'truncated JPEG' although every decoder reads it whole
    import os as _os

    from augexpand.folder import probe_image

    rgb = photos["astronaut"]
    jpeg = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()
    png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()
    video = b"\0\0\0\x18ftypmp42" + _os.urandom(300_000)
    whole = {"motion.jpg": jpeg + video, "padded.jpg": jpeg + b"\0" * 5000, "trailer.png": png + _os.urandom(9000)}
    cut = {"cut.jpg": jpeg[:len(jpeg) // 2] + b"\0" * 5000, "cut.png": png[:len(png) // 2] + b"\0" * 5000}
    for name, data in {**whole, **cut}.items():
        (tmp_path / name).write_bytes(data)
    for name in whole:
        assert probe_image(tmp_path / name)[1:3] == (rgb.shape[1], rgb.shape[0])
        reference = decode_image(jpeg if name.endswith(".jpg") else png)
        assert np.array_equal(decode_image(tmp_path / name), reference)
    for name in cut:
        with pytest.raises(ImageReadError, match="truncated"):
            probe_image(tmp_path / name)


def test_a_12_bit_jpeg_is_named_as_such_not_as_no_image(tmp_path: Path, photos):
    # medical and scientific cameras write 12-bit JPEGs; Pillow cannot identify one, and the reason given was
    # 'not an image Pillow or OpenCV can identify'
    from augexpand.folder import probe_image

    data = bytearray(cv2.imencode(".jpg", cv2.cvtColor(photos["coffee"], cv2.COLOR_RGB2BGR))[1].tobytes())
    frame = data.index(b"\xff\xc0")
    data[frame + 1], data[frame + 4] = 0xC1, 12  # extended sequential, 12-bit samples
    (tmp_path / "twelve.jpg").write_bytes(bytes(data))
    with pytest.raises(ImageReadError, match="^a 12-bit JPEG: only 8-bit JPEGs are read$"):
        probe_image(tmp_path / "twelve.jpg")
    (tmp_path / "text.jpg").write_bytes(b"\xff\xd8\xff hello")
    with pytest.raises(ImageReadError, match="not an image Pillow or OpenCV can identify"):
        probe_image(tmp_path / "text.jpg")


def undecodable(tmp_path: Path, photos, name: str) -> bytes:
    """Files whose headers read but whose pixels no decoder here makes: a lossless (SOF3) JPEG or a float TIFF."""
    from PIL import Image

    if name.endswith(".jpg"):
        good = cv2.imencode(".jpg", cv2.cvtColor(photos["rocket"][:40, :48], cv2.COLOR_RGB2BGR))[1].tobytes()
        frame = good.index(b"\xff\xc0")
        return good[:frame + 1] + b"\xc3" + good[frame + 2:]
    Image.fromarray(photos["rocket"][:40, :48, 0].astype(np.float32) / 255).save(tmp_path / "f.tif")
    return (tmp_path / "f.tif").read_bytes()


def test_a_validation_image_whose_pixels_do_not_decode_is_skipped_not_copied(small_src: Path, tmp_path: Path,
                                                                              photos):
    # val/ gets the sources untouched, copied without decoding: a float TIFF or a lossless JPEG (its header
    # reads) went to val/ as an image no loader reads, and training on dst failed there
    for k in range(4):
        (small_src / "rocket" / f"bad_{k}.jpg").write_bytes(undecodable(tmp_path, photos, ".jpg"))
        (small_src / "rocket" / f"bad_{k}.tif").write_bytes(undecodable(tmp_path, photos, ".tif"))
    dst = tmp_path / "dst"
    result = CliRunner().invoke(cli, ["expand", "--copies", "1", "--size", "16", "-w", "2", "--val-fraction", "0.6",
                                      "--json", str(small_src), str(dst)])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert {s["file"] for s in summary["skipped"]} == {f"rocket/bad_{k}{e}" for k in range(4) for e in (".jpg", ".tif")}
    records = [json.loads(line) for line in (dst / "val" / "metadata.jsonl").read_text(encoding="utf-8").splitlines()]
    assert records and all("bad_" not in r["file_name"] for r in records)
    for r in records:
        assert cv2.imread(str(dst / "val" / r["file_name"])) is not None
    assert not list((dst / "val").rglob("bad_*"))


def test_a_source_of_which_no_image_decodes_is_one_error_line_and_preview_draws_no_empty_sheet(tmp_path: Path,
                                                                                                photos):
    # every header read, no pixels decoded: expand said 'Made 0 training images' and 'wrote train/' (not there),
    # exit 0; preview wrote a sheet of empty rows
    src = tmp_path / "src"
    for cls in ("a", "b"):
        (src / cls).mkdir(parents=True)
        (src / cls / "x.jpg").write_bytes(undecodable(tmp_path, photos, ".jpg"))
        (src / cls / "y.tif").write_bytes(undecodable(tmp_path, photos, ".tif"))
    result = CliRunner().invoke(cli, ["expand", "-r", "heavy", "--size", "16", "-w", "1", str(src),
                                      str(tmp_path / "dst")])
    assert result.exit_code == 1
    last = result.output.strip().splitlines()[-1]
    assert last.startswith(f"Error: no image in {src} could be decoded: 4 file(s) skipped, each named above")
    assert "Traceback" not in result.output and not (tmp_path / "dst" / "dataset.json").exists()
    sheet = tmp_path / "sheet.png"
    shown = CliRunner().invoke(cli, ["preview", "-r", "heavy", str(src), "-o", str(sheet)])
    assert shown.exit_code == 1 and not sheet.exists()
    assert shown.output.strip().splitlines()[-1] == f"Error: no sample could be made from {src}: every source " \
                                                    f"tried failed (named above)"
    assert "could not make an original sample from" in shown.output


def test_a_transform_too_slow_at_a_large_output_size_names_the_size_not_the_recipe_alone(monkeypatch):
    # --size 8192x8192 (allowed: 'at most 8192 pixels a side') on a busy machine: 'RandomResizedCrop cannot be
    # used: ... its parameters are too large (light.yaml, line 13)', blaming a builtin recipe for the user's --size
    import augexpand.recipe
    from augexpand.errors import RecipeError
    from augexpand.recipe import load_recipe

    monkeypatch.setattr(augexpand.recipe, "PROBE_SECONDS", 0.0)  # every transform is 'too slow': the machine's load
    with pytest.raises(RecipeError) as caught:
        load_recipe("light", {"output.size": [4096, 4096]})
    assert "its parameters are too large" in caught.value.message
    assert caught.value.hint == "the output size 4096x4096 (--size or output.size) sizes what the pipeline makes: " \
                                "choose a smaller one"
    with pytest.raises(RecipeError) as small:
        load_recipe("light", {"output.size": [224, 224]})
    assert small.value.hint is None


def test_a_small_image_with_gigabytes_after_its_end_is_skipped_not_read_whole(small_src: Path, tmp_path: Path):
    # a sparse file (a few KB on disk) of 3 GiB whose first bytes are a whole JPEG: every worker read it whole to
    # decode it (3.2 GB and 20 s for one file); one that grew after the scan as well
    from augexpand.folder import probe_image

    photo = (small_src / "cat" / "cat_0.jpg").read_bytes()
    sparse = small_src / "cat" / "sparse.jpg"
    with open(sparse, "wb") as f:
        f.write(photo)
        f.truncate(3 << 30)
    with pytest.raises(ImageReadError, match=r"^a file of 3\.0 GiB: more than an image within the pixel limit"):
        probe_image(sparse)
    with pytest.raises(ImageReadError, match=r"^a file of 3\.0 GiB"):
        decode_image(sparse)
    result = CliRunner().invoke(cli, ["expand", "--copies", "1", "--size", "16", "-w", "1", "--json",
                                      str(small_src), str(tmp_path / "dst")])
    assert result.exit_code == 0, result.output
    assert [s["file"] for s in json.loads(result.stdout)["skipped"]] == ["cat/sparse.jpg"]
    assert probe_image(sparse, max_pixels=None)[1:3] == (48, 40)  # no pixel limit, no file size limit


@pytest.mark.parametrize("where", ["before", "after"])
def test_the_scan_reads_a_pngs_orientation_without_decoding_its_pixels(tmp_path: Path, photos, monkeypatch,
                                                                        where: str):
    # Pillow's getexif() on a PNG decodes the whole image to look for an eXIf chunk after the pixels: 0.3 s per
    # 12-megapixel PNG in the scan, and 13 s for a PNG of a million crafted chunks after its IDAT
    import zlib

    from PIL import PngImagePlugin

    from augexpand.folder import probe_image

    rgb = photos["coffee"]  # 160x107, turned by orientation 6 to 107x160
    png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()
    tiff = b"MM\0*\0\0\0\x08" + struct.pack(">H", 1) + struct.pack(">HHIHH", 0x0112, 3, 1, 6, 0) + b"\0\0\0\0"
    chunk = struct.pack(">I", len(tiff)) + b"eXIf" + tiff + struct.pack(">I", zlib.crc32(b"eXIf" + tiff))
    at = png.index(b"IDAT" if where == "before" else b"IEND") - 4
    path = tmp_path / "turned.png"
    path.write_bytes(png[:at] + chunk + png[at:])
    decoded = decode_image(path)  # OpenCV honours an eXIf on either side of the pixels
    assert decoded.shape[:2] == (rgb.shape[1], rgb.shape[0])

    def no_decoding(self, *args, **kwargs):
        raise AssertionError("the scan decoded a PNG's pixels")

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", no_decoding)
    assert probe_image(path)[1:3] == (decoded.shape[1], decoded.shape[0])


def test_preview_into_a_folder_says_it_is_a_folder(small_src: Path, tmp_path: Path):
    # 'preview -o .' said "the sheet's file name must end in .png, .jpg, .jpeg, .webp, got ''"
    result = CliRunner().invoke(cli, ["preview", str(small_src), "-o", str(tmp_path)])
    assert result.exit_code == 1
    assert result.output.strip() == f"Error: {tmp_path} is a folder; give the sheet's file name, e.g. " \
                                    f"{tmp_path / 'preview.png'}"


def test_a_png_chunk_that_claims_gigabytes_in_a_small_file_is_skipped_before_opencv_allocates_them(tmp_path: Path,
                                                                                                   photos):
    # found by fuzzing: a 7 KB PNG whose IDAT length field claims 2.6 GB passed the scan (Pillow reads the header
    # only), then OpenCV allocated the 2.6 GB before failing (2 s): in every worker that decoded it
    from augexpand.folder import probe_image

    png = bytearray(cv2.imencode(".png", cv2.cvtColor(photos["coffee"], cv2.COLOR_RGB2BGR))[1].tobytes())
    at = png.index(b"IDAT") - 4
    png[at:at + 4] = struct.pack(">I", 2_617_253_060)
    path = tmp_path / "claims.png"
    path.write_bytes(bytes(png))
    words = r"^truncated PNG \(its 'IDAT' chunk of 2,617,253,060 bytes runs past the end of the file"
    start = time.monotonic()
    with pytest.raises(ImageReadError, match=words):
        probe_image(path)
    with pytest.raises(ImageReadError, match=words):  # the file may have become so since the scan
        decode_image(path)
    assert time.monotonic() - start < 0.5


def test_pillows_own_log_lines_stay_off_stderr(small_src: Path, tmp_path: Path, photos):
    # a TIFF whose SamplesPerPixel is 256 (fuzzing found it): Pillow logs 'More samples per pixel than can be
    # decoded: 256' at ERROR, and Python printed it for want of a handler, above the scan's own line
    import subprocess
    import sys

    from PIL import Image

    Image.fromarray(photos["coffee"][:40, :48]).save(tmp_path / "t.tif")
    data = bytearray((tmp_path / "t.tif").read_bytes())
    order = "<" if data[:2] == b"II" else ">"
    ifd = struct.unpack(order + "I", data[4:8])[0]
    for k in range(struct.unpack(order + "H", data[ifd:ifd + 2])[0]):
        entry = ifd + 2 + 12 * k
        if struct.unpack(order + "H", data[entry:entry + 2])[0] == 277:  # SamplesPerPixel, a SHORT
            data[entry + 8:entry + 10] = struct.pack(order + "H", 256)
    (small_src / "cat" / "samples.tif").write_bytes(bytes(data))
    done = subprocess.run([sys.executable, "-m", "augexpand", "expand", "--copies", "1", "--size", "16", "-w", "1",
                           "-q", str(small_src), str(tmp_path / "dst")], capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == ["warning: skipped cat/samples.tif: not an image Pillow or OpenCV can identify"]


@pytest.mark.parametrize("strategy, words", [
    ({"cat": -1}, "sampling_strategy's count for class 'cat' must be a whole number from 0 to 10,000,000"),
    ({"cat": 20_000_001}, "sampling_strategy's count for class 'cat' must be a whole number from 0 to 10,000,000"),
    ({"cat": 1.5}, "got 1.5"),
    (1.5, "a fraction sampling_strategy must be above 0 and at most 1"),
    ([1, 2], ("sampling_strategy must be 'auto', 'minority', 'not minority', 'not majority', 'all', a fraction in "
              "(0, 1] or a mapping {class: count}, got [1, 2]")),
])
def test_a_bad_sampling_strategy_is_named_in_the_form_given(strategy, words):
    # every one of these said "input should be 'auto', 'minority', 'not minority', 'not majority' or 'all'"
    # (pydantic's first branch of the union): wrong for a dict with a bad count, or a fraction over 1
    from augexpand.errors import RecipeError
    from augexpand.recipe import load_recipe

    with pytest.raises(RecipeError) as caught:
        load_recipe({"copies": 0, "oversample": {"method": "smote", "sampling_strategy": strategy}})
    assert words in caught.value.message and "input should be 'auto'" not in caught.value.message
    assert caught.value.message.endswith("(<inline recipe>, oversample.sampling_strategy)")
    assert load_recipe({"oversample": {"sampling_strategy": {"cat": 10}}}).oversample.sampling_strategy == {"cat": 10}


def test_a_pipeline_written_as_a_mapping_without_dashes_is_told_to_be_a_list(tmp_path: Path):
    # 'pipeline: {HorizontalFlip: {}}' (the dashes forgotten) said "serialized pipeline: unknown transform
    # '__class_fullname__'"
    recipe = tmp_path / "r.yaml"
    recipe.write_text("copies: 1\npipeline:\n  HorizontalFlip: {p: 0.5}\n  Blur: {}\n")
    result = CliRunner().invoke(cli, ["validate", str(recipe)])
    assert result.exit_code == 1
    assert result.output.strip() == (f"Error: pipeline is a mapping (HorizontalFlip, Blur) but not albumentations' "
                                     f"serialized form (no __class_fullname__): write the transforms as a list, one "
                                     f"'- Name: {{...}}' line each ({recipe}, line 2, pipeline)")
