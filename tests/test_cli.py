"""The CLI as users meet it: help, exit codes, one-line errors, --json, and a fast start."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from augexpand.cli import cli


def invoke(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args])


def all_commands() -> list[str]:
    return sorted(cli.commands)


def test_every_command_has_help_with_an_example():
    assert {"expand", "recipes", "validate", "example", "train", "evaluate"} <= set(all_commands())
    for name in all_commands():
        result = invoke(name, "--help")
        assert result.exit_code == 0, name
        assert "Example:" in result.output and "augexpand " in result.output, name
    assert "Example:" in invoke("-h").output


def command_options():
    """(command, option) for every option of every command, train and evaluate included."""
    import click

    for name, command in sorted(cli.commands.items()):
        for param in command.params:
            if isinstance(param, click.Option):
                yield name, param


def test_every_option_says_what_it_does():
    silent = [f"{name} {param.opts[-1]}" for name, param in command_options() if not (param.help or "").strip()]
    assert not silent, f"options without help text: {silent}"


@pytest.mark.parametrize("option", ["--json", "--max-pixels", "--device", "--recipe"])
def test_an_option_of_several_commands_is_worded_the_same_in_each(option):
    helps = {name: param.help for name, param in command_options() if option in param.opts}
    assert len(helps) >= 2, helps
    assert len(set(helps.values())) == 1, helps


def test_version():
    from augexpand import __version__

    result = invoke("--version")
    assert result.exit_code == 0 and __version__ in result.output


def test_expand_prints_a_summary_and_json(small_src: Path, tmp_path: Path, tiny_recipe: Path):
    result = invoke("expand", "-r", tiny_recipe, small_src, tmp_path / "out", "-w", "1")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("Made 45 training images of 32x32 from 10 source images in 3 classes")
    assert any(line.split()[:2] == ["cat", "5"] for line in lines)
    assert "expand:" not in result.output  # no progress bar when not a terminal

    result = invoke("expand", "-r", tiny_recipe, small_src, tmp_path / "out2", "--json", "--seed", "3")
    summary = json.loads(result.stdout)
    assert summary["images_out"] == 45 and summary["seed"] == 3
    assert summary["counts"]["source"] == {"cat": 5, "coffee": 3, "rocket": 2}


def test_expand_flags_override_the_recipe(small_src: Path, tmp_path: Path):
    result = invoke("expand", small_src, tmp_path / "out", "--copies", "1", "--no-originals", "--size", "24x40",
                    "--format", "webp", "--quality", "80", "--json")
    assert result.exit_code == 0, result.output
    files = sorted((tmp_path / "out" / "train").rglob("*.webp"))
    assert len(files) == 10
    from augexpand.folder import decode_image

    assert decode_image(files[0]).shape == (24, 40, 3)


def test_dry_run_prints_counts_and_writes_nothing(small_src: Path, tmp_path: Path):
    result = invoke("expand", "-r", "heavy", small_src, tmp_path / "out", "--dry-run")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Would make 58 training images")  # 10 + 4x10 + mixup 5 + pairing 2.5 -> 3
    assert not (tmp_path / "out").exists()


def test_skipped_files_are_reported_one_line_each(messy_src: Path, tmp_path: Path, tiny_recipe: Path):
    result = invoke("expand", "-r", tiny_recipe, messy_src, tmp_path / "out", "-q")
    assert result.exit_code == 0, result.output
    assert "warning: skipped cat/half.jpg: truncated JPEG (no end-of-image marker)" in result.stderr
    assert "warning: class folder 'broken' has no readable image: left out" in result.stderr
    assert result.stdout == ""  # --quiet

    result = invoke("expand", "-r", tiny_recipe, messy_src, tmp_path / "strict", "--strict")
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1].startswith("Error: broken/only.jpg: truncated file")
    assert "Traceback" not in result.output


@pytest.mark.parametrize("args, code, message", [
    (["expand", "{src}", "{tmp}/o", "-r", "nope"], 1, "Error: recipe 'nope' not found"),
    (["expand", "{tmp}/missing", "{tmp}/o"], 2, "Invalid value for SRC: "),
    (["expand", "{src}"], 2, "expected SRC and DST"),
    (["expand", "{src}", "{tmp}/o", "--workers", "0"], 2, "Invalid value for '-w' / '--workers'"),
    (["expand", "{src}", "{tmp}/o", "--size", "big"], 2, "expected SIZE like 224"),
    # out of range on the command line: the flag is named, not the recipe file's line (it was exit 1)
    (["expand", "{src}", "{tmp}/o", "--size", "9000x224"], 2, "Invalid value for --size: at most 8192"),
    (["expand", "{src}", "{tmp}/o", "--seed", "18446744073709551616"], 2, "Invalid value for '--seed'"),
    (["preview", "{src}", "-o", "{tmp}/g.png", "--seed", "18446744073709551616"], 2, "Invalid value for '--seed'"),
    (["expand", "{src}", "{tmp}/o", "--val-fraction", "nan"], 2, "Invalid value for '--val-fraction'"),
    (["expand", "{src}", "{tmp}/o", "--resume", "--overwrite"], 2, "cannot be used together"),
    (["expand", "{src}", "{src}/cat"], 1, "inside the source"),
    (["expand", "{src}", "{tmp}/full"], 1, "is not empty; use --resume"),
    (["expand", "{src}", "{tmp}/full", "--overwrite"], 1, "refusing to overwrite"),
    (["validate", "{tmp}/bad.yaml"], 1, "unknown transform 'Flipp'"),
    (["example", "{tmp}/full"], 1, "is not empty"),
])
def test_user_errors_are_one_line_with_the_right_exit_code(small_src, tmp_path, args, code, message):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("x")
    (tmp_path / "bad.yaml").write_text("pipeline:\n  - Flipp: {}\n")
    args = [a.format(src=small_src, tmp=tmp_path) for a in args]
    result = invoke(*args)
    assert result.exit_code == code, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    if code == 1:
        assert len(result.output.strip().splitlines()) == 1


def test_recipes_and_validate(tmp_path: Path):
    listed = invoke("recipes")
    assert listed.exit_code == 0
    builtins = ["autoaugment", "autoaugment_upright", "balance", "heavy", "light", "light_upright", "randaugment",
                "randaugment_upright", "trivialaugment", "trivialaugment_upright"]
    assert [line.split()[0] for line in listed.output.splitlines()[:len(builtins)]] == builtins
    names = [r["name"] for r in json.loads(invoke("recipes", "--json").output)]
    assert names == builtins
    for name in builtins:
        assert invoke("validate", name).exit_code == 0, name
    result = invoke("validate", "randaugment_upright")
    assert "policy: randaugment (num_ops 2, magnitude 9, upright); output auto (at most 224x224" in result.output
    result = invoke("validate", "heavy")
    assert result.exit_code == 0 and result.output.startswith("ok: ") and "mix: samplepairing, mixup" in result.output
    info = json.loads(invoke("validate", "balance", "--json").output)
    assert info["ok"] and info["oversample"] == "smote"


def test_example_writes_the_builtin_photos(tmp_path: Path):
    result = invoke("example", tmp_path / "ex")
    assert result.exit_code == 0
    assert "34 images in 4 classes" in result.output
    assert len(list((tmp_path / "ex" / "cat").glob("*.jpg"))) == 14


def test_help_does_not_import_heavy_libraries():
    code = ("import sys; from augexpand.cli import cli; "
            "print(sorted(m for m in ('albumentations', 'torch', 'cv2', 'imblearn', 'sklearn', 'matplotlib') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_python_dash_m_runs_the_cli():
    out = subprocess.run([sys.executable, "-m", "augexpand", "--version"], capture_output=True, text=True, check=False)
    assert out.returncode == 0 and "augexpand" in out.stdout


def test_expand_says_what_size_and_format_auto_became(small_src: Path, tmp_path: Path):
    import cv2

    for path in sorted(small_src.rglob("*.jpg")):  # PNG sources: the builtin recipes write PNG
        assert cv2.imwrite(str(path.with_suffix(".png")), cv2.imread(str(path)))
        path.unlink()
    result = invoke("expand", "-r", "light", small_src, tmp_path / "out", "-w", "1")
    assert result.exit_code == 0, result.output
    note = next(line for line in result.output.splitlines() if line.startswith("output size auto"))
    assert "format auto: png (most training sources are lossless" in note
    assert {p.suffix for p in (tmp_path / "out" / "train").rglob("*") if p.is_file()} == {".png", ".jsonl"}
