"""Hostile source trees: decompression bombs, FIFOs, folder links that loop or leave their class, names of any
bytes, a class called metadata.jsonl. Every one is passed over and named; the run finishes quickly and labels
every image it writes by the folder it came from."""

from __future__ import annotations

import json
import os
import struct
import sys
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from augexpand.cli import cli
from augexpand.errors import SourceError
from augexpand.expansion import expand
from augexpand.folder import NAME_MAX, display_name, probe_image, scan_image_folder, walk_class
from augexpand.inspection import inspect_folder
from tests.conftest import crops, save_rgb

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="FIFOs, links and byte names: Linux")


def png_bomb(width: int, height: int) -> bytes:
    """A valid-looking PNG of a few dozen bytes whose IHDR claims width x height (correct CRCs, no real pixels)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        chunk(b"IEND", b"")


def jpeg_claiming(image: np.ndarray, width: int, height: int) -> bytes:
    """A real JPEG whose SOF marker is rewritten to claim width x height."""
    data = bytearray(cv2.imencode(".jpg", image)[1].tobytes())
    i = data.index(b"\xff\xc0")  # SOF0: length (2), precision (1), height (2), width (2)
    data[i + 5:i + 9] = struct.pack(">HH", height, width)
    return bytes(data)


CJK = "猫" * 82  # 246 bytes in UTF-8: 250 with ".jpg", a legal name; too long for "<name>__augment_0.jpg"


@pytest.fixture
def hostile_src(tmp_path: Path, photos) -> Path:
    """cat: 4 photos + a CJK-named and a non-UTF-8-named one (6 readable), a PNG bomb, a JPEG claiming
    65500x65500, a FIFO named p.jpg, two links to itself and one to the source root; dog: 3 photos;
    metadata.jsonl (a class of that name): 2 photos; a non-UTF-8 class name: 2 photos."""
    root = tmp_path / "src"
    cat = crops(photos["chelsea"], 6, seed=1)
    for k in range(4):
        save_rgb(root / "cat" / f"c{k}.jpg", cat[k], quality=92)
    save_rgb(root / "cat" / f"{CJK}.jpg", cat[4], quality=92)
    with open(os.path.join(os.fsencode(root / "cat"), b"caf\xe9 \xff.jpg"), "wb") as f:
        f.write(cv2.imencode(".jpg", cv2.cvtColor(cat[5], cv2.COLOR_RGB2BGR))[1].tobytes())
    (root / "cat" / "bomb.png").write_bytes(png_bomb(30000, 30000))
    (root / "cat" / "huge.jpg").write_bytes(jpeg_claiming(cat[0], 65500, 65500))
    os.mkfifo(root / "cat" / "p.jpg")
    os.symlink(".", root / "cat" / "loop")
    os.symlink(".", root / "cat" / "loop2")
    os.symlink("..", root / "cat" / "up")
    for k, image in enumerate(crops(photos["coffee"], 3, seed=2)):
        save_rgb(root / "dog" / f"d{k}.jpg", image, quality=92)
    for k, image in enumerate(crops(photos["rocket"], 2, seed=3)):
        save_rgb(root / "metadata.jsonl" / f"m{k}.jpg", image, quality=92)
    odd = os.path.join(os.fsencode(root), b"\xff\xfeclass")
    os.mkdir(odd)
    for k, image in enumerate(crops(photos["astronaut"], 2, seed=4)):
        with open(os.path.join(odd, f"o{k}.png".encode()), "wb") as f:
            f.write(cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))[1].tobytes())
    return root


def test_the_scan_passes_over_every_hostile_entry_and_names_it(hostile_src: Path):
    started = time.perf_counter()
    scan = scan_image_folder(hostile_src)
    assert time.perf_counter() - started < 10
    odd = display_name(os.fsdecode(b"\xff\xfeclass"))
    assert odd == "%FF%FEclass"
    # in the order of the folder names as Python reads them (torchvision's order): surrogate escapes sort last
    assert scan.classes == ["cat", "dog", "metadata.jsonl_", "%FF%FEclass"]
    assert scan.class_dirs == ["cat", "dog", "metadata.jsonl", os.fsdecode(b"\xff\xfeclass")]
    assert scan.counts() == {"%FF%FEclass": 2, "cat": 6, "dog": 3, "metadata.jsonl_": 2}
    skipped = {s.rel: s.reason for s in scan.skipped}
    assert set(skipped) == {"cat/bomb.png", "cat/huge.jpg", "cat/p.jpg", "cat/loop", "cat/loop2", "cat/up"}
    assert "30000x30000 is 900.0 megapixels, over the limit of 89.5" in skipped["cat/bomb.png"]
    assert "65500x65500" in skipped["cat/huge.jpg"]
    assert skipped["cat/p.jpg"] == "a FIFO, not a regular file: never opened"
    assert "a loop" in skipped["cat/loop"] and "a loop" in skipped["cat/loop2"]
    assert "leads out of its class folder" in skipped["cat/up"]
    stems = [s.stem for s in scan.sources]
    assert len({s.lower() for s in stems}) == len(stems)
    assert all(len(s.encode()) <= 150 for s in stems)
    assert "caf_E9_FF" in stems
    # --strict fails on a bad file, not on a folder link left alone by design
    with pytest.raises(SourceError, match=r"cat/p\.jpg: a FIFO, not a regular file.*--strict"):
        scan_image_folder(hostile_src, strict=True)


def test_a_higher_pixel_limit_lets_a_large_header_through(hostile_src: Path):
    assert probe_image(hostile_src / "cat" / "bomb.png", max_pixels=None)[1:3] == (30000, 30000)
    assert probe_image(hostile_src / "cat" / "bomb.png", max_pixels=30000 * 30000)[1:3] == (30000, 30000)


def test_expand_on_a_hostile_tree_finishes_quickly_with_right_labels(hostile_src: Path, tmp_path: Path):
    dst = tmp_path / "dst"
    started = time.perf_counter()
    result = CliRunner().invoke(cli, ["expand", "-r", "light", "--copies", "1", "--size", "32", "-w", "1",
                                      "--val-fraction", "0.2", str(hostile_src), str(dst)])
    assert result.exit_code == 0, result.output
    assert time.perf_counter() - started < 60
    for name in ("cat/bomb.png", "cat/huge.jpg", "cat/p.jpg", "cat/loop", "cat/loop2", "cat/up"):
        assert f"warning: skipped {name}: " in result.output
    assert "Traceback" not in result.output

    card = json.loads((dst / "dataset.json").read_text(encoding="utf-8"))
    assert card["classes"] == ["cat", "dog", "metadata.jsonl_", "%FF%FEclass"]
    assert card["counts"]["source"] == {"%FF%FEclass": 2, "cat": 6, "dog": 3, "metadata.jsonl_": 2}
    assert len(card["skipped"]) == 6
    records = [json.loads(line) for line in (dst / "train" / "metadata.jsonl").read_text("utf-8").splitlines()]
    per_class = {}
    for r in records:
        per_class[r["label"]] = per_class.get(r["label"], 0) + 1
        # every image lies in its label's folder, under a name of at most 255 bytes, and decodes
        path = dst / "train" / r["file_name"]
        assert r["file_name"].split("/")[0] == r["label"]
        assert len(path.name.encode()) <= NAME_MAX and path.resolve().is_relative_to(dst.resolve())
        assert cv2.imread(str(path)).shape == (32, 32, 3)
        # the label is the class folder of the source it came from (no image of another class leaked in)
        folder = r["sources"][0].split("/")[0]
        assert {"metadata.jsonl": "metadata.jsonl_"}.get(folder, folder) == r["label"]
    train_sources = card["counts"]["train_sources"]
    assert per_class == {c: 2 * n for c, n in train_sources.items()}  # an original and a copy each
    val_records = [json.loads(line) for line in (dst / "val" / "metadata.jsonl").read_text("utf-8").splitlines()]
    everything = records + val_records
    assert any(r["sources"][0] == "cat/caf%E9 %FF.jpg" for r in everything)  # a non-UTF-8 byte as %XX
    long = [r["file_name"] for r in everything if CJK in r["sources"][0]]
    assert long and all(len(name.encode()) < 200 and "~" in name for name in long)  # cut, with a hash
    for r in val_records:  # untouched copies, under a safe name too
        assert (dst / "val" / r["file_name"]).read_bytes() == (hostile_src / r["sources"][0]).read_bytes() \
            if "%" not in r["sources"][0] else True
    # val/<class>/ only for classes that hold out an image (torchvision refuses an empty class folder)
    val = {p.name for p in (dst / "val").iterdir() if p.is_dir()}
    assert val == {c for c, n in card["counts"]["val"].items() if n}
    assert val != set(card["classes"])  # the 2-image classes hold none out at 0.2


def test_the_walker_names_an_unreadable_folder(tmp_path: Path, photos, monkeypatch):
    save_rgb(tmp_path / "src" / "cat" / "a.jpg", crops(photos["chelsea"], 1, seed=1)[0])
    save_rgb(tmp_path / "src" / "cat" / "locked" / "b.jpg", crops(photos["chelsea"], 1, seed=2)[0])
    real = os.scandir

    def scandir(path="."):
        if os.fspath(path).endswith("locked"):  # as a folder without read permission (tests may run as root)
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    files, passed = walk_class(tmp_path / "src" / "cat", tmp_path / "src")
    assert [f.name for f in files] == ["a.jpg"]
    assert [(p.rel, p.reason) for p in passed] == [("cat/locked", "cannot read folder (Permission denied)")]


def test_folders_nested_deeper_than_pythons_recursion_limit_are_walked(tmp_path: Path, photos):
    # os.walk recursed once per level: folders nested deeper than the recursion limit (1000 by default) were a
    # RecursionError traceback in expand, preview and inspect. Here 300 levels under a limit of 150 more frames
    # than the test runs at (a tree of 1000 levels would also break pytest's own removal of old tmp folders).
    import traceback

    save_rgb(tmp_path / "src" / "cat" / "top.jpg", crops(photos["chelsea"], 1, seed=1)[0])
    deep = tmp_path / "src" / "cat"
    for _ in range(300):
        deep = deep / "d"
        deep.mkdir()
    save_rgb(deep / "deep.jpg", crops(photos["chelsea"], 1, seed=2)[0])
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(len(traceback.extract_stack()) + 150)
    try:
        files, passed = walk_class(tmp_path / "src" / "cat", tmp_path / "src")
        counted = inspect_folder(tmp_path / "src")["counts"]
    finally:
        sys.setrecursionlimit(limit)
    assert [f.name for f in files] == ["deep.jpg", "top.jpg"] and passed == [] and counted == {"cat": 2}


def test_two_class_folder_links_to_one_folder_do_not_label_its_images_twice(tmp_path: Path, photos):
    # a and b were both kept: every image of the pool was a source of class a and of class b
    pool = tmp_path / "pool"
    for k, image in enumerate(crops(photos["chelsea"], 3, seed=1)):
        save_rgb(pool / f"p{k}.jpg", image)
    save_rgb(pool / "sub" / "s.jpg", crops(photos["chelsea"], 1, seed=2)[0])
    src = tmp_path / "src"
    for k, image in enumerate(crops(photos["coffee"], 2, seed=3)):
        save_rgb(src / "c" / f"c{k}.jpg", image)
    for name, target in (("a", pool), ("b", pool), ("d", pool / "sub")):
        os.symlink(target, src / name)
    scan = scan_image_folder(src)
    assert scan.classes == ["a", "c"] and scan.counts() == {"a": 4, "c": 2}
    assert {(s.rel, s.reason) for s in scan.skipped} == {
        ("b", "class folder link leads into the class folder 'a': not followed"),
        ("d", "class folder link leads into the class folder 'a': not followed")}
    assert inspect_folder(src)["counts"] == {"a": 4, "c": 2}


def test_a_truncated_bmp_and_a_corrupt_png_are_named_once_and_opencv_stays_silent(tmp_path: Path, photos, capfd):
    src = tmp_path / "src"
    for k, image in enumerate(crops(photos["chelsea"], 3, seed=1)):
        save_rgb(src / "cat" / f"c{k}.jpg", image)
    # a BMP header claiming 900x900 pixels with none behind it: it passed the scan, then OpenCV logged
    # "[ERROR:0@1.9] global loadsave.cpp ... Unexpected end of input" once per row that tried to decode it
    header = struct.pack("<IiiHHIIiiII", 40, 900, 900, 1, 24, 0, 0, 2835, 2835, 0, 0)
    (src / "cat" / "cut.bmp").write_bytes(b"BM" + struct.pack("<IHHI", 54 + 900 * 2700, 0, 0, 54) + header)
    png = bytearray(cv2.imencode(".png", crops(photos["coffee"], 1, seed=2)[0])[1].tobytes())
    at = png.index(b"IDAT") + 40
    png[at:at + 200] = bytes(200)  # corrupt pixels, an intact end: only decoding finds out
    (src / "cat" / "bad.png").write_bytes(bytes(png))
    summary = expand(src, tmp_path / "out", {"copies": 2, "output": {"size": 32}}, workers=1)
    reasons = {s["file"]: s["reason"] for s in summary["skipped"]}
    assert reasons["cat/cut.bmp"].startswith("truncated BMP") and "cat/bad.png" in reasons
    assert summary["images_in"] == 3 and summary["images_out"] == 9
    assert "[ERROR" not in capfd.readouterr().err


def test_a_source_that_fails_to_decode_is_tried_once_per_worker(tmp_path: Path, photos, monkeypatch):
    # each of its rows (copies, the mixes it is first or partner in) decoded it again, twice for a failed row
    import augexpand.rows

    src = tmp_path / "src"
    for k, image in enumerate(crops(photos["chelsea"], 4, seed=1)):
        save_rgb(src / "cat" / f"c{k}.jpg", image)
    png = bytearray(cv2.imencode(".png", crops(photos["coffee"], 1, seed=2)[0])[1].tobytes())
    at = png.index(b"IDAT") + 40
    png[at:at + 200] = bytes(200)
    (src / "cat" / "bad.png").write_bytes(bytes(png))
    real, tried = augexpand.rows.decode_image, []

    def counting(path, *args, **kwargs):
        tried.append(Path(path).name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(augexpand.rows, "decode_image", counting)
    summary = expand(src, tmp_path / "out", {"copies": 3, "mix": {"mixup": {"count": 2}}, "output": {"size": 32}},
                     workers=1)
    assert [s["file"] for s in summary["skipped"]] == ["cat/bad.png"]
    assert tried.count("bad.png") == 1


def test_inspect_passes_over_the_same_entries(hostile_src: Path, tmp_path: Path):
    report = inspect_folder(hostile_src)
    assert report["counts"] == {"%FF%FEclass": 2, "cat": 8, "dog": 3, "metadata.jsonl": 2}  # by extension
    assert {p["file"] for p in report["passed_over"]} == {"cat/p.jpg", "cat/loop", "cat/loop2", "cat/up"}
    result = CliRunner().invoke(cli, ["inspect", str(hostile_src), "--json"])
    assert result.exit_code == 0, result.output
    assert '"猫' not in result.output and "%FF%FEclass" in result.output  # names as they are, bytes as %XX
    result = CliRunner().invoke(cli, ["inspect", str(hostile_src), "--plot", str(hostile_src / "cat" / "plot.png")])
    assert result.exit_code == 1
    assert "Error: the chart" in result.output and "never written to" in result.output
    assert not (hostile_src / "cat" / "plot.png").exists()


def test_inspect_json_keeps_non_ascii_names(tmp_path: Path, photos):
    save_rgb(tmp_path / "src" / "猫" / "a.jpg", crops(photos["chelsea"], 1, seed=1)[0])
    result = CliRunner().invoke(cli, ["inspect", str(tmp_path / "src"), "--json"])
    assert result.exit_code == 0
    assert '"猫": 1' in result.output


def test_a_float_tiff_skipped_when_decoded_is_not_counted_as_converted_and_decoders_stay_quiet(
        tmp_path: Path, photos):
    import subprocess

    from PIL import Image

    src = tmp_path / "src"
    for k, image in enumerate(crops(photos["chelsea"], 2, seed=1)):
        save_rgb(src / "cat" / f"c{k}.jpg", image)
    Image.fromarray(np.linspace(0, 1, 600, dtype=np.float32).reshape(20, 30)).save(src / "cat" / "float.tif")
    (tmp_path / "r.yaml").write_text("copies: 0\noutput: {size: 16}\n")
    done = subprocess.run([sys.executable, "-m", "augexpand", "expand", "-r", str(tmp_path / "r.yaml"), "-w", "1",
                           "--json", str(src), str(tmp_path / "dst")], capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert [s["file"] for s in summary["skipped"]] == ["cat/float.tif"]
    assert "OpenCV cannot decode it" in summary["skipped"][0]["reason"]
    assert summary["converted_to_rgb8"] == {}  # the float TIFF was not converted: it was skipped
    assert summary["counts"]["train"] == {"cat": 2}
    # not a source image either: the counts, the imbalance and the card hold the two readable photos
    assert summary["counts"]["source"] == summary["counts"]["train_sources"] == {"cat": 2}
    assert summary["images_in"] == 2
    card = json.loads((tmp_path / "dst" / "dataset.json").read_text())
    assert card["counts"]["source"] == {"cat": 2} and card["images_in"] == 2
    # one line naming the file, and no TIFF warning from OpenCV itself
    assert done.stderr.splitlines() == [f"warning: skipped cat/float.tif: {summary['skipped'][0]['reason']}"]


# --------------------------------------------------------------------------------------------------------------
# Property-based: a file name of any bytes a file system allows gives a safe, unique output name inside dst.

_NAME_BYTES = st.binary(min_size=1, max_size=251).filter(
    lambda b: b"/" not in b and b"\0" not in b and not b.startswith(b"."))
_TINY_JPEG = cv2.imencode(".jpg", np.full((8, 8, 3), 128, np.uint8))[1].tobytes()


@settings(max_examples=40, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(st.lists(_NAME_BYTES, min_size=1, max_size=6, unique_by=lambda b: b.lower()),
       st.sampled_from(["augment", "mixup", "samplepairing"]))
def test_names_of_any_bytes_give_safe_unique_outputs_inside_dst(names, op):
    import tempfile

    from augexpand.plan import make_plan
    from augexpand.recipe import load_recipe

    with tempfile.TemporaryDirectory() as tmp:
        folder = os.path.join(os.fsencode(tmp), b"src", b"c\xffat")
        os.makedirs(folder)
        for name in names:
            with open(os.path.join(folder, name + b".jpg"), "wb") as f:
                f.write(_TINY_JPEG)
        scan = scan_image_folder(Path(tmp) / "src")
        assert len(scan.sources) == len(names)
        recipe = load_recipe({"copies": 2 if op == "augment" else 0, "mix": {op: {"count": 2}} if op != "augment"
                              else {}, "output": {"size": 8}})
        plan = make_plan(scan, recipe)
        dst = Path(tmp) / "dst"
        outputs = [f"{scan.classes[r.label]}/{r.name}" for r in plan.rows]
        assert len({o.lower() for o in outputs}) == len(outputs)  # unique, even on a case-insensitive disk
        for out in outputs:
            folder_name, name = out.split("/")
            assert folder_name == "c%FFat"
            assert 0 < len(name.encode("utf-8")) <= 200  # room for a temporary name's prefix and suffix
            assert not name.startswith(".") and "/" not in name and "\0" not in name
            assert name.isprintable() and name == name.strip()
            assert (dst / "train" / out).resolve().parent == (dst / "train" / folder_name).resolve()


def test_opencv_gets_the_pixel_limit_before_it_loads(tmp_path: Path):
    import subprocess

    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((20, 30, 3), np.uint8))  # 600 pixels
    code = ("import os, sys\n"
            "from augexpand.folder import decode_image, limit_opencv_pixels\n"
            "from augexpand.errors import ImageReadError\n"
            "limit_opencv_pixels(int(sys.argv[2]))\n"
            "try:\n"
            "    print(decode_image(sys.argv[1]).shape)\n"
            "except ImageReadError as exc:\n"
            "    print('refused', exc)\n")
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_IO_MAX_IMAGE_PIXELS"}
    for limit, words in ((599, "refused its header claims more pixels than the limit of 599 pixels"),
                         (600, "(20, 30, 3)"),
                         (10**20, "(20, 30, 3)")):  # as good as no limit: OpenCV aborted ("stoull": out of range)
        done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "a.png"), str(limit)], env=env,
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.stdout.startswith(words), (done.stdout, done.stderr)
        assert done.stderr == ""  # OpenCV's own complaint stays out of stderr
