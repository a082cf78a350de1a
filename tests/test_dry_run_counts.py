"""``--dry-run`` counts rows per class by the folder a run writes them to (the argmax of the soft label)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from augexpand.expansion import expand
from augexpand.folder import scan_image_folder
from augexpand.plan import _win_odds, folder_counts, make_plan
from augexpand.recipe import load_recipe


def test_decidable_rows_are_counted_exactly_as_a_run_files_them(small_src: Path, tmp_path: Path):
    # every image mixed with its own class, SamplePairing labelled by its first image: nothing left to chance
    recipe = {"seed": 3, "copies": 1, "output": {"size": 24},
              "mix": {"mixup": {"count": 1, "partner": "same"}, "samplepairing": {"count": 1},
                      "ricap": {"count": 1, "partner": "same"}}}
    dry = expand(small_src, tmp_path / "dry", recipe, workers=1, dry_run=True)
    real = expand(small_src, tmp_path / "real", recipe, workers=1)
    assert dry["counts"]["per_class_op"] == real["counts"]["per_class_op"]
    assert dry["imbalance_ratio"] == real["imbalance_ratio"]


def test_mixed_class_rows_are_counted_by_their_odds(small_src: Path, tmp_path: Path):
    recipe = {"seed": 5, "copies": 0, "output": {"size": 24},
              "mix": {"mixup": {"count": 4, "partner": "other"}, "cutmix": {"count": 4, "partner": "other"}}}
    dry = expand(small_src, tmp_path / "dry", recipe, workers=1, dry_run=True)
    real = expand(small_src, tmp_path / "real", recipe, workers=1)
    for op in ("mixup", "cutmix"):
        assert dry["counts"]["per_op"][op] == real["counts"]["per_op"][op] == 40  # 10 sources x 4
    scan = scan_image_folder(small_src)
    plan = make_plan(scan, load_recipe(recipe), 0.0)
    first_class = plan.counts(scan.classes)
    # by first source, cat (5 of 10 sources) would hold half of the mixup rows; by odds it holds its expected
    # share: its own rows half the time, plus half of the rows whose partner is a cat
    partner_cat = sum(r.op == "mixup" and scan.sources[r.sources[1]].label == 0 for r in plan.rows)
    expected = (first_class["cat"]["mixup"] + partner_cat) / 2
    assert abs(dry["counts"]["per_class_op"]["cat"]["mixup"] - expected) <= 1
    # and a real run lands within chance of it (20 rows flip a fair coin each: sd 2.2)
    assert abs(real["counts"]["per_class_op"]["cat"]["mixup"] - expected) <= 8


@pytest.mark.parametrize("op, pattern, expected", [
    ("mixup", (0, 1), [0.5, 0.5]),
    ("cutmix", (0, 1), None),  # the clipped box is smaller than asked: the first image wins more often
    ("ricap", (0, 1, 1, 1), None),  # three of four crops from one class: that class wins mostly
])
def test_win_odds(op, pattern, expected):
    spec = load_recipe({"mix": {op: {}}}).mix.enabled()[op]
    odds = _win_odds(op, spec, pattern, (32, 32), np.random.default_rng(0))
    assert odds.sum() == pytest.approx(1.0)
    if expected is not None:
        assert odds.tolist() == expected
    elif op == "cutmix":
        assert odds[0] > 0.55
    else:
        assert odds[1] > 0.75


def test_folder_counts_keep_each_ops_total(small_src: Path):
    scan = scan_image_folder(small_src)
    recipe = load_recipe({"seed": 1, "copies": 1, "mix": {"ricap": {"count": 3}}, "output": {"size": 20}})
    plan = make_plan(scan, recipe, 0.0)
    counts = folder_counts(plan, scan, recipe)
    assert sum(c.get("ricap", 0) for c in counts.values()) == sum(r.op == "ricap" for r in plan.rows)
    assert {c: v.get("augment", 0) for c, v in counts.items()} == {"cat": 5, "coffee": 3, "rocket": 2}
