"""`augexpand preview` (a contact sheet made by expand's own code, decoding only what it shows) and
`augexpand inspect` (class counts of a source or an expanded folder, as a table, JSON and a chart)."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import augexpand.rows
from augexpand.cli import cli
from augexpand.example import example_dir
from augexpand.expansion import expand
from augexpand.folder import IMAGE_EXTENSIONS, decode_image
from augexpand.preview import preview
from tests.helpers_mix import png_folder, records

RECIPE = """\
seed: 4
copies: 1
pipeline:
  - HorizontalFlip: {p: 0.5}
  - RandomBrightnessContrast: {p: 0.5}
mix:
  samplepairing: {count: 0.25}
  mixup: {count: 0.5}
  cutmix: {count: 0.5}
  ricap: {count: 0.25}
oversample: {method: smote, sampling_strategy: auto, k_neighbors: 3}
output: {size: 48, format: png}
"""


def invoke(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE)
    return path


# --------------------------------------------------------------------------------------------------------------
# preview


def test_preview_draws_one_row_per_op_with_the_images_expand_writes(tmp_path, recipe):
    sheet_path = tmp_path / "sheets" / "grid.png"
    result = invoke("preview", "--recipe", recipe, "--example", "-o", sheet_path, "--samples", 3, "--tile", 48,
                    "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert sorted(p.name for p in (tmp_path / "sheets").iterdir()) == ["grid.png"]  # no dataset written

    planned = expand(None, tmp_path / "dry", recipe, workers=1, dry_run=True)["counts"]["per_op"]
    assert [s["op"] for s in summary["ops"]] == list(planned) == [
        "original", "augment", "smote", "samplepairing", "mixup", "cutmix", "ricap"]
    assert all(len(s["samples"]) == 3 and s["planned"] == planned[s["op"]] for s in summary["ops"])

    sheet = decode_image(sheet_path)
    assert sheet.shape == (summary["height"], summary["width"], 3)
    assert 20_000 < sheet_path.stat().st_size < 2_000_000
    tops = [s["y"] for s in summary["ops"]]
    assert tops == sorted(tops) and all(b - a == summary["ops"][0]["height"] for a, b in itertools.pairwise(tops))
    assert tops[-1] + summary["ops"][-1]["height"] <= summary["height"]

    # Each tile is the very image expand writes for that row (tile = output size: no resizing in the sheet).
    expand(None, tmp_path / "out", recipe, workers=1)
    by_row = {r["row"]: r for r in records(tmp_path / "out")}
    for section in summary["ops"]:
        for s in section["samples"]:
            written = by_row[s["row"]]
            assert written["op"] == section["op"] and written["sources"] == s["sources"]
            assert s["soft_label"] == pytest.approx(written["soft_label"])
            assert s["params"].get("lam", 1.0) == pytest.approx(written["lam"])
            y, x = s["tile_at"]
            tile = sheet[y:y + 48, x:x + 48]
            assert np.array_equal(tile, decode_image(tmp_path / "out" / "train" / written["file_name"]))
            if section["op"] == "mixup":
                first, second = s["caption"]
                assert first.startswith("mixup ") and second == f"lam {written['lam']:.2f} on {Path(s['sources'][0]).name}"
                assert all(f"{c} {w:.2f}" in first
                           for c, w in zip(summary["classes"], written["soft_label"]) if round(w, 2) > 0) \
                    or len([w for w in written["soft_label"] if w > 0]) == 1


def test_preview_decodes_only_the_sources_it_shows(tmp_path, monkeypatch):
    src = png_folder(tmp_path / "src", {"astronaut": ("astronaut", 30), "coffee": ("coffee", 20)})
    real = augexpand.rows.decode_image
    decoded = []

    def counting(path, *args, **kwargs):
        decoded.append(Path(path).name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(augexpand.rows, "decode_image", counting)
    summary = preview(src, tmp_path / "grid.png", {"copies": 2, "pipeline": [{"HorizontalFlip": {}}],
                                                    "mix": {"mixup": {}, "ricap": {}}}, samples=2)
    assert [s["op"] for s in summary["ops"]] == ["original", "augment", "mixup", "ricap"]
    # at most 1 + 1 + 2 + 4 sources per sample: a handful of the 50 images
    assert 0 < len(set(decoded)) <= 2 * (1 + 1 + 2 + 4) < 50


def test_preview_same_seed_same_sheet_other_seed_other_samples(tmp_path, recipe):
    a = preview(None, tmp_path / "a.png", recipe, samples=2, tile=48)
    preview(None, tmp_path / "b.png", recipe, samples=2, tile=48)
    c = preview(None, tmp_path / "c.png", recipe, samples=2, tile=48, seed=99)
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    assert [s["row"] for o in a["ops"] for s in o["samples"]] != [s["row"] for o in c["ops"] for s in o["samples"]]


@pytest.mark.parametrize("args, code, message", [
    (["--example", "-o", "{tmp}/grid.txt"], 1, "Error: the sheet's file name must end in .png"),
    (["-o", "{tmp}/grid.png"], 2, "expected SRC (or --example)"),
    (["{src}", "--example", "-o", "{tmp}/grid.png"], 2, "give SRC or --example (not both)"),
    (["{src}", "-o", "{src}/cat/grid.png"], 1, "Error: the sheet {src}/cat/grid.png would be written inside"),
    (["{tmp}/missing", "-o", "{tmp}/grid.png"], 2, "does not exist"),
])
def test_preview_errors(tmp_path, args, code, message):
    src = png_folder(tmp_path / "src", {"cat": ("chelsea", 2)})
    fill = {"tmp": tmp_path, "src": src}
    result = invoke("preview", *(a.format(**fill) for a in args))
    assert result.exit_code == code
    assert message.format(**fill) in result.output
    assert not list(src.rglob("grid.png"))


@pytest.mark.parametrize("command, where, words", [
    # a folder named like the file: os.replace raised IsADirectoryError
    (["preview", "{src}", "-o", "{out}"], "folder.png", "it is a folder"),
    (["inspect", "{src}", "--plot", "{out}"], "folder.png", "it is a folder"),
    # under a file: mkdir raised FileExistsError or NotADirectoryError
    (["preview", "{src}", "-o", "{out}"], "notes.png/grid.png", "notes.png is a file, not a folder"),
    (["inspect", "{src}", "--plot", "{out}"], "notes.png/grid.png", "notes.png is a file, not a folder"),
    (["example", "{out}"], "notes.png/photos", "notes.png is a file, not a folder"),
])
def test_an_output_file_that_cannot_be_written_is_one_line(tmp_path, command, where, words):
    src = png_folder(tmp_path / "src", {"cat": ("chelsea", 2)})
    (tmp_path / "folder.png").mkdir()
    (tmp_path / "notes.png").write_text("mine")
    out = tmp_path / where
    result = invoke(*(a.format(src=src, out=out) for a in command))
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines()[-1].startswith(f"Error: cannot write {out}: ")
    assert words in result.output
    assert (tmp_path / "notes.png").read_text() == "mine" and not list((tmp_path / "folder.png").iterdir())


# --------------------------------------------------------------------------------------------------------------
# inspect


def test_inspect_a_source_folder_counts_by_extension(tmp_path):
    root = tmp_path / "photos"
    for rel in ("cat/a.jpg", "cat/sub/deeper/B.JPG", "cat/not-really-an-image.png", "dog/x.webp", "dog/y.TIFF",
                "dog/.hidden.jpg", "dog/notes.txt", "empty/readme.md", ".thumbs/t.jpg", "root.jpg"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"never decoded")  # counting opens no image
    result = invoke("inspect", root, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["kind"] == "source"
    assert report["counts"] == {"cat": 3, "dog": 2, "empty": 0} and report["total"] == 5
    assert report["imbalance_ratio"] == 1.5 and report["empty_classes"] == ["empty"]
    assert report["ignored_files"] == 2 and report["outside_class_folders"] == 1

    table = invoke("inspect", root).output.splitlines()
    assert table[1].split() == ["class", "images"]
    assert table[2].split() == ["cat", "3"] and table[3].split() == ["dog", "2"] and table[5].split() == ["total", "5"]
    assert "imbalance (largest/smallest class): 1.5" in table[6]


def test_inspect_the_example_dataset_matches_a_hand_count(tmp_path):
    report = json.loads(invoke("inspect", example_dir(), "--json").output)
    by_hand = {d.name: len(list(d.glob("*.jpg"))) for d in sorted(example_dir().iterdir()) if d.is_dir()}
    assert report["counts"] == by_hand and report["imbalance_ratio"] == round(max(by_hand.values()) /
                                                                             min(by_hand.values()), 3)


def test_inspect_an_expanded_folder_matches_a_hand_count_and_plots(tmp_path):
    src = png_folder(tmp_path / "src", {"astronaut": ("astronaut", 6), "cat": ("chelsea", 4), "coffee": ("coffee", 2)})
    dst = tmp_path / "out"
    expand(src, dst, {"copies": 1, "pipeline": [], "mix": {"mixup": {"count": 1}, "cutmix": {"count": 0.5}},
                      "oversample": {"sampling_strategy": "minority"}, "output": {"size": 32, "format": "png"}},
           workers=1, val_fraction=0.25)
    plot = tmp_path / "charts" / "counts.png"
    result = invoke("inspect", dst, "--json", "--plot", plot)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)

    def files(split: str) -> dict[str, int]:
        return {d.name: sum(p.suffix.lower() in IMAGE_EXTENSIONS for p in d.iterdir())
                for d in sorted((dst / split).iterdir()) if d.is_dir()}

    rows = records(dst)
    assert report["kind"] == "expanded" and report["counts"] == files("train")
    assert report["val"] == files("val") == {"astronaut": 2, "cat": 1, "coffee": 1}
    assert report["source"] == {"astronaut": 6, "cat": 4, "coffee": 2}
    assert report["per_op"] == dict(Counter(r["op"] for r in rows)) and report["per_op"]["smote"] == 3  # 4 - 1 training sources after the hold-out
    for c in report["classes"]:
        assert report["per_class_op"][c] == dict(Counter(r["op"] for r in rows if r["label"] == c))
        assert report["soft_counts"][c] == pytest.approx(sum(r["soft_label"][report["classes"].index(c)]
                                                             for r in rows), abs=1e-3)
    n = report["counts"]
    assert report["imbalance_ratio"] == round(max(n.values()) / min(n.values()), 3)
    assert report["imbalance_ratio_source"] == 3.0

    image = decode_image(plot)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and image.shape[0] > 150 and image.shape[1] > 300
    table = invoke("inspect", dst).output.splitlines()
    assert table[1].split()[:5] == ["class", "source", "val", "original", "augment"]
    assert table[5].split()[0] == "total" and table[5].split()[-2] == str(sum(n.values()))
    # DST/train itself reads the same manifest
    assert json.loads(invoke("inspect", dst / "train", "--json").output)["counts"] == report["counts"]


def test_inspect_leaves_out_manifest_lines_that_are_not_records(tmp_path):
    # a hand-edited or damaged metadata.jsonl was a TypeError traceback (or, for a bad line, an error)
    src = png_folder(tmp_path / "src", {"cat": ("chelsea", 3), "coffee": ("coffee", 2)})
    dst = tmp_path / "out"
    expand(src, dst, {"copies": 1, "pipeline": [], "mix": {"mixup": {"count": 1}}, "output": {"size": 32}},
           workers=1, val_fraction=0.3)
    clean = json.loads(invoke("inspect", dst, "--json").output)
    junk = ['[1, 2]', '"text"', '{"label": ["cat"], "op": {}}', '{"label": "cat", "soft_label": "x"}',
            '{"label": "cat", "soft_label": [1e308, 1e308]}', '{"label": 5}', 'not json']
    for split in ("train", "val"):
        with open(dst / split / "metadata.jsonl", "a") as f:
            f.write("\n".join(junk) + "\n")
    result = invoke("inspect", dst, "--json", "--plot", tmp_path / "counts.png")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["counts"] == clean["counts"] and report["soft_counts"] == clean["soft_counts"]
    assert report["val"] == clean["val"] and report["per_op"] == clean["per_op"]
    assert f"{len(junk)} line(s) of train/metadata.jsonl are not records of augexpand: left out" in report["notes"]
    # a card edited by hand: classes that are not a list of names, source counts that are not counts
    card = json.loads((dst / "dataset.json").read_text())
    for classes, source, recipe in ((5, card["counts"]["source"], "x"), (card["classes"], "many", [1])):
        (dst / "dataset.json").write_text(json.dumps({**card, "classes": classes, "recipe": recipe,
                                                      "counts": {**card["counts"], "source": source}}))
        result = invoke("inspect", dst, "--json")
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)["counts"] == clean["counts"]


@pytest.mark.parametrize("make, code, message", [
    (lambda p: p, 2, "Error: Invalid value for DIR: {p} does not exist"),
    (lambda p: (p.write_text("x"), p)[1], 2, "Error: Invalid value for DIR: {p} is not a folder"),
    (lambda p: (p.mkdir(), (p / "a.jpg").write_bytes(b"x"), p)[2], 1, "Error: {p} has no class folders"),
])
def test_inspect_errors(tmp_path, make, code, message):
    path = make(tmp_path / "thing")
    result = invoke("inspect", path)
    assert result.exit_code == code and result.output.strip().splitlines()[-1].startswith(message.format(p=path))
