"""Job arrays: ``--shard I/N`` runs a deterministic part of the plan into a shared destination; one ``--resume``
without ``--shard`` afterwards gives the same bytes as one uninterrupted run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from augexpand.cli import cli
from augexpand.destination import read_journal
from augexpand.errors import AugexpandError, DestinationError
from augexpand.expansion import expand
from tests.conftest import crops, save_rgb, tree_digest

CARD_VARIES = ("timings", "images_per_second", "workers")  # what differs between two runs of one plan


@pytest.fixture
def many_src(tmp_path: Path, photos) -> Path:
    """105 small real-photo crops in 3 classes: enough for 3 partner groups of about 32 (the unit of a shard)."""
    root = tmp_path / "src"
    for name, photo, n in (("cat", "chelsea", 40), ("coffee", "coffee", 40), ("rocket", "rocket", 25)):
        for k, image in enumerate(crops(photos[photo], n, seed=len(name), size=(24, 20))):
            save_rgb(root / name / f"{name}_{k}.jpg", image, quality=90)
    return root


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    path = tmp_path / "shard.yaml"
    path.write_text("seed: 5\ncopies: 1\npipeline:\n  - HorizontalFlip: {p: 0.5}\n  - RandomBrightnessContrast: {p: 0.5}\n"
                    "mix:\n  mixup: {alpha: 0.4, count: 0.5}\noutput: {size: 16, format: png}\n")
    return path


def run(src, dst, recipe, **kwargs):
    kwargs.setdefault("workers", 1)
    kwargs.setdefault("val_fraction", 0.1)
    return expand(src, dst, recipe, **kwargs)


def same_as_one_run(dst: Path, whole: Path) -> None:
    """Every file byte for byte (images, both metadata.jsonl), and the card but for timings and workers."""
    got, want = tree_digest(dst), tree_digest(whole)
    assert got.pop("dataset.json") and want.pop("dataset.json")
    assert got == want
    cards = [json.loads((d / "dataset.json").read_text()) for d in (dst, whole)]
    for card in cards:
        for key in CARD_VARIES:
            card.pop(key)
    assert cards[0] == cards[1]


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_shards_in_reverse_order_then_resume_give_one_runs_bytes(many_src, tmp_path, recipe):
    whole = run(many_src, tmp_path / "whole", recipe)
    dst = tmp_path / "sharded"
    shards = [run(many_src, dst, recipe, shard=(i, 3)) for i in (3, 2, 1)]
    rows = [s["shard"]["rows"] for s in shards]
    assert all(rows) and sum(rows) == whole["images_out"] + whole["val_images"]  # disjoint, and all of them
    assert [s["shard"]["made"] for s in shards] == rows
    assert not (dst / "dataset.json").exists() and not (dst / "train" / "metadata.jsonl").exists()
    journals = sorted((dst / ".augexpand").glob("journal-*-of-3-*.jsonl"))
    assert len(journals) == 3
    done = [set(read_journal(j)[0]) for j in journals]
    assert sum(map(len, done)) == len(set().union(*done))  # no row made twice

    final = run(many_src, dst, recipe, resume=True)
    assert final["resumed_rows"] == sum(rows) and final["shard"] is None
    same_as_one_run(dst, tmp_path / "whole")
    assert not (dst / ".augexpand").exists()


def test_a_shard_is_the_same_for_any_number_of_workers(many_src, tmp_path, recipe):
    a = run(many_src, tmp_path / "a", recipe, shard=(2, 3), workers=1)
    b = run(many_src, tmp_path / "b", recipe, shard=(2, 3), workers=2)
    assert a["shard"]["rows"] == b["shard"]["rows"]
    digest = [{k: v for k, v in tree_digest(d).items() if ".augexpand" not in k} for d in (tmp_path / "a",
                                                                                         tmp_path / "b")]
    assert digest[0] == digest[1] and len(digest[0]) == a["shard"]["rows"]


def test_two_shards_at_once_as_processes_then_resume(many_src, tmp_path, recipe):
    run(many_src, tmp_path / "whole", recipe)
    dst = tmp_path / "sharded"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "augexpand", "expand", "-r", str(recipe), str(many_src), str(dst), "-w", "1",
           "--val-fraction", "0.1", "--json"]
    procs = [subprocess.Popen([*cmd, "--shard", f"{i}/3"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in (1, 2)]  # shard 3/3 never runs: --resume makes its part
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert "Traceback" not in err
    summaries = [json.loads(out)["shard"] for out, _ in outs]
    assert [(s["index"], s["count"]) for s in summaries] == [(1, 3), (2, 3)]

    final = run(many_src, dst, recipe, resume=True)
    assert final["resumed_rows"] == sum(s["made"] for s in summaries)
    same_as_one_run(dst, tmp_path / "whole")


def test_a_shard_that_starts_while_another_creates_the_state_folder(many_src, tmp_path, recipe, monkeypatch):
    """Two shards started at once: the other one makes dst/.augexpand just after this one looked for it."""
    dst = tmp_path / "out"
    real = Path.mkdir

    def racing(self, *args, **kwargs):
        if self == dst / ".augexpand" and not os.path.lexists(self):
            os.mkdir(self)  # the other shard's mkdir lands first
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", racing)
    made = run(many_src, dst, recipe, shard=(1, 2))
    monkeypatch.undo()
    assert made["shard"]["made"] == made["shard"]["rows"] > 0
    assert (dst / ".augexpand").is_dir()


def test_a_shard_runs_again_without_redoing_its_work(many_src, tmp_path, recipe):
    dst = tmp_path / "out"
    first = run(many_src, dst, recipe, shard=(1, 2))
    again = run(many_src, dst, recipe, shard=(1, 2))
    assert again["shard"]["made"] == 0 and again["shard"]["resumed"] == first["shard"]["rows"]


def test_a_shard_of_another_plan_is_refused(many_src, tmp_path, recipe):
    dst = tmp_path / "out"
    run(many_src, dst, recipe, shard=(1, 3))
    with pytest.raises(DestinationError, match=r"refusing shard 2/3: .* holds a run of another plan"):
        run(many_src, dst, recipe, shard=(2, 3), overrides={"seed": 6})
    with pytest.raises(DestinationError, match="another plan"):
        run(many_src, dst, "light", shard=(2, 3))
    with pytest.raises(DestinationError, match="another plan"):
        run(many_src, dst, recipe, shard=(2, 3), val_fraction=0.2)
    os.utime(many_src / "cat" / "cat_0.jpg", ns=(1, 1))  # a source file changed since
    with pytest.raises(DestinationError, match="another plan"):
        run(many_src, dst, recipe, shard=(2, 3))
    assert len(list((dst / ".augexpand").glob("journal-*"))) == 1  # nothing of theirs was written


def test_a_shard_needs_an_empty_or_augexpand_destination(many_src, tmp_path, recipe):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.txt").write_text("precious")
    with pytest.raises(DestinationError, match="cannot write a shard into .* not written by augexpand"):
        run(many_src, mine, recipe, shard=(1, 2))
    assert sorted(os.listdir(mine)) == ["thesis.txt"]


@pytest.mark.parametrize("value, message", [
    ("0/3", "shard index must be from 1 to 3"),
    ("4/3", "shard index must be from 1 to 3"),
    ("1/0", "the number of shards must be at least 1"),
    ("abc", "expected I/N, e.g. 1/4"),
    ("1/2/3", "expected I/N"),
    ("-1/3", "expected I/N"),
    ("1/99999999999999999999", "at most 1,000,000 shards"),  # was an OverflowError traceback from numpy
    ("1/\u00b2", "expected I/N"),  # a superscript two is a digit to str.isdigit, not to int()
])
def test_bad_shards_are_usage_errors(many_src, tmp_path, value, message):
    result = invoke("expand", many_src, tmp_path / "out", "--shard", value)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and message in result.output
    assert "Error: Invalid value for --shard: " in result.output
    assert not (tmp_path / "out").exists()


def test_shard_with_overwrite_is_a_usage_error(many_src, tmp_path):
    result = invoke("expand", many_src, tmp_path / "out", "--shard", "1/2", "--overwrite")
    assert result.exit_code == 2 and "--shard and --overwrite cannot be used together" in result.output
    with pytest.raises(AugexpandError, match="a shard cannot --overwrite"):
        expand(many_src, tmp_path / "out", shard=(1, 2), overwrite=True)
    with pytest.raises(AugexpandError, match="shard index must be from 1 to 2"):
        expand(many_src, tmp_path / "out", shard=(3, 2))
    with pytest.raises(AugexpandError, match="two integers"):
        expand(many_src, tmp_path / "out", shard=(1.0, 2))
    with pytest.raises(AugexpandError, match="at most 1,000,000 shards"):
        expand(many_src, tmp_path / "out", shard=(1, 2**80))


def test_shard_cli_says_what_it_did(many_src, tmp_path, recipe):
    result = invoke("expand", "-r", recipe, many_src, tmp_path / "out", "--shard", "2/2", "-w", "1")
    assert result.exit_code == 0, result.output
    line = result.output.splitlines()[-1]
    assert line.startswith("shard 2/2: ") and "made now" in line and "--resume" in line
    dry = invoke("expand", "-r", recipe, many_src, tmp_path / "dry", "--shard", "1/2", "--dry-run", "--json")
    assert json.loads(dry.stdout)["shard"]["rows"] > 0 and not (tmp_path / "dry").exists()
