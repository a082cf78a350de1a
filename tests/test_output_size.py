"""Data-aware sizes: `size: auto` follows the training sources' median short side, `output` sizes inside the
pipeline follow the output size, an explicit size is honoured, and dataset.json records both."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from augexpand import expand
from augexpand.errors import RecipeError
from augexpand.folder import decode_image
from augexpand.recipe import AutoSize, load_recipe, resolve_output, resolve_sizes
from tests.conftest import save_rgb


@pytest.fixture
def digits_src(tmp_path: Path) -> Path:
    """Real handwritten digits (scikit-learn), 3 classes x 4, upscaled from 8x8 to 32x32 PNGs."""
    import cv2
    from sklearn.datasets import load_digits

    digits = load_digits()
    root = tmp_path / "digits"
    for label in range(3):
        for k, i in enumerate(np.flatnonzero(digits.target == label)[:4]):
            gray = cv2.resize((digits.images[i] * 16).clip(0, 255).astype(np.uint8), (32, 32),
                              interpolation=cv2.INTER_NEAREST)
            save_rgb(root / str(label) / f"d{k}.png", np.dstack([gray] * 3))
    return root


@pytest.fixture
def photo_src(tmp_path: Path) -> Path:
    """Real photos at 500x375 (width x height), as a camera folder would have them: 2 classes x 2."""
    from sklearn.datasets import load_sample_images

    root = tmp_path / "photos"
    for name, image in zip(("china", "flower"), load_sample_images().images):  # 427x640 each
        for k, x in enumerate((0, 140)):
            save_rgb(root / name / f"{name}{k}.jpg", np.ascontiguousarray(image[20:395, x:x + 500]), quality=90)
    return root


def _shapes(dst: Path) -> set[tuple[int, ...]]:
    return {decode_image(p).shape for p in (dst / "train").rglob("*") if p.suffix in (".jpg", ".png")}


def test_auto_keeps_32px_digits_at_32_and_records_the_sizes_in_the_card(digits_src: Path, tmp_path: Path):
    summary = expand(digits_src, tmp_path / "out", "light", workers=1)
    assert _shapes(tmp_path / "out") == {(32, 32, 3)} and summary["images_out"] == 36  # 12 + 2 copies each
    card = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert card["output_size"] == summary["output_size"] == [32, 32]
    assert card["source_sizes"] == {"count": 12, "short_side": {"min": 32, "median": 32, "max": 32},
                                    "width": {"median": 32}, "height": {"median": 32}}
    assert card["recipe"]["output"]["size"] == [32, 32]  # the resolved recipe: a concrete size, not auto
    crop = card["recipe"]["pipeline"]["transform"]["transforms"][0]
    assert crop["__class_fullname__"] == "RandomResizedCrop" and crop["size"] == [32, 32]  # size: output
    assert any(note.startswith("output size auto: 32x32") for note in card["notes"])


def test_auto_makes_500x375_photos_224(photo_src: Path, tmp_path: Path):
    summary = expand(photo_src, tmp_path / "out", "light", overrides={"copies": 1}, workers=1)
    assert _shapes(tmp_path / "out") == {(224, 224, 3)} and summary["output_size"] == [224, 224]
    assert summary["source_sizes"]["short_side"] == {"min": 375, "median": 375, "max": 375}
    assert summary["source_sizes"]["width"] == {"median": 500} and summary["source_sizes"]["height"] == {"median": 375}


def test_auto_follows_the_training_sources_only(tmp_path: Path, photos):
    # Two classes of three images (short sides 24, 24 and 60); the validation split holds one of each class
    # out, and the median is over the four training images only.
    import cv2

    root = tmp_path / "src"
    for name, photo in (("a", "coffee"), ("b", "rocket")):
        for k, (w, h) in enumerate(((30, 24), (24, 40), (80, 60))):
            save_rgb(root / name / f"{k}.png", cv2.resize(photos[photo], (w, h)))
    summary = expand(root, tmp_path / "out", {"output": {"size": "auto", "format": "png"}}, val_fraction=0.34,
                     workers=1)
    val_records = (tmp_path / "out" / "val" / "metadata.jsonl").read_text().splitlines()
    held_out = {json.loads(line)["sources"][0] for line in val_records}
    train = [p for p in root.rglob("*.png") if p.relative_to(root).as_posix() not in held_out]
    assert len(held_out) == 2 and len(train) == summary["source_sizes"]["count"] == 4
    shorts = sorted(min(decode_image(p).shape[:2]) for p in train)
    median = shorts[(len(shorts) - 1) // 2]  # the lower median: a size one of the images has
    assert summary["source_sizes"]["short_side"] == {"min": shorts[0], "median": median, "max": shorts[-1]}
    assert summary["output_size"] == [median, median]
    assert {decode_image(p).shape[:2] for p in (tmp_path / "out" / "train").rglob("*.png")} == {(median, median)}


def test_an_explicit_size_is_honoured_even_above_the_median(digits_src: Path, tmp_path: Path):
    summary = expand(digits_src, tmp_path / "out", "light", overrides={"output.size": [48, 64], "copies": 1},
                     workers=1)
    assert summary["output_size"] == [48, 64] and _shapes(tmp_path / "out") == {(48, 64, 3)}
    card = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert card["recipe"]["pipeline"]["transform"]["transforms"][0]["size"] == [48, 64]


def test_auto_with_a_nominal_size_of_its_own_scales_down_keeping_its_aspect(digits_src: Path, tmp_path: Path):
    recipe = load_recipe({"output": {"size": {"auto": [96, 128]}}})
    assert recipe.output.size == AutoSize(auto=(96, 128))
    from augexpand.folder import scan_image_folder

    assert resolve_output(recipe, scan_image_folder(digits_src)).output.size == (32, 43)
    assert resolve_output(recipe).output.size == (96, 128)  # no images (validate): the nominal size


def test_native_size_with_output_references_follows_each_image(tmp_path: Path, photos):
    root = tmp_path / "src"
    save_rgb(root / "a" / "wide.png", np.ascontiguousarray(photos["coffee"][:40, :64]))
    save_rgb(root / "a" / "tall.png", np.ascontiguousarray(photos["rocket"][:50, :30]))
    recipe = {"copies": 2, "pipeline": [{"RandomResizedCrop": {"size": "output", "scale": [0.5, 1.0]}}],
              "output": {"size": None, "format": "png"}}
    summary = expand(root, tmp_path / "out", recipe, workers=1)
    assert summary["output_size"] is None
    for p in (tmp_path / "out" / "train" / "a").glob("*.png"):
        expected = (40, 64) if p.name.startswith("wide") else (50, 30)
        assert decode_image(p).shape[:2] == expected, p.name


def test_native_size_follows_an_image_wider_than_a_recipe_number_may_be(tmp_path: Path, photos):
    # A panorama (or a 61-megapixel camera photo) is over 8192 px on a side: its `output` sizes failed the bound
    # that protects against a recipe's own numbers, and with it the whole run ("2 of 10 images could not be made").
    root = tmp_path / "src"
    save_rgb(root / "a" / "photo.png", np.ascontiguousarray(photos["coffee"][:40, :64]))
    save_rgb(root / "a" / "panorama.png", np.tile(np.ascontiguousarray(photos["coffee"][:24, :100]), (1, 90, 1)))
    recipe = {"copies": 1, "pipeline": [{"RandomResizedCrop": {"size": "output", "scale": [0.5, 1.0]}}],
              "output": {"size": None, "format": "png"}}
    summary = expand(root, tmp_path / "out", recipe, workers=1)
    assert summary["images_out"] == 4 and not summary["skipped"]
    assert decode_image(tmp_path / "out" / "train" / "a" / "panorama__augment_0.png").shape[:2] == (24, 9000)
    with pytest.raises(RecipeError, match="size = 9000 is out of range"):  # a recipe's own number still is not
        load_recipe({"pipeline": [{"RandomResizedCrop": {"size": [24, 9000]}}]})


def test_a_native_image_too_wide_for_the_format_is_skipped_by_name_and_opencv_stays_quiet(tmp_path, photos, capfd):
    root = tmp_path / "src"
    save_rgb(root / "a" / "photo.png", np.ascontiguousarray(photos["coffee"][:40, :64]))
    save_rgb(root / "a" / "strip.png", np.zeros((2, 20000, 3), np.uint8))  # WebP holds at most 16383 a side
    summary = expand(root, tmp_path / "out", {"copies": 0, "output": {"size": None, "format": "webp"}}, workers=1)
    assert summary["images_out"] == 1
    assert summary["skipped"] == [{"file": "a/strip.png", "reason": "a 2x20000 image cannot be written as webp (at "
                                                                    "most 16383 pixels a side; png has no such limit)"}]
    assert "imencode" not in capfd.readouterr().err  # OpenCV's own error lines, once per row


def test_a_thin_strip_fits_the_output_size_in_bounded_memory(photos):
    # fit_to_size scaled the short side first: a 1x65535 strip (a legal 196 KB PNG) became 224 x 14.7 million
    # pixels before the centre crop, a 9.9 GB allocation; a worker killed for it left the pool waiting for ever
    import subprocess
    import sys

    import cv2

    from augexpand.rows import fit_to_size

    code = ("import resource, numpy as np\n"
            "resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))\n"
            "from augexpand.rows import fit_to_size\n"
            "print(fit_to_size(np.zeros((1, 65535, 3), np.uint8), (224, 224)).shape)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.stdout.strip() == "(224, 224, 3)", done.stderr[-500:]
    # the same picture as resizing whole and cutting the centre, where that is affordable
    strip = np.ascontiguousarray(np.tile(photos["coffee"][:2, :100], (1, 40, 1)))  # 2 x 4000
    whole = cv2.resize(strip, (128000, 64), interpolation=cv2.INTER_LINEAR)
    centre = whole[:, (128000 - 64) // 2:(128000 - 64) // 2 + 64]
    assert np.abs(fit_to_size(strip, (64, 64)).astype(int) - centre).mean() < 3
    photo = photos["coffee"]  # an ordinary photo: the same bytes as before
    h, w = photo.shape[:2]
    scale = max(48 / h, 48 / w)
    before = cv2.resize(photo, (max(48, round(w * scale)), max(48, round(h * scale))), interpolation=cv2.INTER_AREA)
    y0, x0 = (before.shape[0] - 48) // 2, (before.shape[1] - 48) // 2
    assert np.array_equal(fit_to_size(photo, (48, 48)), before[y0:y0 + 48, x0:x0 + 48])


@pytest.mark.parametrize("pipeline, expected", [
    # size: the whole (h, w); inside a list, h then w
    ({"RandomResizedCrop": {"size": "output"}}, {"RandomResizedCrop": {"size": [24, 40]}}),
    ({"RandomResizedCrop": {"size": ["output", "output*0.5"]}}, {"RandomResizedCrop": {"size": [24, 20]}}),
    # height / width and their min_ forms
    ({"CenterCrop": {"height": "output", "width": "output*0.5"}}, {"CenterCrop": {"height": 24, "width": 20}}),
    ({"PadIfNeeded": {"min_height": "output*2", "min_width": "output"}},
     {"PadIfNeeded": {"min_height": 48, "min_width": 40}}),
    # anything else: the short side (scaled)
    ({"SmallestMaxSize": {"max_size": "output*1.15"}}, {"SmallestMaxSize": {"max_size": 28}}),
])
def test_output_references_resolve_by_parameter(pipeline: dict, expected: dict):
    assert resolve_sizes([pipeline], (24, 40)) == [expected]


@pytest.mark.parametrize("recipe, match", [
    ({"pipeline": [{"RandomResizedCrop": {"size": "output*big"}}]},
     r"expected `output` or `output\*F`.*got 'output\*big'.*pipeline\[0\]\.RandomResizedCrop\.size"),
    ({"pipeline": [{"RandomResizedCrop": {"size": "output*0"}}]}, r"F > 0"),
    ({"output": {"size": "huge"}}, r"expected a size \(224, \[height, width\]\), auto, .*got 'huge'"),
    ({"output": {"size": {"auto": 0}}},
     r"expected {auto: N} or {auto: \[height, width\]} with sizes > 0.*output\.size"),
])
def test_size_errors_name_the_key(recipe: dict, match: str):
    with pytest.raises(RecipeError, match=match):
        load_recipe(recipe)


def test_validate_works_without_images_at_the_nominal_size():
    light = load_recipe("light")
    assert light.pipeline[0]["RandomResizedCrop"]["size"] == "output"  # kept as written
    assert tuple(light.pipeline_dict["transform"]["transforms"][0]["size"]) == (224, 224)
    assert resolve_output(light).output.size == (224, 224)


def _suffixes(dst: Path) -> set[str]:
    return {p.suffix for p in (dst / "train").rglob("*") if p.is_file() and p.name != "metadata.jsonl"}


def test_format_auto_keeps_lossless_sources_lossless(digits_src: Path, photo_src: Path, tmp_path: Path):
    summary = expand(digits_src, tmp_path / "out_digits", "light", workers=1)  # PNG digits: no JPEG artefacts added
    assert _suffixes(tmp_path / "out_digits") == {".png"}
    card = json.loads((tmp_path / "out_digits" / "dataset.json").read_text())
    assert card["recipe"]["output"]["format"] == "png"
    assert any("format auto: png" in note for note in summary["notes"])
    from augexpand.manifest import read_metadata

    record = next(r for r in read_metadata(tmp_path / "out_digits" / "train" / "metadata.jsonl") if r["op"] == "original")
    original = decode_image(digits_src / record["sources"][0])
    np.testing.assert_array_equal(decode_image(tmp_path / "out_digits" / "train" / record["file_name"]), original)  # lossless
    expand(photo_src, tmp_path / "out_photos", "light", workers=1)  # JPEG photos stay JPEG
    assert _suffixes(tmp_path / "out_photos") == {".jpg"}


def test_format_auto_follows_the_majority_and_an_explicit_format_wins(digits_src: Path, tmp_path: Path):
    for k, path in enumerate(sorted(digits_src.rglob("*.png"))):
        if k % 3:  # 8 of the 12 become JPEGs: most sources are photos now
            save_rgb(path.with_suffix(".jpg"), decode_image(path), quality=95)
            path.unlink()
    expand(digits_src, tmp_path / "mixed", "light", workers=1)
    assert _suffixes(tmp_path / "mixed") == {".jpg"}
    expand(digits_src, tmp_path / "webp", "light", workers=1, overrides={"output.format": "webp"})
    assert _suffixes(tmp_path / "webp") == {".webp"}
    assert resolve_output(load_recipe("light")).output.format == "jpg"  # nothing to look at (validate): photos


def _crops(card: dict) -> list[dict]:
    return [t for t in card["recipe"]["pipeline"]["transform"]["transforms"]
            if t["__class_fullname__"] == "RandomResizedCrop"]


def _spread(made: np.ndarray, source: np.ndarray) -> int:
    """How far ``made`` is from a pixel-wise function of ``source`` (a change of intensity, such as brightness or
    contrast, with clipping): the largest range of the values made from one source value. 0 or 1 (rounding): the
    geometry is the source's."""
    made, source = made.reshape(-1), source.reshape(-1)
    return max(int(np.ptp(made[source == v])) for v in np.unique(source))


@pytest.mark.parametrize("zoom, magnified", [("auto", False), ("free", True)])
def test_zoom_auto_never_magnifies_sources_as_small_as_the_output(digits_src: Path, tmp_path: Path, zoom: str,
                                                                   magnified: bool):
    # 32x32 digits made 32x32: any crop smaller than the whole image would be blown up (resampled); with
    # `zoom: auto` the crop keeps all of it, so every copy is its source, pixel for pixel, but for light's
    # occasional brightness/contrast (a change of intensity, not of geometry).
    from augexpand.manifest import read_metadata

    summary = expand(digits_src, tmp_path / "out", "light", overrides={"zoom": zoom, "copies": 4}, workers=1)
    card = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert card["recipe"]["zoom"] == zoom
    assert _crops(card)[0]["scale"] == ([1.0, 1.0] if zoom == "auto" else [0.7, 1.0])
    copies = [r for r in read_metadata(tmp_path / "out" / "train" / "metadata.jsonl") if r["op"] == "augment"]
    assert len(copies) == 48
    exact, spreads = 0, []
    for record in copies:
        made = decode_image(tmp_path / "out" / "train" / record["file_name"])
        source = decode_image(digits_src / record["sources"][0])
        best = min((source, source[:, ::-1]), key=lambda s: _spread(made, s))  # a flip, if the recipe flips
        exact += bool(np.array_equal(made, best))
        spreads.append(_spread(made, best))
    if magnified:
        assert sum(s > 8 for s in spreads) >= 24 and exact < 24  # crops zoomed into most copies
    else:
        assert max(spreads) <= 1 and exact >= 24  # three in four have no brightness/contrast change: untouched
        assert any(n == "zoom auto: crops keep the whole image (a smaller one would magnify the 32x32 sources to 32x32)"
                   for note in summary["notes"] for n in note.split("; "))


def test_zoom_auto_keeps_the_crops_of_photos_larger_than_the_output(photo_src: Path, tmp_path: Path):
    # 500x375 photos made 224x224: a crop of 224*224/(500*375) = 27 % of the area still is not magnified, so
    # light's 70 % and heavy's 50 % stand; from 300x225 photos their smallest crop becomes 224*224/(300*225) = 74 %.
    import cv2

    summary = expand(photo_src, tmp_path / "light", "light", overrides={"copies": 1}, workers=1)
    assert _crops(json.loads((tmp_path / "light" / "dataset.json").read_text()))[0]["scale"] == [0.7, 1.0]
    assert any("zoom auto: no crop smaller than 27% of the area (a smaller one would magnify the 500x375 sources to "
               "224x224)" in note
               for note in summary["notes"])
    for path in photo_src.rglob("*.jpg"):
        image = decode_image(path)
        save_rgb(path, cv2.resize(image, (300, 225), interpolation=cv2.INTER_AREA), quality=90)
    expand(photo_src, tmp_path / "heavy", "heavy", overrides={"copies": 1}, workers=1)
    card = json.loads((tmp_path / "heavy" / "dataset.json").read_text())
    assert _crops(card)[0]["scale"] == [pytest.approx(224 * 224 / (300 * 225), abs=1e-4), 1.0]
    assert _shapes(tmp_path / "heavy") == {(224, 224, 3)}


def test_limit_zoom_reaches_every_crop_in_either_pipeline_form():
    from augexpand.recipe import build_pipeline, limit_zoom

    compact = [{"OneOf": {"p": 1, "transforms": [{"RandomResizedCrop": {"size": [16, 16]}},
                                                   {"RandomResizedCrop": {"size": [16, 16], "scale": [0.9, 1.0]}}]}},
               {"HorizontalFlip": {"p": 0.5}}]
    limited = limit_zoom(compact, 0.75)
    inner = limited[0]["OneOf"]["transforms"]
    assert inner[0]["RandomResizedCrop"]["scale"] == [0.75, 1.0]  # albumentations' default (0.08, 1) raised
    assert inner[1]["RandomResizedCrop"]["scale"] == [0.9, 1.0]  # already keeps more: as written
    assert limited[1] == compact[1] and "scale" not in compact[0]["OneOf"]["transforms"][0]["RandomResizedCrop"]
    import albumentations as A

    serialized = A.to_dict(build_pipeline(compact))
    crops = limit_zoom(serialized, 1.0)["transform"]["transforms"][0]["transforms"]
    assert [c["scale"] for c in crops] == [[1.0, 1.0], [1.0, 1.0]]
    assert build_pipeline(limit_zoom(serialized, 1.0)) is not None


def test_zoom_must_be_auto_or_free():
    with pytest.raises(RecipeError, match=r"unknown zoom 'atuo'; did you mean 'auto'\? \(expected one of: auto, free\)"):
        load_recipe({"zoom": "atuo"})
    assert load_recipe({}).zoom == "free" and load_recipe("light").zoom == "auto"


def test_validate_says_zoom_auto(tmp_path: Path):
    from click.testing import CliRunner

    from augexpand.cli import cli

    result = CliRunner().invoke(cli, ["validate", "heavy"])
    assert result.exit_code == 0 and result.output.rstrip().endswith("; zoom: auto (crops never magnify the sources)")
    (tmp_path / "mine.yaml").write_text("pipeline:\n  - RandomResizedCrop: {size: output}\n")
    assert "; zoom:" not in CliRunner().invoke(cli, ["validate", str(tmp_path / "mine.yaml")]).output  # free
    info = json.loads(CliRunner().invoke(cli, ["validate", "light", "--json"]).output)
    assert info["zoom"] == "auto"


def test_the_zoom_line_shows_alone_too(digits_src: Path, tmp_path: Path):
    # An explicit size and format: `zoom: auto` is the only thing resolved from the images, and still said.
    from click.testing import CliRunner

    from augexpand.cli import cli

    (tmp_path / "mine.yaml").write_text("zoom: auto\ncopies: 1\npipeline:\n  - RandomResizedCrop: {size: output}\n"
                                       "output: {size: 64, format: png}\n")
    result = CliRunner().invoke(cli, ["expand", "-r", str(tmp_path / "mine.yaml"), str(digits_src),
                                      str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "zoom auto: crops keep the whole image (a smaller one would magnify the 32x32 sources to 64x64)\n" \
        in result.output
    card = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert _crops(card)[0]["scale"] == [1.0, 1.0]  # albumentations' default (0.08, 1) raised


@pytest.mark.parametrize("gate, kept", [(64, False), (32, True)])
def test_a_transform_gated_above_the_output_size_is_left_out(digits_src: Path, tmp_path: Path, gate: int, kept: bool):
    # 32x32 digits made 32x32, every copy transposed, the Transpose gated at 64 px (left out: each copy is its source,
    # pixel for pixel) or at 32 px (kept: each copy is its source transposed).
    from augexpand.manifest import read_metadata

    recipe = {"seed": 0, "copies": 1, "keep_originals": False, "output": {"size": 32, "format": "png"},
              "pipeline": [{"Transpose": {"p": 1.0, "if_output_at_least": gate}}]}
    summary = expand(digits_src, tmp_path / "out", recipe, workers=1)
    records = read_metadata(tmp_path / "out" / "train" / "metadata.jsonl")
    assert len(records) == 12
    for record in records:
        made = decode_image(tmp_path / "out" / "train" / record["file_name"])
        source = decode_image(digits_src / record["sources"][0])
        assert np.array_equal(made, source.transpose(1, 0, 2) if kept else source)
        assert not np.array_equal(source, source.transpose(1, 0, 2))  # the test can tell them apart
    card = json.loads((tmp_path / "out" / "dataset.json").read_text())
    names = [t["__class_fullname__"] for t in card["recipe"]["pipeline"]["transform"]["transforms"]]
    assert names == (["Transpose"] if kept else [])
    said = [n for note in summary["notes"] for n in note.split("; ") if n.startswith("small output")]
    assert said == ([] if kept else ["small output: 32x32 leaves out Transpose (from 64 px) (if_output_at_least)"])


def test_heavy_leaves_rotation_and_blur_out_of_16px_images_only(digits_src: Path, tmp_path: Path):
    import cv2

    def transforms(dst: Path) -> list[str]:
        pipeline = json.loads((dst / "dataset.json").read_text())["recipe"]["pipeline"]["transform"]["transforms"]
        return [t["__class_fullname__"] for t in pipeline]

    expand(digits_src, tmp_path / "32", "heavy", workers=1)
    at_32 = transforms(tmp_path / "32")  # (the flip goes or stays as orientation: auto decides)
    assert "Affine" in at_32 and at_32.count("OneOf") == 2 and at_32[-1] == "CoarseDropout"
    for path in digits_src.rglob("*.png"):
        save_rgb(path, cv2.resize(decode_image(path), (16, 16), interpolation=cv2.INTER_AREA))
    summary = expand(digits_src, tmp_path / "16", "heavy", workers=1)
    assert transforms(tmp_path / "16") == [t for t in at_32 if t != "Affine"][:-2] + ["CoarseDropout"]
    assert "small output: 16x16 leaves out Affine (from 32 px), OneOf (from 32 px) (if_output_at_least)" in \
        summary["notes"][0].split("; ")


@pytest.mark.parametrize("value", [0, "32", 1.5, True, 10 ** 6])
def test_a_gate_is_a_whole_number_of_pixels(value):
    with pytest.raises(RecipeError, match=r"if_output_at_least must be a whole number of pixels from 1 to 8192, got "
                                          r".* \(<inline recipe>, pipeline\[0\]\.Affine\.if_output_at_least\)"):
        load_recipe({"pipeline": [{"Affine": {"rotate": 10, "if_output_at_least": value}}]})
