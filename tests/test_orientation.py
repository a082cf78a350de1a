"""Orientation: `keep` strips mirrors and large turns from any pipeline form; `auto` decides from the training
images (digits keep their orientation, photos do not) and the outputs follow the decision, pixel for pixel."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from augexpand import expand
from augexpand.cli import cli
from augexpand.errors import RecipeError
from augexpand.expansion import plan_expansion
from augexpand.folder import decode_image, scan_image_folder
from augexpand.orientation import (
    MAX_IMAGES,
    decide_orientation,
    resolve_orientation,
    sample_indices,
    strip_orientation,
)
from augexpand.recipe import build_pipeline, import_albumentations, load_recipe
from tests.conftest import crops, save_rgb

A = import_albumentations()

# ----------------------------------------------------------------------------------------------- strip_orientation

COMPACT = [
    {"RandomResizedCrop": {"size": [32, 32], "scale": [0.5, 1.0]}},
    {"HorizontalFlip": {"p": 0.5}},
    "VerticalFlip",
    {"Affine": {"rotate": [-30, 20], "shear": {"x": [-25, 5], "y": 40}, "scale": [0.9, 1.1], "p": 0.5}},
    {"OneOf": {"p": 0.8, "transforms": [
        {"Transpose": {"p": 0.3}},
        {"Rotate": {"limit": 45, "p": 0.7}},
        {"ColorJitter": {"brightness": 0.2}},
        {"Sequential": {"transforms": [{"RandomRotate90": {}}, {"ShiftScaleRotate": {"rotate_limit": [-5, 30]}}]}},
    ]}},
    {"SomeOf": {"n": 1, "transforms": [{"D4": {}}, {"SquareSymmetry": {}}]}},  # only mirrors: removed whole
    {"SafeRotate": {}},  # default limit: +-90 degrees
    {"GaussianBlur": {"blur_limit": [3, 5], "p": 0.2}},
]

STRIPPED = [
    {"RandomResizedCrop": {"size": [32, 32], "scale": [0.5, 1.0]}},
    {"Affine": {"rotate": [-10.0, 10.0], "shear": {"x": [-10.0, 5.0], "y": 10.0}, "scale": [0.9, 1.1], "p": 0.5}},
    {"OneOf": {"p": 0.8, "transforms": [
        {"NoOp": {"p": 0.3}},  # in a OneOf a mirror becomes nothing: the others keep their odds
        {"Rotate": {"limit": 10.0, "p": 0.7}},
        {"ColorJitter": {"brightness": 0.2}},
        {"Sequential": {"transforms": [{"ShiftScaleRotate": {"rotate_limit": [-5.0, 10.0]}}]}},
    ]}},
    {"SafeRotate": {"limit": [-10.0, 10.0]}},
    {"GaussianBlur": {"blur_limit": [3, 5], "p": 0.2}},
]


def _names(compose) -> list[str]:
    out = []
    for t in compose.transforms:
        out.append(type(t).__name__)
        if isinstance(t, A.BaseCompose):
            out += _names(t)
    return out


def _find(compose, name: str):
    return next(t for t in _walk(compose) if type(t).__name__ == name)


def _walk(compose):
    for t in compose.transforms:
        yield t
        if isinstance(t, A.BaseCompose):
            yield from _walk(t)


def test_strip_compact_removes_mirrors_clamps_turns_and_leaves_everything_else():
    before = copy.deepcopy(COMPACT)
    stripped = strip_orientation(COMPACT)
    assert stripped == STRIPPED
    assert COMPACT == before  # the input is not changed
    built = build_pipeline(stripped)  # still a valid pipeline
    assert not {"HorizontalFlip", "VerticalFlip", "Transpose", "RandomRotate90", "D4", "SquareSymmetry"} \
        & set(_names(built))
    assert strip_orientation(STRIPPED) == STRIPPED  # stripping twice changes nothing


def test_strip_serialized_gives_the_same_pipeline_as_the_compact_form():
    serialized = A.to_dict(build_pipeline(COMPACT))
    before = copy.deepcopy(serialized)
    stripped = strip_orientation(serialized)
    assert serialized == before
    from_serialized = A.from_dict(stripped)
    from_compact = build_pipeline(STRIPPED)
    assert _names(from_serialized) == _names(from_compact)
    affine = _find(from_serialized, "Affine")
    assert affine.rotate == (-10.0, 10.0) and affine.shear == {"x": (-10.0, 5.0), "y": (10.0, 10.0)}
    assert affine.scale == {"x": (0.9, 1.1), "y": (0.9, 1.1)}  # untouched
    assert _find(from_serialized, "Rotate").limit == (-10.0, 10.0)
    assert _find(from_serialized, "SafeRotate").limit == (-10.0, 10.0)
    assert _find(from_serialized, "ShiftScaleRotate").rotate_limit == (-5.0, 10.0)
    assert _find(from_serialized, "GaussianBlur").blur_limit == (3, 5)
    # albumentations' own form without the outer {"transform": ...} wrapper too
    assert strip_orientation(serialized["transform"]) == stripped["transform"]


@pytest.mark.parametrize(("pipeline", "expected"), [
    ([{"HorizontalFlip": {"p": 1.0}}], []),  # nothing left
    (["Rotate"], [{"Rotate": {"limit": [-10.0, 10.0]}}]),  # its default limit is +-90
    ([{"ShiftScaleRotate": {"shift_limit": 0.1}}], [{"ShiftScaleRotate": {"shift_limit": 0.1,
                                                                          "rotate_limit": [-10.0, 10.0]}}]),
    ([{"Affine": {"rotate": -15}}], [{"Affine": {"rotate": -10.0}}]),  # Affine's number is the angle itself
    ([{"Affine": {"rotate": 5, "translate_percent": 0.1}}], [{"Affine": {"rotate": 5.0, "translate_percent": 0.1}}]),
    ([{"OneOf": {"transforms": ["HorizontalFlip", "Transpose"]}}], []),  # a OneOf of mirrors only: removed
])
def test_strip_cases(pipeline, expected):
    assert strip_orientation(pipeline) == expected


# ----------------------------------------------------------------------------------------------- auto: the test


@pytest.fixture(scope="module")
def digits_src(tmp_path_factory) -> Path:
    """Real handwritten digits (scikit-learn): 5 per class, 10 classes, upscaled from 8x8 to 32x32 PNGs."""
    import cv2
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("orient") / "digits"
    for label in range(10):
        for k, i in enumerate(rng.choice(np.flatnonzero(digits.target == label), 5, replace=False)):
            gray = cv2.resize((digits.images[i] / 16 * 255).astype(np.uint8), (32, 32),
                              interpolation=cv2.INTER_CUBIC)
            save_rgb(root / f"d{label}" / f"{k}.png", np.dstack([gray] * 3))
    return root


@pytest.fixture(scope="module")
def photo_src(tmp_path_factory, photos) -> Path:
    """Real photos (scikit-image, scikit-learn): 8 crops of each of 4 photos, one class per photo."""
    root = tmp_path_factory.mktemp("orient") / "photos"
    for name in ("chelsea", "coffee", "rocket", "china"):
        for k, image in enumerate(crops(photos[name], 8, seed=len(name), size=(48, 40))):
            save_rgb(root / name / f"{k}.jpg", image, quality=92)
    return root


def _decide(src: Path, recipe: str = "light", **kwargs) -> dict:
    return plan_expansion(src, recipe, workers=1, **kwargs).orientation


def test_auto_keeps_orientation_of_real_digits(digits_src: Path):
    info = _decide(digits_src)
    assert info["mode"] == "auto" and info["keep"] is True and info["images"] == 50
    acc = info["accuracy"]
    assert acc["original"] >= 0.6 and acc["mirrored"] <= 0.5 * acc["original"]  # 5-shot digits: ~0.8 vs ~0.25
    assert info["lost"] > info["gained"]


@pytest.mark.parametrize("which", ["crops", "example"])
def test_auto_allows_flips_on_real_photos(which: str, photo_src: Path):
    from augexpand.example import example_dir

    info = _decide(photo_src if which == "crops" else example_dir())
    assert info["mode"] == "auto" and info["keep"] is False, info
    assert info["accuracy"]["original"] > 0.5
    assert info["accuracy"]["mirrored"] >= 0.75 * info["accuracy"]["original"]


def test_too_few_images_to_tell_keeps_orientation(digits_src: Path, tmp_path: Path):
    import shutil

    few = tmp_path / "few"
    for label in ("d2", "d5", "d7"):
        shutil.copytree(digits_src / label, few / label, ignore=shutil.ignore_patterns("[2-4].png"))
    info = _decide(few)  # 3 classes x 2 images
    assert info["keep"] is True and info["accuracy"]["original"] is None and "too few" in info["reason"]


def test_the_decision_is_deterministic_and_independent_of_the_workers(digits_src: Path):
    one = plan_expansion(digits_src, "heavy", workers=1)
    two = plan_expansion(digits_src, "heavy", workers=2)
    assert one.orientation == two.orientation
    assert one.recipe.resolved() == two.recipe.resolved() and one.fingerprint == two.fingerprint
    picked = sample_indices(range(5000), seed=3)
    assert len(picked) == MAX_IMAGES and picked == sorted(picked) and picked == sample_indices(range(5000), seed=3)
    assert picked != sample_indices(range(5000), seed=4)


def test_the_test_itself_on_thumbnails():
    """Mirror-symmetric classes (bars) stay recognisable; handed ones (a diagonal and its mirror as two classes)
    are confused with each other when mirrored."""
    rng = np.random.default_rng(0)

    def noisy(image):
        return (image + rng.normal(0, 20, image.shape)).astype(np.float32)

    diag = np.zeros((16, 16), np.float32)
    for i in range(16):
        diag[i, max(0, i - 1):i + 2] = 255
    handed = [noisy(diag) for _ in range(10)] + [noisy(diag[:, ::-1]) for _ in range(10)]
    assert decide_orientation(handed, [0] * 10 + [1] * 10).keep is True
    bar, box = np.zeros((16, 16), np.float32), np.zeros((16, 16), np.float32)
    bar[6:10, :], box[4:12, 4:12] = 255, 255
    symmetric = [noisy(bar) for _ in range(10)] + [noisy(box) for _ in range(10)]
    decision = decide_orientation(symmetric, [0] * 10 + [1] * 10)
    assert decision.keep is False and decision.original == 1.0 and decision.mirrored == 1.0


# ------------------------------------------------------------------------------------- outputs follow the decision


def _flip_recipe(tmp_path: Path, orientation: str) -> Path:
    path = tmp_path / f"flip_{orientation}.yaml"
    path.write_text(f"orientation: {orientation}\ncopies: 2\nkeep_originals: false\n"
                    "pipeline:\n  - HorizontalFlip: {p: 1.0}\n  - Rotate: {limit: [40, 40], p: 0.0}\n"
                    "output: {size: null, format: png}\n")
    return path


def _outputs_vs_sources(src: Path, dst: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    rows = [json.loads(line) for line in (dst / "train" / "metadata.jsonl").read_text().splitlines()]
    return [(decode_image(dst / "train" / r["file_name"]), decode_image(src / r["sources"][0])) for r in rows]


@pytest.mark.parametrize("orientation", ["keep", "auto", "free"])
def test_written_digits_are_mirrored_only_when_orientation_is_free(orientation: str, digits_src: Path,
                                                                   tmp_path: Path):
    summary = expand(digits_src, tmp_path / "dst", _flip_recipe(tmp_path, orientation), workers=1)
    pairs = _outputs_vs_sources(digits_src, tmp_path / "dst")
    assert len(pairs) == 100
    asymmetric = [(out, ref) for out, ref in pairs if not np.array_equal(ref, ref[:, ::-1])]
    assert len(asymmetric) == 100  # every real digit differs from its mirror image
    if orientation == "free":
        assert all(np.array_equal(out, ref[:, ::-1]) for out, ref in asymmetric)
    else:
        assert all(np.array_equal(out, ref) for out, ref in asymmetric)
    card = json.loads((tmp_path / "dst" / "dataset.json").read_text())
    assert card["orientation"] == summary["orientation"]
    assert card["orientation"]["keep"] is (orientation != "free")
    assert card["recipe"]["orientation"] == ("free" if orientation == "free" else "keep")
    names = [t["__class_fullname__"] for t in card["recipe"]["pipeline"]["transform"]["transforms"]]
    assert ("HorizontalFlip" in names) is (orientation == "free")


def test_card_summary_and_cli_line_of_auto(digits_src: Path, tmp_path: Path):
    result = CliRunner().invoke(cli, ["expand", "-r", "light", str(digits_src), str(tmp_path / "dst"), "-w", "1"])
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if x.startswith("orientation:"))
    assert line.startswith("orientation: kept - mirrored images are recognised ") and \
        line.endswith("(50 images): no flips, rotations within 10 deg")
    card = json.loads((tmp_path / "dst" / "dataset.json").read_text())
    o = card["orientation"]
    assert o["mode"] == "auto" and o["keep"] is True and o["images"] == 50
    assert set(o["accuracy"]) == {"original", "mirrored"} and o["accuracy"]["original"] > o["accuracy"]["mirrored"]
    assert any(n.startswith("orientation: kept") for n in card["notes"])
    names = [t["__class_fullname__"] for t in card["recipe"]["pipeline"]["transform"]["transforms"]]
    assert names == ["RandomResizedCrop", "RandomBrightnessContrast"]  # light without its flip
    assert card["recipe"]["orientation"] == "keep"


def test_policy_keep_orientation_auto_follows_the_data(digits_src: Path, photo_src: Path):
    recipe = load_recipe({"policy": {"name": "trivialaugment", "keep_orientation": "auto"}, "copies": 1})
    for src, keep in ((digits_src, True), (photo_src, False)):
        resolved, info = resolve_orientation(recipe, scan_image_folder(src))
        assert resolved.policy.keep_orientation is keep
        assert resolved.orientation == "free" and info["policy"]["keep"] is keep


def test_validate_says_auto_without_images():
    result = CliRunner().invoke(cli, ["validate", "heavy"])
    assert result.exit_code == 0
    assert "orientation: auto (decided from the images" in result.output
    info = json.loads(CliRunner().invoke(cli, ["validate", "light_upright", "--json"]).output)
    assert info["orientation"] == "keep"


@pytest.mark.parametrize(("data", "match"), [
    ({"orientation": "sideways"}, r"^unknown orientation 'sideways' \(expected one of: auto, free, keep\)"),
    ({"orientation": "keeep"}, r"^unknown orientation 'keeep'; did you mean 'keep'\?"),
    ({"orientation": 3}, r"^unknown orientation 3"),
    ({"policy": {"name": "randaugment", "keep_orientation": "maybe"}},
     r"^keep_orientation must be true, false or auto, got 'maybe' \(.*policy\.keep_orientation\)$"),
])
def test_orientation_errors_are_one_line(data: dict, match: str):
    with pytest.raises(RecipeError, match=match) as caught:
        load_recipe(data)
    assert "\n" not in str(caught.value)


def test_cli_error_for_a_bad_orientation(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("copies: 1\norientation: sideways\n")
    result = CliRunner().invoke(cli, ["validate", str(bad)])
    assert result.exit_code != 0
    assert result.output.strip() == (f"Error: unknown orientation 'sideways' (expected one of: auto, free, keep) "
                                     f"({bad}, line 2, orientation)")


def test_train_flip_follows_the_card(tmp_path: Path):
    from augexpand.train.data import orientation_kept

    (tmp_path / "dataset.json").write_text(json.dumps({"orientation": {"mode": "auto", "keep": True}}))
    assert orientation_kept(tmp_path) is True
    (tmp_path / "dataset.json").write_text(json.dumps({"orientation": {"mode": "auto", "keep": False}}))
    assert orientation_kept(tmp_path) is False
    (tmp_path / "dataset.json").write_text("[1, 2]")
    assert orientation_kept(tmp_path) is None
    assert orientation_kept(tmp_path / "nowhere") is None


def test_train_leaves_out_its_flip_after_an_expansion_that_kept_orientation(digits_src: Path, tmp_path: Path):
    import yaml

    pytest.importorskip("torch")
    from augexpand.train.cli import train_command

    expand(digits_src, tmp_path / "dst", "light", workers=1)
    runner = CliRunner()
    for extra, flip in (([], False), (["--flip"], True)):
        run = tmp_path / f"run{len(extra)}"
        result = runner.invoke(train_command, [str(tmp_path / "dst"), "--out", str(run), "--steps", "2", "-q",
                                               "--workers", "0", "--device", "cpu", *extra])
        assert result.exit_code == 0, result.output
        assert yaml.safe_load((run / "config.yaml").read_text())["flip"] is flip


@pytest.mark.parametrize(("source", "extra", "flip"), [("digits", [], False), ("photos", [], True),
                                                   ("digits", ["--flip"], True)])
def test_train_on_a_plain_image_folder_lets_the_images_decide_the_flip(digits_src: Path, photo_src: Path,
                                                                     tmp_path: Path, source, extra, flip):
    """Without an expansion's card, train runs expand's orientation test on the training images: real digits
    train without the random flip (a mirrored 2 is not a 2), photos with it, and --flip still decides."""
    import yaml

    pytest.importorskip("torch")
    from augexpand.train.cli import train_command

    src = digits_src if source == "digits" else photo_src
    run = tmp_path / "run"
    result = CliRunner().invoke(train_command, [str(src), "--out", str(run), "--steps", "2", "--workers", "0",
                                                "--device", "cpu", *extra])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load((run / "config.yaml").read_text())["flip"] is flip
    if not extra:
        assert f"{'no' if not flip else 'with'} random flip: mirrored images are recognised" in result.output


def test_preview_decides_as_expand_does(digits_src: Path, tmp_path: Path):
    from augexpand.preview import preview

    summary = preview(digits_src, tmp_path / "sheet.png", "heavy", samples=2)
    assert summary["orientation"] == plan_expansion(digits_src, "heavy", workers=1).orientation
    assert summary["orientation"]["keep"] is True
