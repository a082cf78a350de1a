"""SMOTE-style oversampling: counts exactly as imbalanced-learn's, synthetic pixels between their two sources,
tiny classes, and the random-duplication variant."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from augexpand.expansion import expand
from tests.helpers_mix import NO_PIPELINE, decoded, params_of, png_folder, records

COUNTS = {"astronaut": 7, "cat": 3, "coffee": 2}


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    """astronaut 7, cat 3, coffee 2: 32x32 PNG photo crops."""
    return png_folder(tmp_path_factory.mktemp("over") / "src",
                      {"astronaut": ("astronaut", 7), "cat": ("chelsea", 3), "coffee": ("coffee", 2)})


@pytest.fixture(scope="module")
def two_classes(tmp_path_factory) -> Path:
    """astronaut 8, coffee 3."""
    return png_folder(tmp_path_factory.mktemp("over") / "two", {"astronaut": ("astronaut", 8), "coffee": ("coffee", 3)})


def _imblearn_counts(class_counts: dict[str, int], strategy) -> dict[str, int]:
    from imblearn.utils import check_sampling_strategy

    y = np.repeat(list(class_counts), list(class_counts.values()))
    wanted = check_sampling_strategy(strategy, y, "over-sampling")
    return {c: int(wanted.get(c, 0)) for c in class_counts}


def _smote_recipe(strategy, method: str = "smote", **extra) -> dict:
    return {**NO_PIPELINE, "keep_originals": True,
            "oversample": {"method": method, "sampling_strategy": strategy, "k_neighbors": 5, **extra}}


@pytest.mark.parametrize("strategy", [
    "auto",                                 # every class but the majority up to the majority
    "minority",                             # only the smallest class
    "not majority",                         # the same as auto for over-sampling
    "not minority",                         # every class but the smallest
    "all",                                  # every class (the majority gets 0)
    {"cat": 6, "coffee": 9},                # absolute targets after resampling
    {"coffee": 2},                          # a target equal to the count: nothing to make
])
def test_smote_counts_are_imbalanced_learns(src, tmp_path, strategy):
    summary = expand(src, tmp_path / "out", _smote_recipe(strategy), workers=1, dry_run=True)
    expected = _imblearn_counts(COUNTS, strategy)
    assert summary["oversample_counts"] == expected
    made = {c: ops.get("smote", 0) for c, ops in summary["counts"]["per_class_op"].items()}
    assert made == expected
    assert sum(expected.values()) > 0 or strategy == {"coffee": 2}


@pytest.mark.parametrize("ratio", [0.5, 1.0])
def test_a_float_strategy_on_two_classes(two_classes, tmp_path, ratio):
    summary = expand(two_classes, tmp_path / "out", _smote_recipe(ratio), workers=1, dry_run=True)
    expected = _imblearn_counts({"astronaut": 8, "coffee": 3}, ratio)
    assert summary["oversample_counts"] == expected == {"astronaut": 0, "coffee": round(8 * ratio) - 3}


def test_written_smote_counts_and_pixels_lie_between_their_two_sources(src, tmp_path):
    dst = tmp_path / "out"
    expand(src, dst, _smote_recipe("auto"), workers=1)
    rows = records(dst)
    smote = [r for r in rows if r["op"] == "smote"]
    assert Counter(r["label"] for r in smote) == {"cat": 4, "coffee": 5}  # 7 - 3 and 7 - 2
    assert Counter(r["label"] for r in rows) == {"astronaut": 7, "cat": 7, "coffee": 7}
    for r in smote:
        a_rel, b_rel = r["sources"]
        assert a_rel.split("/")[0] == b_rel.split("/")[0] == r["label"]  # neighbours of the same class
        assert a_rel != b_rel  # the class has other images: the partner is one of them
        a, b = decoded(src, a_rel), decoded(src, b_rel)
        out = decoded(dst / "train", r["file_name"])
        gap = params_of(r)["gap"]
        assert 0.0 <= gap <= 1.0 and r["lam"] == pytest.approx(1 - gap)
        assert (out >= np.minimum(a, b) - 1).all() and (out <= np.maximum(a, b) + 1).all()
        assert np.abs(out - (a + gap * (b - a))).max() <= 1
        assert r["soft_label"] == ([0.0, 1.0, 0.0] if r["label"] == "cat" else [0.0, 0.0, 1.0])


def test_a_class_smaller_than_k_plus_one_still_works(tmp_path):
    src = png_folder(tmp_path / "src", {"astronaut": ("astronaut", 6), "cat": ("chelsea", 2), "coffee": ("coffee", 1)})
    summary = expand(src, tmp_path / "out", _smote_recipe("auto"), workers=1)
    assert summary["counts"]["per_class_op"]["cat"]["smote"] == 4
    assert summary["counts"]["per_class_op"]["coffee"]["smote"] == 5
    assert any("'cat' has 2 images" in n for n in summary["notes"])
    for r in records(tmp_path / "out"):
        if r["op"] != "smote":
            continue
        a, b = r["sources"]
        if r["label"] == "cat":
            assert {a, b} == {"cat/cat_0.png", "cat/cat_1.png"}  # its only neighbour
        else:  # a single image is its own neighbour: the synthetic images are that image
            assert a == b == "coffee/coffee_0.png"
            assert np.array_equal(decoded(tmp_path / "out" / "train", r["file_name"]), decoded(src, a))


def test_random_oversampling_gives_random_over_samplers_counts_and_copies(src, tmp_path):
    from imblearn.over_sampling import RandomOverSampler

    strategy = {"cat": 5, "coffee": 6}
    dst = tmp_path / "out"
    expand(src, dst, _smote_recipe(strategy, method="random"), workers=1)
    y = np.repeat(list(COUNTS), list(COUNTS.values()))
    _, y_res = RandomOverSampler(sampling_strategy=strategy, random_state=0).fit_resample(
        np.arange(len(y)).reshape(-1, 1), y)
    expected = {c: n - COUNTS[c] for c, n in Counter(y_res).items()}
    dups = [r for r in records(dst) if r["op"] == "duplicate"]
    assert {c: n for c, n in Counter(r["label"] for r in dups).items()} == {c: n for c, n in expected.items() if n}
    for r in dups:
        assert np.array_equal(decoded(dst / "train", r["file_name"]), decoded(src, r["sources"][0]))
