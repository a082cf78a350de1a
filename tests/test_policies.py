"""Augmentation policies: the AutoAugment table, ops that change real pixels, upright variants that never flip,
recipe errors, and byte-identical policy rows for any number of workers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from augexpand import expand
from augexpand.errors import RecipeError
from augexpand.folder import decode_image
from augexpand.policies import AUTOAUGMENT_IMAGENET, OPS, POLICIES, UPRIGHT_ROTATE, UPRIGHT_SHEAR, Policy
from augexpand.recipe import load_recipe
from tests.conftest import tree_digest


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A real photo, read-only like a decoded source in a worker's cache (a policy must not write into it)."""
    from skimage import data

    image = np.ascontiguousarray(data.astronaut()[::4, ::4])  # 128x128: asymmetric, colourful
    image.flags.writeable = False
    return image


def test_autoaugment_is_the_published_imagenet_policy_of_25_two_op_sub_policies():
    assert len(AUTOAUGMENT_IMAGENET) == 25
    for sub in AUTOAUGMENT_IMAGENET:
        assert len(sub) == 2
        for op, probability, level in sub:
            assert op in OPS and 0.0 <= probability <= 1.0
            assert (level is None) == (OPS[op].standard == 0.0) and (level is None or 0 <= level <= 9)
    # spot checks against Cubuk et al. 2019 (torchvision's table): first, a middle one and the last
    assert AUTOAUGMENT_IMAGENET[0] == (("Posterize", 0.4, 8), ("Rotate", 0.6, 9))
    assert AUTOAUGMENT_IMAGENET[13] == (("Invert", 0.6, None), ("Equalize", 1.0, None))
    assert AUTOAUGMENT_IMAGENET[24] == (("Equalize", 0.8, None), ("Equalize", 0.6, None))


@pytest.mark.parametrize("op", [name for name in OPS if name != "Identity"])
def test_every_op_changes_the_pixels_of_a_real_photo_and_leaves_its_input_alone(op: str, photo: np.ndarray):
    policy = Policy("randaugment")
    spec = OPS[op]
    values = [spec.standard, -spec.standard] if spec.signed else [spec.standard]
    outputs = []
    for value in values:
        t = policy.transform(op, value)
        t.set_random_state(np.random.default_rng(0), __import__("random").Random(0))
        out = t(image=photo)["image"]
        assert out.shape == photo.shape and out.dtype == np.uint8
        assert np.abs(out.astype(int) - photo).mean() > 0.3, f"{op} {value} left the photo as it was"
        outputs.append(out)
    if spec.signed:  # the two signs are different images
        assert not np.array_equal(outputs[0], outputs[1])


def test_op_values_follow_the_magnitude():
    ra = Policy("randaugment", num_ops=1, magnitude=30)
    (op, value), = [c for c in ra.draw(np.random.default_rng(3)) if c[0] != "HorizontalFlip"]
    assert abs(value) == pytest.approx(OPS[op].standard)  # magnitude 30 is each op's largest value
    zero = Policy("randaugment", num_ops=3, magnitude=0)
    assert all(v == 0.0 for _, v in zero.draw(np.random.default_rng(4)))
    assert POLICIES["randaugment"].num_ops == 2 and POLICIES["randaugment"].magnitude == 9


@pytest.mark.parametrize("name", list(POLICIES))
def test_upright_variants_never_flip_and_keep_rotations_and_shears_small(name: str, photo: np.ndarray):
    upright, free = Policy(name, keep_orientation=True), Policy(name, keep_orientation=False)
    shear_cap = math.tan(math.radians(UPRIGHT_SHEAR)) + 1e-9
    flips = 0
    for seed in range(1500):
        for op, value in upright.draw(np.random.default_rng(seed)):
            assert op != "HorizontalFlip"
            if op == "Rotate":
                assert abs(value) <= UPRIGHT_ROTATE
            if op in ("ShearX", "ShearY"):
                assert abs(value) <= shear_cap
        flips += any(op == "HorizontalFlip" for op, _ in free.draw(np.random.default_rng(seed)))
    assert 600 < flips < 900  # the free variant flips half of the images

    # On pixels: a row whose only op is the identity gives the photo itself upright, its mirror image when free.
    mirrored = 0
    for seed in range(2000):  # randaugment: two identities are 1 row in 196
        rng = np.random.default_rng(seed)
        if {op for op, _ in upright.draw(np.random.default_rng(seed))} <= {"Identity"}:
            out, ops = upright(photo, rng)
            assert np.array_equal(out, photo), ops
        drawn = [op for op, _ in free.draw(np.random.default_rng(seed))]
        if drawn[:1] == ["HorizontalFlip"] and set(drawn[1:]) <= {"Identity"}:
            out, _ = free(photo, np.random.default_rng(seed))
            assert np.array_equal(out, photo[:, ::-1])
            mirrored += 1
    assert mirrored > 0


def test_a_row_draws_its_ops_from_its_own_generator_only(photo: np.ndarray):
    policy = Policy("trivialaugment")
    a, ops_a = policy(photo, np.random.default_rng(11))
    policy(photo, np.random.default_rng(99))  # another row in between changes nothing
    b, ops_b = policy(photo, np.random.default_rng(11))
    assert ops_a == ops_b and np.array_equal(a, b)


@pytest.mark.parametrize("policy, match", [
    ({"name": "randaugmnt"}, r"unknown policy 'randaugmnt'; did you mean 'randaugment'\?.*policy\.name"),
    ({"name": "autoaugment", "num_ops": 3}, r"num_ops does not apply to autoaugment"),
    ({"name": "trivialaugment", "num_ops": 3},
     r"num_ops does not apply to trivialaugment \(it takes magnitude, keep_orientation\)"),
    ({"name": "randaugment", "magnitude": 31}, r"less than or equal to 30, got 31.*policy\.magnitude"),
    ({"name": "randaugment", "num_ops": 0}, r"greater than or equal to 1, got 0.*policy\.num_ops"),
    ({"name": "randaugment", "magnitudes": 5}, r"unknown key 'magnitudes'; did you mean 'magnitude'\?"),
])
def test_policy_errors_are_one_line_with_the_key(policy: dict, match: str):
    with pytest.raises(RecipeError, match=match) as info:
        load_recipe({"policy": policy})
    assert "\n" not in str(info.value)


def test_policy_rows_are_byte_identical_for_any_worker_count_and_record_their_ops(small_src: Path,
                                                                                  tmp_path: Path):
    recipe = {"seed": 3, "copies": 3, "pipeline": [{"RandomResizedCrop": {"size": "output", "scale": [0.8, 1]}}],
              "policy": {"name": "randaugment", "num_ops": 2, "magnitude": 12}, "output": {"size": 32, "format": "png"}}
    one = expand(small_src, tmp_path / "w1", recipe, workers=1)
    two = expand(small_src, tmp_path / "w2", recipe, workers=2)
    assert one["images_out"] == two["images_out"] == 40
    digest = tree_digest(tmp_path / "w1" / "train")
    assert digest == tree_digest(tmp_path / "w2" / "train") and len(digest) == 41  # 40 images + metadata.jsonl
    records = [json.loads(line) for line in (tmp_path / "w1" / "train" / "metadata.jsonl").read_text().splitlines()]
    augmented = [r for r in records if r["op"] == "augment"]
    for r in augmented:
        ops = json.loads(r["params"])["policy"]
        assert 2 <= len(ops) <= 3 and all(op in OPS for op, _ in ops)  # two ops, and maybe the flip
        assert decode_image(tmp_path / "w1" / "train" / r["file_name"]).shape == (32, 32, 3)
    card = json.loads((tmp_path / "w1" / "dataset.json").read_text())
    assert card["recipe"]["policy"] == {"name": "randaugment", "num_ops": 2, "magnitude": 12,
                                        "keep_orientation": False}


def test_preview_captions_each_policy_tile_with_its_ops(small_src: Path, tmp_path: Path):
    from augexpand.preview import preview

    recipe = {"copies": 1, "policy": {"name": "trivialaugment"}, "output": {"size": 32}}
    report = preview(small_src, tmp_path / "sheet.png", recipe, samples=3, tile=48)
    tiles = next(section for section in report["ops"] if section["op"] == "augment")["samples"]
    assert len(tiles) == 3 and "trivialaugment" in next(s for s in report["ops"] if s["op"] == "augment")[
        "description"]
    for tile in tiles:
        ops = tile["params"]["policy"]
        names = ["flip" if name == "HorizontalFlip" else name for name, _ in ops]
        assert [part.split()[0] for part in tile["caption"][1].split(", ")] == names
