"""Hostile recipes, second review: transforms and compositions that validated, then failed on every image (or drew
a traceback in preview). Each is now refused by `validate` in one line naming the transform and the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from augexpand.errors import RecipeError
from augexpand.recipe import import_albumentations, load_recipe

A = import_albumentations()


def _one_of_zero() -> dict:
    pipeline = A.to_dict(A.Compose([A.OneOf([A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)])]))
    for t in pipeline["transform"]["transforms"][0]["transforms"]:
        t["p"] = 0.0
    return {"pipeline": pipeline}


REFUSED = [
    # validated, then a ZeroDivisionError named as such
    ("OneOf of p 0", {"pipeline": [{"OneOf": {"transforms": [{"HorizontalFlip": {"p": 0}},
                                                              {"VerticalFlip": {"p": 0}}]}}]},
     r"^OneOf: the p of its transforms sum to 0, so it could never choose one; .*pipeline\[0\]\.OneOf\)$"),
    ("serialized OneOf of p 0", _one_of_zero(), r"^serialized pipeline: OneOf: the p of its transforms sum to 0"),
    # validated, then every image failed: 'negative dimensions are not allowed'
    ("SomeOf n -1", {"pipeline": [{"SomeOf": {"transforms": ["HorizontalFlip", "VerticalFlip"], "n": -1}}]},
     r"^SomeOf: n = -1 is out of range"),
    # validated, then every mixed image failed ('images to blend must have the same shape') and preview crashed
    ("ToGray to 1 channel", {"pipeline": [{"ToGray": {"num_output_channels": 1, "p": 0.5}}]},
     r"^ToGray cannot be used: it turns the 3-channel image into 1 channel, .*num_output_channels: 3"),
    ("ToGray to 1 channel in a OneOf", {"pipeline": [{"OneOf": {"transforms": [
        {"ToGray": {"num_output_channels": 1}}, "HorizontalFlip"]}}]}, r"^ToGray cannot be used: .*1 channel"),
    ("serialized ToGray to 1 channel", {"pipeline": A.to_dict(A.Compose([A.ToGray(num_output_channels=1)]))},
     r"^ToGray cannot be used: .*1 channel"),
]


@pytest.mark.parametrize("what, recipe, match", REFUSED, ids=[r[0] for r in REFUSED])
def test_a_composition_that_fails_on_every_image_is_refused_at_validation(what, recipe, match):
    with pytest.raises(RecipeError, match=match) as info:
        load_recipe(recipe)
    assert "\n" not in str(info.value)


def test_what_stays_valid_next_to_the_refusals():
    load_recipe({"pipeline": [{"ToGray": {"num_output_channels": 3, "p": 1}}, {"ChannelDropout": {"p": 1}},
                              {"SomeOf": {"transforms": ["HorizontalFlip"], "n": 0}},
                              {"OneOf": {"transforms": [{"HorizontalFlip": {"p": 0}}, "VerticalFlip"]}}]})


def test_preview_of_a_grey_one_channel_recipe_is_one_line_not_a_traceback(small_src: Path, tmp_path: Path):
    recipe = tmp_path / "grey.yaml"
    recipe.write_text("copies: 1\npipeline:\n  - ToGray: {num_output_channels: 1, p: 1}\n"
                      "mix: {mixup: {count: 1}}\n", encoding="utf-8")
    for command in (["preview", "-r", str(recipe), str(small_src), "-o", str(tmp_path / "p.png")],
                    ["expand", "-r", str(recipe), "--quiet", str(small_src), str(tmp_path / "d")]):
        result = subprocess.run([sys.executable, "-m", "augexpand", *command], capture_output=True, text=True,
                                timeout=120, check=False)
        assert result.returncode == 1, result.stderr
        assert result.stderr.startswith("Error: ToGray cannot be used: it turns the 3-channel image into 1 channel")
        assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert not (tmp_path / "p.png").exists() and not (tmp_path / "d").exists()


GRID_BOMBS = [
    # (transform and parameters, the knob named): on the old code each took over 10 GB (or 40 s) in validation,
    # inside the probe's first run, before it could time anything
    ({"RandomGridShuffle": {"grid": [8192, 8192]}}, "grid = 8192"),
    ({"GridDropout": {"holes_number_xy": [8192, 8192]}}, "holes_number_xy = 8192"),
    ({"GridElasticDeform": {"num_grid_xy": [8192, 8192], "magnitude": 10}}, "num_grid_xy = 8192"),
    ({"PiecewiseAffine": {"nb_rows": [8000, 8192], "nb_cols": [8000, 8192]}}, "nb_rows = 8000"),
    ({"ThinPlateSpline": {"num_control_points": 8192}}, "num_control_points = 8192"),
    ({"Morphological": {"scale": [8192, 8192]}}, "scale = 8192"),
    ({"CLAHE": {"tile_grid_size": [8000, 8192]}}, "tile_grid_size = 8000"),  # 16 GB, in OpenCV: no alarm stops it
]


@pytest.mark.parametrize("transform, words", GRID_BOMBS, ids=[next(iter(g[0])) for g in GRID_BOMBS])
def test_a_grid_of_millions_of_cells_is_refused_by_its_bound_before_any_trial_run(tmp_path: Path, transform, words):
    recipe = tmp_path / "r.yaml"
    name, params = next(iter(transform.items()))
    recipe.write_text(f"pipeline:\n  - {name}: {{{', '.join(f'{k}: {v}' for k, v in params.items())}, p: 1}}\n",
                      encoding="utf-8")
    # Under a 2 GB address-space limit, so that the old code fails (MemoryError or killed) instead of taking the
    # machine's memory.
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30)); "
            "from augexpand.cli import main; sys.argv = ['augexpand', 'validate', sys.argv[1]]; main()")
    result = subprocess.run([sys.executable, "-c", code, str(recipe)], capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith(f"Error: {name}: {words} is out of range: at most "), result.stderr
    assert result.stderr.count("\n") == 1


def test_the_grids_a_recipe_may_use_still_pass():
    load_recipe({"pipeline": [{"RandomGridShuffle": {"grid": [64, 64]}}, {"GridDropout": {"holes_number_xy": [64, 64]}},
                              {"Morphological": {"scale": [3, 255]}}, {"RandomResizedCrop": {"size": [32, 32],
                                                                                           "scale": [0.08, 1.0]}}]})


def test_a_dry_run_of_a_recipe_that_makes_nothing_says_a_run_is_refused_not_none(small_src: Path, tmp_path: Path):
    from click.testing import CliRunner

    from augexpand.cli import cli

    recipe = tmp_path / "nothing.yaml"
    recipe.write_text("copies: 0\nkeep_originals: false\n", encoding="utf-8")
    result = CliRunner().invoke(cli, ["expand", "-r", str(recipe), "--dry-run", str(small_src), str(tmp_path / "d")])
    assert result.exit_code == 0, result.output  # a dry run reports; the run itself refuses
    assert "Would make 0 training images" in result.output
    assert "no training image after: a run is refused (set copies or keep_originals: true)" in result.output
    assert "None" not in result.output  # it printed "6.0 in the source, None after"
    result = CliRunner().invoke(cli, ["expand", "-r", str(recipe), str(small_src), str(tmp_path / "d")])
    assert result.exit_code == 1 and "makes no training images" in result.output


def test_a_transform_that_takes_minutes_on_a_tiny_image_is_stopped_and_refused(tmp_path: Path):
    # each number alone is refused after a timed trial; together (8000 shadows of 8192 edges) one trial run took
    # minutes: `validate` hung
    recipe = tmp_path / "r.yaml"
    recipe.write_text("pipeline:\n  - RandomShadow: {num_shadows_limit: [8000, 8192], shadow_dimension: 8192, p: 1}\n",
                      encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "augexpand", "validate", str(recipe)], capture_output=True,
                            text=True, timeout=40, check=False)
    assert result.returncode == 1
    assert result.stderr == (f"Error: RandomShadow cannot be used: it takes over 3 s on a 32x32 image (stopped there): "
                             f"its parameters are too large ({recipe}, line 1, pipeline)\n")
