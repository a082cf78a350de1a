"""Recipes: builtins, both pipeline forms, and errors that name the file, line, key and the closest valid name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from augexpand.errors import RecipeError
from augexpand.recipe import AutoSize, builtin_recipes, import_albumentations, load_recipe


def write(tmp_path: Path, text: str, name: str = "r.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_builtin_recipes_load_by_name():
    assert {"light", "heavy", "balance"} <= set(builtin_recipes())
    heavy = load_recipe("heavy")
    assert heavy.copies >= 1 and set(heavy.mix.enabled()) >= {"mixup", "samplepairing"}
    assert load_recipe("balance").oversample.method == "smote"
    light = load_recipe("light.yaml")
    assert light.output.size == AutoSize(auto=(224, 224)) and light.output.nominal == (224, 224)
    assert {"light_upright", "trivialaugment", "randaugment", "autoaugment", "trivialaugment_upright",
            "randaugment_upright", "autoaugment_upright"} <= set(builtin_recipes())


@pytest.mark.parametrize("base", ["light", "trivialaugment", "randaugment", "autoaugment"])
def test_an_upright_builtin_is_its_base_without_the_flip(base: str):
    # "light_upright: light without the flip" (README, `augexpand recipes`): light_upright had kept light's old
    # crop and colour when light was calibrated for small data.
    from augexpand.orientation import strip_orientation

    plain, upright = load_recipe(base), load_recipe(f"{base}_upright")
    assert upright.orientation == "keep" and strip_orientation(plain.pipeline_dict) == upright.pipeline_dict
    for key in ("copies", "target_per_class", "keep_originals", "mix", "oversample", "output", "zoom", "seed"):
        assert getattr(plain, key) == getattr(upright, key), key
    if plain.policy is not None:
        assert upright.policy.keep_orientation is True
        assert plain.policy.model_copy(update={"keep_orientation": True}) == upright.policy


def test_compact_form_with_nesting_builds_the_same_pipeline_as_albumentations(tmp_path: Path):
    A = import_albumentations()
    recipe = load_recipe(write(tmp_path, """
pipeline:
  - HorizontalFlip
  - OneOf:
      p: 0.7
      transforms:
        - Blur: {blur_limit: [3, 5]}
        - ToGray: {}
  - SomeOf:
      n: 1
      transforms: [VerticalFlip, {Transpose: {p: 1.0}}]
"""))
    expected = A.Compose([A.HorizontalFlip(), A.OneOf([A.Blur(blur_limit=(3, 5)), A.ToGray()], p=0.7),
                          A.SomeOf([A.VerticalFlip(), A.Transpose(p=1.0)], n=1)])
    assert recipe.pipeline_dict == A.to_dict(expected)


def test_serialized_form_inline_and_by_path(tmp_path: Path):
    A = import_albumentations()
    compose = A.Compose([A.RandomResizedCrop(size=(32, 32)), A.HorizontalFlip(p=0.3)])
    A.save(compose, str(tmp_path / "pipe.json"))
    A.save(compose, str(tmp_path / "pipe.yaml"), data_format="yaml")
    by_json = load_recipe(write(tmp_path, "pipeline: pipe.json\n"))
    by_yaml = load_recipe(write(tmp_path, "pipeline: pipe.yaml\n", "r2.yaml"))
    inline = load_recipe({"pipeline": json.loads((tmp_path / "pipe.json").read_text())})
    assert by_json.pipeline_dict == by_yaml.pipeline_dict == inline.pipeline_dict == A.to_dict(compose)


@pytest.mark.parametrize("text, match", [
    # unknown transform: closest name, file and line
    ("pipeline:\n  - HorizontalFlip: {}\n  - HorizontalFlipp: {p: 0.5}\n",
     r"unknown transform 'HorizontalFlipp'; did you mean 'HorizontalFlip'\? \(.*r\.yaml, line 3"),
    # a bad parameter value: albumentations' own validation, with the key
    ("pipeline:\n  - RandomResizedCrop:\n      size: [32, 32]\n      scale: [2, 1]\n",
     r"RandomResizedCrop: scale: .*must be >= 0 and <= 1 .*line 4, pipeline\[0\]\.RandomResizedCrop\.scale"),
    # an unknown parameter of a transform
    ("pipeline:\n  - HorizontalFlip: {prob: 0.5}\n", r"unknown parameter 'prob'.*line 2"),
    # an unknown top-level key, with the closest one
    ("seed: 1\ncopise: 3\n", r"unknown key 'copise'; did you mean 'copies'\?.*line 2"),
    # a wrong type
    ("copies: many\n", r"valid integer.*got 'many'.*line 1, copies"),
    # a bad mix parameter
    ("mix:\n  mixup: {alpha: -1}\n", r"greater than 0, got -1 .*line 2, mix\.mixup\.alpha"),
    # an unknown mix method
    ("mix:\n  mixupp: {alpha: 1}\n", r"unknown key 'mixupp'; did you mean 'mixup'\?"),
    # a YAML syntax error, with its line
    ("seed: 1\npipeline: [HorizontalFlip\ncopies: 2\n", r"YAML syntax error \(.*r\.yaml, line \d+, column \d+\)"),
    # not a mapping
    ("- HorizontalFlip\n", r"must be a YAML mapping"),
    # a transform that needs reference images
    ("pipeline:\n  - FDA: {}\n", r"FDA needs per-image reference data"),
    # a sampling strategy imbalanced-learn does not know
    ("oversample: {sampling_strategy: most}\n", r"oversample\.sampling_strategy"),
])
def test_recipe_errors_say_where_and_what(tmp_path: Path, text: str, match: str):
    with pytest.raises(RecipeError, match=match):
        load_recipe(write(tmp_path, text))


def test_unsafe_yaml_is_refused(tmp_path: Path):
    path = write(tmp_path, "seed: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(RecipeError, match="YAML"):
        load_recipe(path)


def test_missing_recipe_suggests_a_builtin():
    with pytest.raises(RecipeError, match=r"recipe 'heavvy' not found.*did you mean 'heavy'\?"):
        load_recipe("heavvy")


def test_overrides_reach_into_sections():
    recipe = load_recipe("light", {"seed": 5, "copies": 0, "output.format": "png", "output.size": None})
    assert (recipe.seed, recipe.copies, recipe.output.format, recipe.output.size) == (5, 0, "png", None)
    with pytest.raises(RecipeError, match=r"output\.quality"):
        load_recipe("light", {"output.quality": 0})


def test_albumentations_is_imported_without_torch_or_the_hub_client_which_stay_importable():
    import subprocess
    import sys

    code = ("import sys; from augexpand.recipe import import_albumentations; A = import_albumentations(); "
            "print(sorted(m for m in ('torch', 'huggingface_hub', 'albumentations.pytorch') if m in sys.modules)); "
            "import huggingface_hub, albumentations.pytorch; print(A.HorizontalFlip(p=1.0)(image=__import__("
            "'numpy').arange(6, dtype='uint8').reshape(1, 2, 3))['image'].tolist())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out == ["[]", "[[[3, 4, 5], [0, 1, 2]]]"]


@pytest.mark.parametrize("text, match", [
    # a top-level key twice: YAML would quietly keep copies: 20
    ("copies: 2\nseed: 1\ncopies: 20\n",
     (r"^duplicate key 'copies', already given on line 1: YAML would keep only the last value; give it once "
      r"\(.*r\.yaml, line 3, copies\)$")),
    # a transform's argument twice, in flow style on one line
    ("pipeline:\n  - GaussianBlur: {blur_limit: [3, 5], p: 0.5, p: 1.0}\n",
     r"duplicate key 'p', already given on line 2: .*\(.*r\.yaml, line 2, pipeline\[0\]\.GaussianBlur\.p\)$"),
    # deep inside a OneOf
    (("pipeline:\n  - OneOf:\n      transforms:\n        - HorizontalFlip: {p: 0.5}\n        - GaussianBlur:\n"
      "            p: 0.5\n            p: 1\n"),
     r"duplicate key 'p', already given on line 6: .*line 7, pipeline\[0\]\.OneOf\.transforms\[1\]\.GaussianBlur\.p"),
    # a section twice
    ("mix:\n  mixup: {alpha: 0.2}\nseed: 3\nmix:\n  cutmix: {alpha: 1}\n", r"duplicate key 'mix', .*line 1: .*line 4"),
    # two spellings of one key, as the loader reads them
    ("output: {quality: 90, 'quality': 80}\n", r"duplicate key 'quality', already given on line 1"),
])
def test_a_key_given_twice_is_refused_with_its_line(tmp_path: Path, text: str, match: str):
    with pytest.raises(RecipeError, match=match) as info:
        load_recipe(write(tmp_path, text))
    assert "\n" not in str(info.value)


def test_a_key_given_twice_in_a_pipeline_file_is_refused(tmp_path: Path):
    write(tmp_path, "- HorizontalFlip: {p: 0.5}\n- Rotate: {limit: 10, limit: 30}\n", "pipe.yaml")
    with pytest.raises(RecipeError, match=r"duplicate key 'limit', already given on line 2: .*pipe\.yaml, line 2, "
                                          r"\[1\]\.Rotate\.limit\)$"):
        load_recipe(write(tmp_path, "pipeline: pipe.yaml\n"))


def test_a_key_given_twice_in_a_json_pipeline_file_is_refused(tmp_path: Path):
    import albumentations as A

    A.save(A.Compose([A.Rotate(limit=10, p=1.0)]), str(tmp_path / "pipe.json"))
    text = (tmp_path / "pipe.json").read_text()
    assert load_recipe(write(tmp_path, "pipeline: pipe.json\n")).pipeline  # as A.save wrote it: accepted
    (tmp_path / "pipe.json").write_text(text.replace('"p": 1.0', '"p": 1.0, "p": 0.0', 1))
    with pytest.raises(RecipeError, match=r"^duplicate key 'p' in .*pipe\.json: JSON would keep only the last value"):
        load_recipe(write(tmp_path, "pipeline: pipe.json\n"))


def test_a_yaml_merge_may_still_override_what_it_merges(tmp_path: Path):
    recipe = load_recipe(write(tmp_path, "mix:\n  mixup: &m {alpha: 0.2, count: 10}\n"
                                         "  cutmix: {<<: *m, alpha: 1.0}\n"))
    assert (recipe.mix.mixup.alpha, recipe.mix.cutmix.alpha, recipe.mix.cutmix.count) == (0.2, 1.0, 10)


def test_validate_and_tune_refuse_a_key_given_twice(tmp_path: Path):
    from click.testing import CliRunner

    from augexpand.cli import cli

    path = write(tmp_path, "copies: 2\npipeline: [HorizontalFlip]\ncopies: 3\n")
    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert result.exit_code == 1, result.output
    assert result.output == (f"Error: duplicate key 'copies', already given on line 1: YAML would keep only the last "
                             f"value; give it once ({path}, line 3, copies)\n")
    (tmp_path / "src").mkdir()
    result = CliRunner().invoke(cli, ["tune", str(tmp_path / "src"), "-c", str(path)])
    assert result.exit_code == 2, result.output  # as every --candidate refusal
    assert result.output.strip().splitlines()[-1] == (
        f"Error: Invalid value for --candidate: duplicate key 'copies', already given on line 1: YAML would keep "
        f"only the last value; give it once ({path}, line 3, copies)")
