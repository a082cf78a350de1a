"""Partner groups: mixing partners come from the first image's seeded group, a worker runs a group at once and
decodes each of its images once, and the split into tasks never changes what is made."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

import augexpand.rows as rows_module
from augexpand.expansion import TASKS_PER_WORKER, _tasks, expand
from augexpand.folder import scan_image_folder
from augexpand.plan import MIN_GROUP_CHOICE, PARTNER_GROUP, make_plan
from augexpand.recipe import load_recipe
from tests.conftest import crops, save_rgb

N_PER_CLASS = {"cat": 70, "coffee": 50, "rocket": 30}


@pytest.fixture(scope="module")
def many_src(tmp_path_factory, photos) -> Path:
    """150 different 24x20 crops of three real photos, imbalanced."""
    root = tmp_path_factory.mktemp("many") / "src"
    for name, photo in (("cat", "chelsea"), ("coffee", "coffee"), ("rocket", "rocket")):
        for k, image in enumerate(crops(photos[photo], N_PER_CLASS[name], seed=len(name), size=(24, 20))):
            save_rgb(root / name / f"{name}_{k:02d}.png", image)
    return root


def _mix_recipe(partner: str, **extra) -> dict:
    return {"copies": 2, "pipeline": [{"HorizontalFlip": {"p": 0.5}}], "output": {"size": None, "format": "png"},
            "mix": {"mixup": {"count": 1.0, "partner": partner}, "ricap": {"count": 0.5, "partner": partner}},
            **extra}


def test_groups_partition_the_training_sources(many_src: Path):
    scan = scan_image_folder(many_src)
    plan = make_plan(scan, load_recipe(_mix_recipe("any")), val_fraction=0.2)
    train_groups = Counter(plan.groups[i] for i in plan.train_sources)
    assert sorted(plan.groups) == sorted(plan.train_sources + plan.val_sources)
    assert sum(train_groups.values()) == len(plan.train_sources) == 120
    assert all(PARTNER_GROUP // 2 <= n < 2 * PARTNER_GROUP for n in train_groups.values()), train_groups
    assert not set(train_groups) & {plan.groups[i] for i in plan.val_sources}  # val never shares a group
    # Seeded: the same seed gives the same groups, another seed others.
    again = make_plan(scan, load_recipe(_mix_recipe("any")), val_fraction=0.2)
    other = make_plan(scan, load_recipe(_mix_recipe("any", seed=5)), val_fraction=0.2)
    assert again.groups == plan.groups and other.groups != plan.groups


@pytest.mark.parametrize("partner", ["any", "other", "same"])
def test_partners_come_from_the_group_when_it_has_enough(many_src: Path, partner: str):
    scan = scan_image_folder(many_src)
    plan = make_plan(scan, load_recipe(_mix_recipe(partner)))
    label = [s.label for s in scan.sources]
    mixed = [r for r in plan.rows if r.op in ("mixup", "ricap")]
    assert len(mixed) == 150 + 75
    in_group = 0
    for row in mixed:
        first, partners = row.sources[0], row.sources[1:]
        allowed = [i for i in plan.train_sources if i != first and
                   {"any": True, "same": label[i] == label[first], "other": label[i] != label[first]}[partner]]
        group_choice = [i for i in allowed if plan.groups[i] == plan.groups[first]]
        pool = group_choice if len(group_choice) >= MIN_GROUP_CHOICE else allowed
        assert set(partners) <= set(pool), (row, partner)
        in_group += len(group_choice) >= MIN_GROUP_CHOICE
    assert in_group >= len(mixed) // 2  # the group is the rule, the whole pool the exception


def test_a_worker_decodes_each_image_of_a_group_once(many_src: Path, tmp_path: Path, monkeypatch):
    decoded: Counter = Counter()
    real = rows_module.decode_image

    def counting(path, *args, **kwargs):
        decoded[Path(path).name] += 1
        return real(path, *args, **kwargs)

    monkeypatch.setattr(rows_module, "decode_image", counting)
    summary = expand(many_src, tmp_path / "out", _mix_recipe("any"), workers=1)
    # originals + 2 copies + mixup + ricap, each with partners: 150 * 4.5 rows, 150 * 3.5 + 75 * 3 partner uses.
    assert summary["images_out"] == 150 * 4 + 75
    assert len(decoded) == 150 and set(decoded.values()) == {1}


@pytest.mark.parametrize("workers", [1, 2, 3, 16, 64])
def test_tasks_hold_every_row_once_with_a_source_s_rows_together(many_src: Path, workers: int):
    scan = scan_image_folder(many_src)
    plan = make_plan(scan, load_recipe(_mix_recipe("any")), val_fraction=0.1)
    keyed = _tasks(plan.rows, plan.groups, workers)
    assert all(key == (r.split, plan.groups[r.sources[0]]) for key, task in keyed for r in task)
    tasks = [task for _, task in keyed]
    assert sorted(r.index for task in tasks for r in task) == list(range(len(plan.rows)))
    # Every group is cut into the same number of pieces (at most one per source), enough for TASKS_PER_WORKER
    # tasks per worker in all
    firsts = Counter((r.split, plan.groups[r.sources[0]]) for r in {r.sources[0]: r for r in plan.rows}.values())
    pieces = -(-TASKS_PER_WORKER * workers // len(firsts))
    assert len(tasks) == sum(min(pieces, n) for n in firsts.values())
    assert len(tasks) >= min(TASKS_PER_WORKER * workers, len(scan.sources)) * 3 // 4
    owner = {}
    for k, task in enumerate(tasks):
        assert len({r.split for r in task}) == 1
        assert len({plan.groups[r.sources[0]] for r in task}) == 1
        for r in task:
            assert owner.setdefault(r.sources[0], k) == k  # all rows of a source in one task


def test_the_first_failing_row_is_named_whatever_the_workers(many_src: Path, tmp_path: Path):
    from augexpand.expansion import ExpandError

    recipe = {"pipeline": [{"RandomCrop": {"height": 22, "width": 22}}], "copies": 1, "keep_originals": False}
    messages = set()
    for workers in (1, 2):
        with pytest.raises(ExpandError) as info:
            expand(many_src, tmp_path / f"out{workers}", recipe, workers=workers)
        messages.add(str(info.value))
    assert len(messages) == 1
    assert "150 of 150 images could not be made; first: row 0 from cat/cat_00.png" in messages.pop()


def test_same_bytes_for_any_worker_count_with_groups(many_src: Path, tmp_path: Path):
    from tests.conftest import tree_digest

    for workers in (1, 3):
        expand(many_src, tmp_path / f"w{workers}", _mix_recipe("other"), workers=workers, val_fraction=0.1)
    one, three = (tree_digest(tmp_path / f"w{w}" / split) for w in (1, 3) for split in ("train",))
    assert one == three and len(one) == 135 * 4 + 68 + 1  # images of 4.5 rows per train source + metadata.jsonl
