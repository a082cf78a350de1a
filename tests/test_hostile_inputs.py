"""Hostile inputs met through the real command line: a source that changes under a run, and the like. Each ends in
named skips or one ``Error:`` line, never a traceback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import pytest
from click.testing import CliRunner

import augexpand.expansion
from augexpand.cli import cli


@pytest.mark.parametrize("val_fraction", ["0", "0.5"])
@pytest.mark.parametrize("gone", ["cat/cat_1.jpg", "rocket"])
def test_a_source_that_vanishes_after_the_scan_is_a_named_skip(small_src: Path, tmp_path: Path, monkeypatch,
                                                              gone: str, val_fraction: str):
    # the plan's fingerprint stat()ed every source again after the scan: a file deleted in between (a sync, a
    # cleanup job, a user) was a FileNotFoundError traceback before a single image was made
    scan = augexpand.expansion.scan_image_folder

    def scan_then_delete(src, **kwargs):
        result = scan(src, **kwargs)
        target = Path(src) / gone
        shutil.rmtree(target) if target.is_dir() else target.unlink()
        return result

    monkeypatch.setattr(augexpand.expansion, "scan_image_folder", scan_then_delete)
    dst = tmp_path / "dst"
    result = CliRunner().invoke(cli, ["expand", "--copies", "1", "--size", "16", "-w", "1", "--val-fraction",
                                      val_fraction, "--json", str(small_src), str(dst)])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    card = json.loads((dst / "dataset.json").read_text(encoding="utf-8"))
    lost = {"cat/cat_1.jpg"} if gone.endswith(".jpg") else {"rocket/rocket_0.jpg", "rocket/rocket_1.jpg"}
    assert {s["file"] for s in card["skipped"]} == lost
    assert all("No such file or directory" in s["reason"] for s in card["skipped"])
    for split in ("train", "val"):  # every image written decodes, and none came from a vanished file
        manifest = dst / split / "metadata.jsonl"
        for line in manifest.read_text(encoding="utf-8").splitlines() if manifest.exists() else []:
            record = json.loads(line)
            assert not lost & set(record["sources"])
            assert cv2.imread(str(dst / split / record["file_name"])) is not None
