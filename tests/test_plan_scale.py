"""The plan as columns: lazy rows and names equal to the reference naming, uniform partner draws, the tasks."""

from __future__ import annotations

import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from augexpand.expansion import _select, _tasks
from augexpand.folder import ScanResult, Source
from augexpand.manifest import RecordStore
from augexpand.plan import MIN_GROUP_CHOICE, Row, _Names, make_plan
from augexpand.recipe import load_recipe


def synthetic(n: int, classes: int = 3, stems=None, root: Path | None = None) -> ScanResult:
    """A scan of n sources without images (planning reads none); ``root``: empty files there (a val split's size
    estimate looks at their sizes)."""
    names = [f"c{c}" for c in range(classes)]
    stems = stems or [f"img_{i}" for i in range(n)]
    sources = [Source(f"c{i % classes}/{stems[i]}.jpg", i % classes, stems[i], "RGB", 64, 48) for i in range(n)]
    for s in sources if root else []:
        (root / s.rel).parent.mkdir(parents=True, exist_ok=True)
        (root / s.rel).touch()
    return ScanResult(root or Path("/nonexistent"), names, sources)


def mix_recipe(partner: str, count: float = 1.0, seed: int = 0) -> dict:
    return {"seed": seed, "copies": 2, "pipeline": [{"HorizontalFlip": {"p": 0.5}}],
            "mix": {"mixup": {"count": count, "partner": partner}, "ricap": {"count": 0.5, "partner": partner}},
            "output": {"size": 32}}


@pytest.mark.parametrize("stems", [None, ["a", "a__augment_0", "b__mixup_0", "B", "b", "c__augment_0-2"]])
def test_lazy_names_are_the_reference_names(stems, tmp_path: Path):
    n = 6 if stems else 90
    scan = synthetic(n, stems=stems, root=tmp_path)
    plan = make_plan(scan, load_recipe(mix_recipe("any")), val_fraction=0.2)
    names, val_names = _Names(".jpg"), _Names("")
    for row in plan.rows:
        first = scan.sources[row.sources[0]]
        expected = val_names.take(first.stem, "original", ".jpg") if row.split == "val" else \
            names.take(first.stem, row.op)
        assert row.name == expected
    train = [r.name.lower() for r in plan.rows if r.split == "train"]
    assert len(set(train)) == len(train)


def test_rows_behave_as_a_list_of_rows_and_pickle_as_one():
    plan = make_plan(synthetic(60), load_recipe(mix_recipe("other")))
    rows = plan.rows
    assert len(list(rows)) == len(rows) and rows[-1] == list(rows)[-1] and rows[2:4] == [rows[2], rows[3]]
    assert all(isinstance(r, Row) and r.index == i for i, r in enumerate(rows))
    picked = rows.take(np.array([5, 1, 7]))
    assert pickle.loads(pickle.dumps(picked)) == [rows[5], rows[1], rows[7]]
    with pytest.raises(IndexError):
        rows[len(rows)]


@pytest.mark.parametrize("partner", ["any", "same", "other"])
def test_partners_are_uniform_over_what_the_recipe_allows(partner: str):
    scan = synthetic(300, classes=3)
    recipe = load_recipe({"seed": 1, "copies": 0, "keep_originals": False, "pipeline": [],
                          "mix": {"mixup": {"count": 60.0, "partner": partner}}, "output": {"size": 32}})
    plan = make_plan(scan, recipe)
    label = [s.label for s in scan.sources]
    picks: dict[int, Counter] = {}
    for row in plan.rows:
        first, partner_ = row.sources
        assert partner_ != first
        assert {"any": True, "same": label[partner_] == label[first],
                "other": label[partner_] != label[first]}[partner]
        assert plan.groups[partner_] == plan.groups[first]  # groups of ~32 hold >= MIN_GROUP_CHOICE allowed
        picks.setdefault(first, Counter())[partner_] += 1
    # 60 draws per first image over its ~10-31 candidates: no candidate left out, none far too often
    for first, counter in picks.items():
        allowed = [i for i in plan.train_sources if i != first and plan.groups[i] == plan.groups[first] and
                   {"any": True, "same": label[i] == label[first], "other": label[i] != label[first]}[partner]]
        assert len(allowed) >= MIN_GROUP_CHOICE
        assert set(counter) <= set(allowed)
        expected = 60 / len(allowed)
        assert max(counter.values()) < expected + 5 * expected ** 0.5 + 2
    everything = Counter(p for c in picks.values() for p in c.elements())
    chi2 = sum((everything[i] - np.mean(list(everything.values()))) ** 2 for i in everything) / \
        np.mean(list(everything.values()))
    assert chi2 < 2 * len(everything)  # roughly uniform over the partners as a whole


def test_partners_depend_on_the_seed_and_row_only():
    scan = synthetic(200)
    a = make_plan(scan, load_recipe(mix_recipe("any", seed=3)))
    b = make_plan(scan, load_recipe(mix_recipe("any", seed=3)))
    c = make_plan(scan, load_recipe(mix_recipe("any", seed=4)))
    assert list(a.rows) == list(b.rows)
    assert [r.sources for r in a.rows] != [r.sources for r in c.rows]


def test_columns_tasks_equal_list_tasks_in_content(tmp_path: Path):
    plan = make_plan(synthetic(500, classes=4, root=tmp_path), load_recipe(mix_recipe("same")), val_fraction=0.1)
    for workers in (1, 3, 40):
        fast = _tasks(plan.rows, plan.groups, workers)
        slow = _tasks(list(plan.rows), plan.groups, workers)
        assert len(fast) == len(slow)
        as_sets = sorted(sorted(r.index for r in rows) for _, rows in fast)
        assert sorted(r.index for _, rows in fast for r in rows) == list(range(len(plan.rows)))
        assert {key for key, _ in fast} == {key for key, _ in slow}
        assert all(len({(r.split, plan.groups[r.sources[0]]) for r in rows}) == 1 for _, rows in fast)
        assert len(as_sets) == len(fast)
    shard = _select(plan, (2, 3), skip={0, 1, 2})
    assert all(plan.groups[r.sources[0]] % 3 == 1 and r.index > 2 for r in shard)


def test_records_are_kept_as_text_and_read_back_as_they_were():
    made = {i: {"row": i, "split": "val" if i % 3 == 0 else "train", "label": "cät", "soft_label": [0.25, 0.75],
                "lam": 0.1 + i, "sources": [f"a/{i}.jpg"], "written": {"size": i}} for i in (5, 0, 9, 4)}
    records = RecordStore(made)
    assert len(records) == 4 and 9 in records and 7 not in records
    assert records[4] == made[4] and list(records.in_order()) == [made[i] for i in (0, 4, 5, 9)]
    assert (records.count("train"), records.count("val")) == (2, 2)
    records[9] = {**made[9], "split": "train"}  # a row made again replaces its record
    assert (records.count("train"), records.count("val"), len(records)) == (3, 1, 4)
    assert sorted(r["row"] for r in records.values()) == [0, 4, 5, 9]
