"""The Python API as the README documents it: names, the plan without a run, progress, errors, the README's code."""

from __future__ import annotations

import contextlib
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import augexpand
from augexpand.folder import decode_image
from augexpand.manifest import read_metadata

ROOT = Path(__file__).resolve().parent.parent
MARKER = "<!-- test: exec -->"


def readme_blocks() -> list[str]:
    """The ```python blocks of README.md that follow the marker line."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.findall(re.escape(MARKER) + r"\n```python\n(.*?)\n```", text, flags=re.DOTALL)


def test_readme_python_blocks_run(tmp_path: Path, monkeypatch):
    from augexpand.example import write_example

    blocks = readme_blocks()
    assert blocks, f"no ```python block marked {MARKER} in README.md"
    write_example(tmp_path / "photos")
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(block, "README.md", "exec"), {"__name__": "__readme__"})  # noqa: S102 -- our README
        assert "Error" not in out.getvalue()
    records = read_metadata(tmp_path / "out" / "train" / "metadata.jsonl")
    assert records and all(decode_image(tmp_path / "out" / "train" / r["file_name"]).ndim == 3 for r in records[:5])


def readme_block_after(phrase: str) -> list[str]:
    """The lines of the first ``` block of README.md after ``phrase``."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(re.escape(phrase) + r".*?\n```[a-z]*\n(.*?)\n```", text, flags=re.DOTALL)
    assert match, f"no block after {phrase!r} in README.md"
    return match.group(1).splitlines()


def test_readme_quick_start_output_and_manifest_line_are_real(tmp_path: Path):
    # The README shows what `augexpand expand --recipe heavy --example out/` prints and one line of the manifest
    # it writes: both must be what the tool makes today (the timing, the workers and the path aside).
    from click.testing import CliRunner

    from augexpand.cli import cli

    result = CliRunner().invoke(cli, ["expand", "--recipe", "heavy", "--example", str(tmp_path / "out"), "-w", "1"])
    assert result.exit_code == 0, result.output

    def same(lines: list[str]) -> list[str]:
        lines = [re.sub(r"\(\d+\.\d s, \d+ images/s, \d+ workers?, seed", "(T, seed", line) for line in lines]
        return [re.sub(r"^wrote \S*out/train/", "wrote out/train/", line) for line in lines]

    assert same(result.output.splitlines()) == same(readme_block_after("Real output of the first command"))
    shown = json.loads(readme_block_after("| `row` | the row's index in the plan |")[0])  # the example line
    written = {r["file_name"]: r for r in read_metadata(tmp_path / "out" / "train" / "metadata.jsonl")}
    assert written[shown["file_name"]] == shown


def test_readme_inspect_output_is_real(tmp_path: Path, monkeypatch):
    # README's (and docs/looking.md's) `augexpand inspect out/` of the example expanded with heavy and a val split.
    from click.testing import CliRunner

    from augexpand.cli import cli

    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    assert runner.invoke(cli, ["expand", "-q", "-r", "heavy", "--example", "out/", "--val-fraction", "0.2",
                               "-w", "1"]).exit_code == 0
    result = runner.invoke(cli, ["inspect", "out/"])
    assert result.exit_code == 0, result.output
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    shown = readme.split("$ augexpand inspect out/ --plot counts.png\n", 1)[1].split("```", 1)[0]
    assert result.output == shown
    looking = (ROOT / "docs" / "looking.md").read_text(encoding="utf-8")
    assert result.output in looking


def test_the_summary_is_the_card_less_its_stamp_plus_the_run(tmp_path: Path):
    # What the README says `--json` (and expand's return value) holds, against dataset.json.
    summary = augexpand.expand(None, tmp_path / "out", "light", overrides={"copies": 0, "output.size": 32}, workers=1)
    card = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert set(card) - set(summary) == {"tool", "format_version", "versions", "layout"}
    assert set(summary) - set(card) == {"dst", "dry_run", "resumed_rows", "shard"}
    assert all(summary[k] == card[k] for k in set(card) & set(summary) if k != "recipe")
    assert Path(summary["recipe"]).name == "light.yaml" and card["recipe"]["copies"] == 0  # the file; resolved


@pytest.mark.parametrize("code", [
    "from augexpand import expand",
    "import augexpand; expand = augexpand.expand; expand = augexpand.expand",
    "import augexpand.expansion; from augexpand import expand",
    "import augexpand.expansion, augexpand.rows, augexpand.plan; import augexpand; expand = augexpand.expand",
    "from augexpand import plan_expansion as expand; import augexpand; expand = augexpand.expand",
])
def test_expand_is_the_function_however_it_is_imported(code: str):
    # A fresh interpreter each time: the import order is what broke this before.
    check = code + "; import inspect, augexpand; assert inspect.isfunction(expand) and expand is augexpand.expand; " \
                   "print(expand.__module__)"
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "augexpand.expansion"


def test_errors_are_exported_and_unknown_names_are_attribute_errors():
    from augexpand.errors import DestinationError, ExpandError, RecipeError, SourceError

    assert augexpand.RecipeError is RecipeError and augexpand.ExpandError is ExpandError
    assert all(issubclass(e, augexpand.AugexpandError) for e in (DestinationError, RecipeError, SourceError))
    assert set(augexpand.__all__) <= set(dir(augexpand))
    with pytest.raises(AttributeError, match="no attribute 'expnad'"):
        augexpand.expnad  # noqa: B018


def test_plan_without_a_run_is_what_expand_makes(small_src: Path, tmp_path: Path, tiny_recipe: Path):
    plan = augexpand.plan_expansion(small_src, tiny_recipe, seed=3)
    assert not (tmp_path / "out").exists()
    tasks = plan.tasks(workers=2)
    assert sorted(r.index for _, rows in tasks for r in rows) == list(range(len(plan.rows)))
    calls = []
    summary = augexpand.expand(small_src, tmp_path / "out", tiny_recipe, seed=3, workers=2,
                               on_progress=lambda done, total: calls.append((done, total)))
    records = read_metadata(tmp_path / "out" / "train" / "metadata.jsonl")
    assert [(r["row"], r["op"], r["file_name"].split("/")[1]) for r in records] == \
        [(r.index, r.op, r.name) for r in plan.rows]
    assert summary["seed"] == 3 and summary["images_out"] == len(plan.rows) == len(records)
    assert summary["fingerprint"] == plan.fingerprint
    dry = plan.summary()
    assert dry["counts"]["per_op"] == summary["counts"]["per_op"] and dry["dry_run"] is True
    json.dumps(dry)  # what --dry-run --json prints
    # progress: starts at 0, grows, ends at the plan's size, one call per finished task and one at the start
    totals = {t for _, t in calls}
    done = [d for d, _ in calls]
    assert totals == {len(plan.rows)} and done[0] == 0 and done[-1] == len(plan.rows) and done == sorted(done)
    assert len(calls) == len(tasks) + 1


def test_seed_argument_is_the_recipe_seed(small_src: Path, tmp_path: Path, tiny_recipe: Path):
    a = augexpand.expand(small_src, tmp_path / "a", tiny_recipe, seed=5, workers=1)
    b = augexpand.expand(small_src, tmp_path / "b", tiny_recipe, overrides={"seed": 5}, workers=1)
    assert a["fingerprint"] == b["fingerprint"]
    first = read_metadata(tmp_path / "a" / "train" / "metadata.jsonl")[-1]["file_name"]
    assert np.array_equal(decode_image(tmp_path / "a" / "train" / first), decode_image(tmp_path / "b" / "train" / first))


@pytest.mark.parametrize("bad", [3, "print", [print]])
def test_a_progress_hook_that_is_not_a_function_is_one_clear_error(small_src: Path, tmp_path: Path, bad):
    with pytest.raises(augexpand.AugexpandError, match=r"on_progress must be a function taking \(done, total\), got"):
        augexpand.expand(small_src, tmp_path / "out", "light", on_progress=bad)
    assert not (tmp_path / "out").exists()


def test_library_errors_are_augexpand_errors(small_src: Path, tmp_path: Path):
    with pytest.raises(augexpand.SourceError, match="does not exist"):
        augexpand.plan_expansion(tmp_path / "nowhere")
    with pytest.raises(augexpand.RecipeError):
        augexpand.plan_expansion(small_src, {"copies": -1})
    with pytest.raises(augexpand.AugexpandError, match="unknown executor 'spark'"):
        augexpand.expand(small_src, tmp_path / "out", "light", executor="spark")


class _BeforeTheFirstStep(Exception):
    pass


def test_readme_and_training_md_train_notes_are_real(tmp_path: Path, monkeypatch):
    # The notes `augexpand train` prints before its first step, on the example expanded with heavy and a val split:
    # the README's walk-through (--size 32) and docs/training.md's automatic choices (no --size). They went stale
    # when heavy's mix counts changed the number of images (176 -> 156) and nothing ran them.
    pytest.importorskip("torch")
    from click.testing import CliRunner

    from augexpand.cli import cli
    from augexpand.train import loop

    def stop(*args, **kwargs):
        raise _BeforeTheFirstStep

    monkeypatch.setattr(loop, "train_one_epoch", stop)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    assert runner.invoke(cli, ["expand", "-q", "-r", "heavy", "--example", "out/", "--val-fraction", "0.2",
                               "-w", "1"]).exit_code == 0

    def notes(*args: str) -> list[str]:
        result = runner.invoke(cli, ["train", "out/", *args, "--device", "cpu", "--workers", "0"])
        assert isinstance(result.exception, _BeforeTheFirstStep), result.output
        return [line for line in result.stderr.splitlines() if line.startswith("note:")]

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    shown = readme.split("$ augexpand train out/ --out runs/tiny --size 32\n", 1)[1].split("note: epoch", 1)[0]
    assert notes("--out", "runs/tiny", "--size", "32") == shown.splitlines()
    training = (ROOT / "docs" / "training.md").read_text(encoding="utf-8")
    shown = training.split("Each automatic choice is a `note:` line when it is made:\n\n```\n", 1)[1].split("```")[0]
    assert notes("--out", "runs/auto") == shown.splitlines()


def test_looking_md_example_and_source_inspect_output_is_real(tmp_path: Path, monkeypatch):
    # docs/looking.md's `augexpand example photos/` then `augexpand inspect photos/`, each command's output as shown
    from click.testing import CliRunner

    from augexpand.cli import cli

    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    made, counted = runner.invoke(cli, ["example", "photos/"]), runner.invoke(cli, ["inspect", "photos/"])
    assert made.exit_code == 0 and counted.exit_code == 0, made.output + counted.output
    looking = (ROOT / "docs" / "looking.md").read_text(encoding="utf-8")
    shown = looking.split("$ augexpand example photos/\n", 1)[1].split("```", 1)[0]
    assert shown == made.output + "$ augexpand inspect photos/\n" + counted.output
