"""Scaled JPEG decoding: the scale each source gets, its pixels (upright, converted, close to an ideal resize), and
the same bytes for any number of workers."""

from __future__ import annotations

import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from augexpand.decodescale import decode_scales, source_need
from augexpand.expansion import expand
from augexpand.folder import Source, decode_image
from augexpand.manifest import read_metadata
from augexpand.recipe import load_recipe, resolve_output
from augexpand.rows import RowContext, RowMaker
from tests.conftest import psnr, tree_digest

REDUCED = {1: cv2.IMREAD_COLOR_RGB, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
           8: cv2.IMREAD_REDUCED_COLOR_8}


def jpeg_bytes(image: np.ndarray, orientation: int = 1, quality: int = 92, mode: str = "RGB") -> bytes:
    pil = Image.fromarray(image).convert(mode)
    exif = pil.getexif()
    if orientation != 1:
        exif[0x0112] = orientation
    buf = io.BytesIO()
    pil.save(buf, "JPEG", quality=quality, exif=exif.tobytes())
    return buf.getvalue()


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    from skimage import data

    return data.astronaut()  # a real 512x512 photo, full of detail


@pytest.fixture
def camera_src(tmp_path: Path) -> Path:
    """Six ~2000x1500 JPEGs made from real photos (upscaled, with sensor-like grain), in two classes."""
    from skimage import data

    rng = np.random.default_rng(0)
    grain = rng.integers(-4, 5, size=(1500, 2000, 3), dtype=np.int16)  # sensor-like noise, costly to decode
    root = tmp_path / "camera"
    for cls, photo in (("cat", data.chelsea()), ("coffee", data.coffee())):
        (root / cls).mkdir(parents=True)
        for k in range(3):
            h, w = photo.shape[:2]
            crop = photo[k * 10:h - k * 10, k * 15:w - k * 15]
            big = cv2.resize(crop, (2000, 1500), interpolation=cv2.INTER_LINEAR) + np.roll(grain, 7 * k, axis=0)
            big = cv2.cvtColor(np.clip(big, 0, 255).astype(np.uint8), cv2.COLOR_RGB2BGR)
            assert cv2.imwrite(str(root / cls / f"{cls}{k}.jpg"), big, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return root


def source(width: int, height: int, fmt: str = "JPEG") -> Source:
    return Source("c/x.jpg", 0, "x", "RGB", width, height, fmt)


@pytest.mark.parametrize("recipe, overrides, expected", [
    # RandomResizedCrop scale (0.5, 1): its smallest crop of a 1/8 decode (504x378) is still 267 px >= 224.
    ("light", {}, 8),
    # heavy's crop keeps half the area at a ratio within 0.8-1.25: at 1/8 its smallest crop is still >= 224 px.
    ("heavy", {}, 8),
    # scale (0.35, 1): at 1/8 the smallest crop is 224 * 0.998 px: one step less, 1/4.
    ("light", {"pipeline": [{"RandomResizedCrop": {"size": "output", "scale": [0.35, 1.0]}}]}, 4),
    # native size: every pixel of the source is an output pixel.
    ("light", {"output.size": None, "pipeline": []}, 1),
    # a transform with sizes in pixels before any resize sees the source as it is.
    ("light", {"pipeline": [{"GaussianBlur": {"blur_limit": [3, 7], "p": 1.0}},
                            {"RandomResizedCrop": {"size": [224, 224]}}]}, 1),
    # a resize applied only sometimes: the other times the pipeline runs on the source itself.
    ("light", {"pipeline": [{"RandomResizedCrop": {"size": [224, 224], "p": 0.5}}]}, 1),
    # only flips and colour, then fit_to_size: the decoded image needs the output size on both sides.
    ("light", {"pipeline": [{"HorizontalFlip": {"p": 0.5}}]}, 8),
    ("light", {"pipeline": [], "output.size": 512}, 4),
])
def test_scale_rule_for_a_camera_photo(recipe: str, overrides: dict, expected: int):
    r = resolve_output(load_recipe(recipe, overrides))  # `size: auto` at its nominal 224x224
    assert decode_scales([source(4032, 3024)], r) == [expected]


def test_scale_rule_follows_the_header_and_format():
    r = resolve_output(load_recipe("light", {"copies": 1}))
    sources = [source(4032, 3024), source(3024, 4032), source(500, 375), source(4032, 3024, "PNG"),
               source(2000, 1500), source(224, 224)]
    assert decode_scales(sources, r) == [8, 8, 1, 1, 4, 1]
    assert source_need(load_recipe("light", {"output.size": None})) is None
    assert source_need(load_recipe("light")) is None  # `auto` not resolved yet: nothing to base a scale on


def test_exif_rotated_photo_is_upright_at_every_scale(astronaut: np.ndarray):
    data = jpeg_bytes(astronaut[:384], orientation=6)  # stored 512 wide, 384 high; shown rotated clockwise
    upright = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    assert upright.shape == (512, 384, 3)
    for scale in (1, 2, 4, 8):
        image = decode_image(data, scale)
        assert image.shape == (512 // scale, 384 // scale, 3)
        reference = cv2.resize(upright, (384 // scale, 512 // scale), interpolation=cv2.INTER_AREA)
        assert psnr(image, reference) > 30, scale  # a wrong orientation scores ~12 dB
        # OpenCV (the fallback) gives the same pixels, orientation included.
        opencv = cv2.imdecode(np.frombuffer(data, np.uint8), REDUCED[scale])
        opencv = opencv if scale == 1 else cv2.cvtColor(opencv, cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(image, opencv)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_matches_pillow(astronaut: np.ndarray, orientation: int):
    data = jpeg_bytes(astronaut[:256, :320], orientation=orientation, quality=95)
    upright = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    np.testing.assert_array_equal(decode_image(data), upright)


@pytest.mark.parametrize("count", [2, 0xFFFFFFFF])
def test_a_bogus_orientation_count_gives_the_scan_the_size_the_decoders_make(astronaut, tmp_path, count):
    # Pillow drops an orientation entry whose count is not 1; libjpeg-turbo's path and OpenCV read its value (6):
    # the scan recorded 320x256 for a 256x320 image (size: auto, decode scales and the cache budget used it).
    import struct

    from augexpand.folder import probe_image
    from tests.helpers_exif import exif_block, with_exif

    tiff = bytearray(exif_block(6))
    tiff[14:18] = struct.pack("<I", count)  # IFD0 at 8: entry count (2), then tag (2), type (2), count (4)
    path = tmp_path / "bogus.jpg"
    path.write_bytes(with_exif(cv2.imencode(".jpg", astronaut[:256, :320])[1].tobytes(), bytes(tiff)))
    _, width, height, _ = probe_image(path)
    assert decode_image(path).shape[:2] == (height, width) == (320, 256)
    assert cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR).shape[:2] == (320, 256)


def test_cmyk_and_grayscale_jpegs_and_16bit_png_still_convert(astronaut: np.ndarray, tmp_path: Path):
    cmyk = jpeg_bytes(astronaut, mode="CMYK")
    gray = jpeg_bytes(astronaut, mode="L")
    for scale in (1, 4):
        image = decode_image(cmyk, scale)
        assert image.shape == (512 // scale, 512 // scale, 3) and image.dtype == np.uint8
        reference = cv2.resize(np.asarray(Image.open(io.BytesIO(cmyk)).convert("RGB")), image.shape[1::-1],
                               interpolation=cv2.INTER_AREA)
        assert psnr(image, reference) > 25
        g = decode_image(gray, scale)
        assert g.shape == (512 // scale, 512 // scale, 3)
        assert (g[..., 0] == g[..., 1]).all() and (g[..., 1] == g[..., 2]).all()
    deep = (astronaut[..., 0].astype(np.uint16) * 257)
    assert cv2.imwrite(str(tmp_path / "deep.png"), deep)
    assert Image.open(tmp_path / "deep.png").mode.startswith("I;16")
    image = decode_image(tmp_path / "deep.png")
    assert image.dtype == np.uint8 and image.shape == (512, 512, 3)
    np.testing.assert_array_equal(image[..., 1], astronaut[..., 0])


@pytest.mark.parametrize("op, pipeline", [
    ("original", []),  # fit_to_size: a full decode is area-averaged (INTER_AREA) to 64x64
    ("augment", [{"Resize": {"height": 64, "width": 64}}]),  # bilinear, as albumentations resizes
])
def test_scaled_outputs_are_as_good_as_full_decoding(astronaut: np.ndarray, tmp_path: Path, op: str, pipeline):
    """64x64 outputs of a real 512x512 photo from its 1/8 decode (64x64 itself) and from its full decode, against
    an area-averaged resize of the full decode (the alias-free reference)."""
    from augexpand.plan import Row

    (tmp_path / "src" / "a").mkdir(parents=True)
    (tmp_path / "src" / "a" / "astronaut.jpg").write_bytes(jpeg_bytes(astronaut))
    ideal = cv2.resize(decode_image(tmp_path / "src" / "a" / "astronaut.jpg"), (64, 64), interpolation=cv2.INTER_AREA)
    recipe = load_recipe("light", {"output.size": 64, "copies": 1, "pipeline": pipeline})
    assert decode_scales([source(512, 512)], recipe) == [8]
    quality = {}
    for scale in (1, 8):
        maker = RowMaker(RowContext(str(tmp_path / "src"), "", ["a/astronaut.jpg"], [0], ["a"], recipe, (scale,)))
        image, _, _ = maker.make_image(Row(0, op, 0, (0,), "x.jpg"))
        quality[scale] = psnr(image, ideal)
    assert quality[8] > 45  # measured 51 dB
    if op == "augment":  # bilinear shrinking of the full decode aliases: the scaled decode is closer to the ideal
        assert quality[8] > quality[1] + 5


def test_scaled_decoding_same_bytes_and_scales_for_any_worker_count(camera_src: Path, tmp_path: Path):
    overrides = {"copies": 2, "mix": {"mixup": {"count": 1.0}}}
    summaries = {w: expand(camera_src, tmp_path / f"w{w}", "light", overrides=overrides, workers=w)
                 for w in (1, 2)}
    # 2000x1500 for 224x224 after a crop of at least half the area: 1/4 (500x375) for every source.
    assert summaries[1]["decode_scales"] == summaries[2]["decode_scales"] == {"4": 6}
    assert tree_digest(tmp_path / "w1" / "train") == tree_digest(tmp_path / "w2" / "train")
    card = json.loads((tmp_path / "w1" / "dataset.json").read_text())
    assert card["decode_scales"] == {"4": 6}
    records = read_metadata(tmp_path / "w1" / "train" / "metadata.jsonl")
    assert len(records) == 6 * (1 + 2 + 1)
    image = decode_image(tmp_path / "w1" / "train" / records[0]["file_name"])
    assert image.shape == (224, 224, 3)


def _sigterm_is_default(_: object) -> bool:
    import signal

    return signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_probe_pool_workers_do_not_inherit_the_parents_sigterm_handler():
    """The scan's short-lived pool is ended with SIGTERM: a worker running expand's handler (inherited by the fork)
    printed 'stopped by SIGTERM' after every scan of 500+ files with --workers 2."""
    import signal

    from augexpand.executors import probe_map

    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        assert probe_map(2, min_items=1)(_sigterm_is_default, [0, 1, 2, 3]) == [True] * 4
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_cli_says_how_many_sources_were_decoded_smaller(camera_src: Path, tmp_path: Path):
    from click.testing import CliRunner

    from augexpand.cli import cli

    result = CliRunner().invoke(cli, ["expand", str(camera_src), str(tmp_path / "out"), "--copies", "1",
                                      "--workers", "1", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "decoded at reduced scale: 6 at 1/4" in result.output
    result = CliRunner().invoke(cli, ["expand", str(camera_src), str(tmp_path / "out"), "--copies", "1",
                                      "--workers", "1", "--dry-run", "--size", "1500"])
    assert result.exit_code == 0, result.output
    assert "reduced scale" not in result.output  # 1500x1500 from 2000x1500: every pixel is needed


_FORK_AFTER_OPENCV = """
import multiprocessing as mp
import sys
import numpy as np, cv2
from augexpand.executors import fork_safe_opencv


def init():  # what each worker does as it starts (RowMaker)
    cv2.setNumThreads(1)


def work(i):
    return int(cv2.resize(np.full((2000, 2000, 3), i, np.uint8), (16, 16), interpolation=cv2.INTER_AREA).sum())


big = np.random.default_rng(0).integers(0, 255, (3000, 4000, 3), dtype=np.uint8)
for _ in range(4):
    for _ in range(20):  # what a planning pass does in the parent: OpenCV's thread pool runs
        cv2.resize(big, (16, 16), interpolation=cv2.INTER_AREA)
        cv2.cvtColor(big, cv2.COLOR_RGB2GRAY)
    print("fork", cv2.getNumThreads(), flush=True)
    if sys.argv[1] == "safe":
        with fork_safe_opencv():
            pool = mp.get_context("fork").Pool(2, initializer=init)
    else:
        pool = mp.get_context("fork").Pool(2, initializer=init)
    assert pool.map(work, range(4)) == [0, 768, 1536, 2304]
    pool.close()
    pool.join()
print("ok")
"""


def test_worker_pool_forked_after_opencv_threads_starts():
    """A parent that ran parallel OpenCV calls (orientation thumbnails, SMOTE descriptors), then forked a pool,
    hung: the workers' cv2.setNumThreads(1) waited for the parent's OpenCV threads, which a fork does not copy
    (this script hung in 3 of 4 runs without fork_safe_opencv, which LocalExecutor and probe_map fork under)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _FORK_AFTER_OPENCV, "safe"], check=False, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("order", ["<", ">"])
def test_the_exif_thumbnail_of_a_camera_file_is_read_upright(astronaut: np.ndarray, orientation: int, order: str):
    from augexpand.folder import exif_thumbnail
    from tests.helpers_exif import camera_jpeg

    photo = cv2.resize(astronaut, (1200, 800), interpolation=cv2.INTER_CUBIC)  # stored 3:2, 160x107 thumbnail
    data = camera_jpeg(photo, orientation=orientation, order=order)
    upright = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    h, w = upright.shape[:2]
    thumb = exif_thumbnail(data[:65540], w, h, min_side=32)
    assert thumb is not None and thumb.shape[:2] == ((107, 160) if w > h else (160, 107))
    reference = cv2.resize(upright, (thumb.shape[1], thumb.shape[0]), interpolation=cv2.INTER_AREA)
    assert psnr(thumb, reference) > 25  # a wrong orientation scores ~12 dB


def test_an_exif_thumbnail_of_another_shape_or_too_small_is_not_used(astronaut: np.ndarray):
    from augexpand.folder import exif_thumbnail
    from tests.helpers_exif import camera_jpeg

    photo = cv2.resize(astronaut, (1200, 800), interpolation=cv2.INTER_CUBIC)
    padded = np.zeros((120, 160, 3), np.uint8)  # a 3:2 photo's thumbnail padded to 4:3, as some cameras write
    padded[7:113] = cv2.resize(photo, (160, 106), interpolation=cv2.INTER_AREA)
    assert exif_thumbnail(camera_jpeg(photo, thumbnail=padded)[:65540], 1200, 800, min_side=32) is None
    assert exif_thumbnail(camera_jpeg(photo, thumb_side=40)[:65540], 1200, 800, min_side=32) is None  # 40x27
    assert exif_thumbnail(jpeg_bytes(photo, orientation=6), 800, 1200, min_side=32) is None  # EXIF, no thumbnail
    assert exif_thumbnail(jpeg_bytes(photo)[:65540], 1200, 800, min_side=32) is None


def test_the_orientation_test_reads_a_large_photo_from_its_exif_thumbnail(astronaut: np.ndarray, tmp_path: Path):
    from augexpand.orientation import THUMB_SIDE, thumbnail
    from tests.helpers_exif import camera_jpeg

    photo = cv2.resize(astronaut, (2048, 2048), interpolation=cv2.INTER_CUBIC)
    marked = cv2.resize(photo[:, ::-1], (160, 160), interpolation=cv2.INTER_AREA)  # a mirrored thumbnail: traceable
    path = tmp_path / "cam.jpg"
    path.write_bytes(camera_jpeg(photo, thumbnail=marked))
    expected = cv2.resize(cv2.cvtColor(marked, cv2.COLOR_RGB2GRAY), (THUMB_SIDE, THUMB_SIDE),
                          interpolation=cv2.INTER_AREA).astype(np.float32)
    np.testing.assert_allclose(thumbnail(path, 8, (2048, 2048)), expected, atol=3)  # the thumbnail's JPEG loss
    decoded = thumbnail(path, 8)  # without the photo's size (or below 1/8 scale): its pixels, decoded
    assert np.abs(decoded - expected).mean() > 10
    plain = tmp_path / "plain.jpg"
    plain.write_bytes(jpeg_bytes(photo))
    np.testing.assert_array_equal(thumbnail(plain, 8, (2048, 2048)), thumbnail(plain, 8))


def test_the_orientation_test_hands_its_decodes_to_the_rows(camera_src: Path, tmp_path: Path, monkeypatch):
    import augexpand.expansion
    import augexpand.folder
    import augexpand.rows

    overrides = {"copies": 1, "keep_originals": False, "output.size": 96}  # 2000x1500 photos, decoded at 1/8
    calls = []
    real = augexpand.folder.decode_image

    def counting(source, reduced=1):
        calls.append((Path(source).name, reduced))
        return real(source, reduced)

    monkeypatch.setattr(augexpand.folder, "decode_image", counting)  # the orientation test's thumbnails
    monkeypatch.setattr(augexpand.rows, "decode_image", counting)  # the rows
    one = expand(camera_src, tmp_path / "one", "light", overrides=overrides, workers=1)
    assert one["decode_scales"] == {"8": 6} and one["orientation"]["images"] == 6
    assert sorted(calls) == sorted({(f"{c}{k}.jpg", 8) for c in ("cat", "coffee") for k in range(3)})  # once each
    calls.clear()
    monkeypatch.setattr(augexpand.expansion, "KEEP_BYTES", 0)  # nothing kept: each photo decoded twice
    two = expand(camera_src, tmp_path / "two", "light", overrides=overrides, workers=1)
    assert len(calls) == 12 and two["orientation"] == one["orientation"]
    monkeypatch.undo()
    pool = expand(camera_src, tmp_path / "pool", "light", overrides=overrides, workers=2)  # forked: shared
    digests = [tree_digest(tmp_path / run / "train") for run in ("one", "two", "pool")]
    assert digests[0] == digests[1] == digests[2] and len(digests[0]) == 7  # 6 images and the manifest
    assert pool["orientation"] == one["orientation"]


def test_min_side_decodes_a_jpeg_at_the_largest_scale_that_keeps_it(astronaut: np.ndarray):
    from augexpand.folder import jpeg_scale

    big = cv2.resize(astronaut, (1536, 1024), interpolation=cv2.INTER_LINEAR)  # a real photo, 3:2
    data = jpeg_bytes(big)
    assert [jpeg_scale(1024, 1536, s) for s in (64, 128, 129, 256, 257, 512, 513)] == [8, 8, 4, 4, 2, 2, 1]
    for min_side, shape in ((100, (128, 192)), (200, (256, 384)), (600, (1024, 1536))):
        image = decode_image(data, min_side=min_side)
        assert image.shape[:2] == shape and min(shape) >= min_side
        reference = cv2.resize(decode_image(data), shape[::-1], interpolation=cv2.INTER_AREA)
        assert psnr(image, reference) > 30  # the DCT-domain reduction is an area-like average of the photo
    # EXIF orientation is applied at the reduced scale too (stored 1536 wide, shown 1024 wide)
    rotated = decode_image(jpeg_bytes(big, orientation=6), min_side=100)
    assert rotated.shape[:2] == (192, 128)
    assert psnr(rotated, cv2.rotate(decode_image(data, 8), cv2.ROTATE_90_CLOCKWISE)) > 30
    # other formats decode at their full size: nothing to reduce in the codec
    png = cv2.imencode(".png", cv2.cvtColor(big[:256, :384], cv2.COLOR_RGB2BGR))[1].tobytes()
    assert decode_image(png, min_side=32).shape[:2] == (256, 384)


@pytest.mark.parametrize("ours", [False, True])
def test_only_the_command_line_points_stderr_away_while_opencv_decodes(photos, monkeypatch, ours):
    """fd 2 is the whole process's: the library leaves it alone (another thread of the user's program may be
    writing to it); the command line (``QUIET_NATIVE_STDERR``) points it at /dev/null for each decode, one thread at
    a time, and puts it back."""
    import os
    import threading

    from augexpand import folder
    from augexpand.errors import ImageReadError

    monkeypatch.setattr(folder, "QUIET_NATIVE_STDERR", ours)
    png = bytearray(cv2.imencode(".png", photos["coffee"][:40, :48])[1].tobytes())
    at = png.index(b"IDAT") + 40
    png[at:at + 200] = bytes(200)  # damaged pixels: libpng complains on fd 2
    calls, real = [], os.dup2
    monkeypatch.setattr(os, "dup2", lambda a, b, *rest: (calls.append(b), real(a, b, *rest))[1])
    before = os.fstat(2)

    def decode_many():
        for _ in range(20):
            with pytest.raises(ImageReadError):
                decode_image(bytes(png))

    threads = [threading.Thread(target=decode_many) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (len(calls) == 2 * 4 * 20) if ours else calls == []
    after = os.fstat(2)
    assert (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino)  # stderr is where it was
