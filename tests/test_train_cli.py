"""`augexpand train` and `augexpand evaluate` through Click: results, one-line errors, help, defaults."""

from __future__ import annotations

import json
import subprocess
import sys

import click
import pytest
import torch
from click.testing import CliRunner

from augexpand.cli import cli
from augexpand.train.cli import TRAIN_OPTIONS, evaluate_command, train_command
from augexpand.train.config import TrainConfig
from tests.train_fixtures import write_digits, write_expanded

FAST = ["--size", "16", "--width", "8", "--workers", "0", "--batch-size", "16", "--no-flip"]


def _invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture
def dst(tmp_path):
    return write_expanded(tmp_path / "dst", classes=(0, 1, 2), n=8, mixed=4)


def test_train_then_evaluate(dst, tmp_path):
    run = tmp_path / "run"
    result = _invoke("train", dst, "--out", run, "--epochs", "4", *FAST, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["model"] == "smallcnn" and summary["epochs"] == 4 and summary["train_images"] == 28
    assert (run / "curves.png").stat().st_size > 1000

    test = write_digits(tmp_path / "test", classes=(0, 1, 2), n=10, offset=60)
    result = _invoke("evaluate", run, test, "--workers", "0", "--json")
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout)
    assert scores["images"] == 30 and sum(map(sum, scores["confusion"])) == 30
    assert scores["accuracy"] == pytest.approx(sum(scores["confusion"][i][i] for i in range(3)) / 30)
    assert scores["per_class"]["d1"]["images"] == 10
    assert (run / "confusion_test.png").is_file()

    result = _invoke("evaluate", run, test, "--workers", "0")
    assert result.exit_code == 0
    assert result.output.startswith(f"top-1 accuracy {scores['accuracy']:.4f} on 30 images")
    assert "confusion matrix (rows: true class, columns: predicted class)" in result.output

    # a subset of the classes is fine; an unknown class is a mismatch
    result = _invoke("evaluate", run, write_digits(tmp_path / "sub", classes=(2,), n=3), "--workers", "0", "-q")
    assert result.exit_code == 0 and "on 3 images" in result.output
    result = _invoke("evaluate", run, write_digits(tmp_path / "other", classes=(2, 9), n=2), "--workers", "0")
    assert result.exit_code == 1
    assert "Error: class mismatch:" in result.output and "'d9' that the training set does not have" in result.output


def test_summary_line_and_resume_without_dst(dst, tmp_path):
    run = tmp_path / "run"
    result = _invoke("train", dst, "-o", run, "--epochs", "1", *FAST, "-q")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("best val acc ") and "smallcnn at 16x16 on 28 images" in result.output
    first = json.loads((run / "summary.json").read_text())
    result = _invoke("train", "-o", run, "--resume", "--epochs", "2", "-q")
    assert result.exit_code == 0, result.output
    assert "at epoch" in result.output and "of 2" in result.output
    steps = first["steps"]
    assert f"{2 * steps} steps ({steps} step{'s' if steps > 1 else ''} after resuming) in" in result.output


@pytest.mark.parametrize(("args", "message"), [
    (["train", "{tmp}/empty", "-o", "{tmp}/r"], "Error: {tmp}/empty has neither a train/ split nor class folders"),
    (["train", "{tmp}/onlyval", "-o", "{tmp}/r"], "Error: {tmp}/onlyval has no train/ split (it has val)"),
    (["train", "{tmp}/hollow", "-o", "{tmp}/r"], "Error: no images in {tmp}/hollow"),
    (["evaluate", "{tmp}/empty", "{tmp}/hollow"], "Error: no checkpoint at {tmp}/empty/best.pt"),
    (["evaluate", "{tmp}/run", "{tmp}/onlyval"],
     "Error: {tmp}/onlyval holds splits (val), not class folders; evaluate one split, e.g. {tmp}/onlyval/val"),
])
def test_user_errors_are_one_line(tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "onlyval" / "val" / "cat").mkdir(parents=True)
    (tmp_path / "hollow" / "cat").mkdir(parents=True)
    if "{tmp}/run" in args:
        write_digits(tmp_path / "tiny", classes=(0, 1), n=2)
        assert _invoke("train", tmp_path / "tiny", "-o", tmp_path / "run", "--epochs", "1", *FAST).exit_code == 0
    result = _invoke(*[a.format(tmp=tmp_path) for a in args])
    assert result.exit_code == 1, result.output
    assert result.output.startswith(message.format(tmp=tmp_path))
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize(("args", "message"), [
    (["train", "{tmp}/nowhere", "-o", "{tmp}/r"], "Invalid value for DST: {tmp}/nowhere does not exist"),
    (["train", "{tmp}/file", "-o", "{tmp}/r"], "Invalid value for DST: {tmp}/file is not a folder"),
    (["train", "{tmp}/hollow", "-o", "{tmp}/r", "--val", "{tmp}/nope"],
     "Invalid value for --val: {tmp}/nope does not exist"),
    (["train", "{tmp}/hollow", "-o", "{tmp}/r", "--weights", "{tmp}/w.pth"],
     "Invalid value for --weights: {tmp}/w.pth does not exist"),
    (["train", "{tmp}/hollow", "-o", "{tmp}/r", "--teacher", "{tmp}/t"],
     "Invalid value for --teacher: {tmp}/t does not exist"),
    (["evaluate", "{tmp}/norun", "{tmp}/hollow"], "Invalid value for RUN: {tmp}/norun does not exist"),
    (["evaluate", "{tmp}/file", "{tmp}/nope"], "Invalid value for DIR: {tmp}/nope does not exist"),
    (["inspect", "{tmp}/nope"], "Invalid value for DIR: {tmp}/nope does not exist"),
])
def test_a_missing_path_is_a_usage_error_exit_2_like_expand(tmp_path, args, message):
    (tmp_path / "hollow" / "cat").mkdir(parents=True)
    (tmp_path / "file").write_text("x")
    result = _invoke(*[a.format(tmp=tmp_path) for a in args])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines()[-1] == "Error: " + message.format(tmp=tmp_path)
    assert "Traceback" not in result.output and not (tmp_path / "r").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_gpu_asked_for_but_absent(dst, tmp_path):
    result = _invoke("train", dst, "-o", tmp_path / "r", "--device", "cuda", *FAST)
    assert result.exit_code == 1
    assert result.output.startswith("Error: --device cuda asked for a CUDA GPU, but torch")
    assert "use --device cpu" in result.output


@pytest.mark.parametrize(("args", "message"), [
    (["--label-smoothing", "1.5"], "Invalid value for '--label-smoothing'"),
    (["--device", "tpu"], "expected auto, cpu, cuda, cuda:N or mps, got 'tpu'"),
    (["--model", "vgg"], "Invalid value for '-m' / '--model'"),
    (["--resume", "--overwrite"], "--resume and --overwrite cannot be used together"),
    # both name the starting weights (the error was the weights not fitting the --init run's model)
    (["--weights", "{dst}/dataset.json", "--init", "{dst}"], "--weights and --init cannot be used together"),
    (["--seed", str(10**30)], "Invalid value for '--seed'"),  # was torch.manual_seed's overflow traceback
])
def test_bad_flags_are_usage_errors(dst, tmp_path, args, message):
    result = _invoke("train", dst, "-o", tmp_path / "r", *[a.format(dst=dst) for a in args])
    assert result.exit_code == 2
    assert message in result.output


def test_an_explicit_width_or_model_that_the_init_run_contradicts_is_a_usage_error(dst, tmp_path):
    source = tmp_path / "source"
    result = _invoke("train", dst, "-o", source, "--epochs", "1", *FAST, "-q")  # a smallcnn of width 8
    assert result.exit_code == 0, result.output
    common = ["--epochs", "1", "--size", "16", "--workers", "0", "--batch-size", "16", "--no-flip", "--json"]
    # --width 16 (or --model resnet18) given, the --init run fixes 8 (smallcnn): was trained at width 8 silently
    for given, message in ((["--width", "16"], f"--width 16 does not match --init {source}, a smallcnn of width 8"),
                           (["-m", "resnet18"], f"--model resnet18 does not match --init {source}, a smallcnn")):
        result = _invoke("train", dst, "-o", tmp_path / "r", "--init", source, *given, "--epochs", "1")
        assert result.exit_code == 2, result.output
        assert result.output.strip().splitlines()[-1] == f"Error: {message}; leave it out to use the run's"
        assert "note:" not in result.output  # no "training size ... from the --init checkpoint" before it
        assert "Traceback" not in result.output and not (tmp_path / "r" / "last.pt").exists()
    # the same value, or none, takes the --init run's
    for i, given in enumerate((["--width", "8", "-m", "smallcnn"], [], ["-m", "auto"])):
        run = tmp_path / f"ok{i}"
        result = _invoke("train", dst, "-o", run, "--init", source, *given, *common)
        assert result.exit_code == 0, result.output
        ckpt = torch.load(run / "best.pt", weights_only=True)
        assert ckpt["model_args"] == {"name": "smallcnn", "num_classes": 3, "width": 8}


def test_an_absurd_batch_or_repeats_is_refused_not_allocated(dst, tmp_path):
    # -b 10**8 on 28 images: the automatic --min-steps passes made epochs of billions of indices (a hang)
    result = _invoke("train", dst, "-o", tmp_path / "r", *FAST, "--batch-size", str(10**8))
    assert result.exit_code == 2 and "Invalid value for '-b' / '--batch-size'" in result.output
    result = _invoke("train", dst, "-o", tmp_path / "r", *FAST, "--repeats", str(10**9), "--epochs", "1", "-q")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.strip() == ("Error: --repeats 1000000000 passes over 28 images make epochs of "
                                     "28,000,000,000 images; at most 10,000,000")


@pytest.mark.parametrize("cache", ["--cache", "--no-cache"])
def test_a_file_whose_header_passes_but_does_not_decode_is_skipped_not_fatal(tmp_path, cache):
    from PIL import Image

    root = write_digits(tmp_path / "plain", classes=(0, 1), n=4)
    test = write_digits(tmp_path / "test", classes=(0, 1), n=3, offset=40)
    for folder in (root, test):  # a 32-bit float TIFF: Pillow reads its header, OpenCV cannot decode it
        Image.new("F", (16, 16)).save(folder / "d1" / "float.tif")
    run = tmp_path / "run"
    result = _invoke("train", root, "-o", run, "--epochs", "2", *FAST, cache, "--json")
    assert result.exit_code == 0, result.output
    assert "warning: skipped d1/float.tif: OpenCV cannot decode it" in result.stderr  # named as expand names it
    result = _invoke("evaluate", run, test, "--workers", "0", "--json")
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout)
    assert scores["images"] == 6 and sum(map(sum, scores["confusion"])) == 6
    assert "warning: skipped d1/float.tif: OpenCV cannot decode it" in result.stderr


@pytest.mark.parametrize("cache", ["--cache", "--no-cache"])
def test_unreadable_files_are_named_as_expand_names_them_and_listed_in_summary_json(tmp_path, cache):
    from augexpand.folder import scan_image_folder

    root = write_digits(tmp_path / "plain", classes=(0, 1), n=4, ext=".jpg")
    whole = (root / "d0" / "0_0.jpg").read_bytes()
    (root / "d0" / "cut.jpg").write_bytes(whole[:len(whole) // 2])  # a truncated JPEG
    (root / "d1" / "empty.jpg").write_bytes(b"")
    expand_says = [{"file": s.rel, "reason": s.reason} for s in scan_image_folder(root).skipped]
    assert [s["file"] for s in expand_says] == ["d0/cut.jpg", "d1/empty.jpg"]
    run = tmp_path / "run"
    result = _invoke("train", root, "-o", run, "--epochs", "1", *FAST, cache)
    assert result.exit_code == 0, result.output
    assert [line for line in result.stderr.splitlines() if "skipped" in line] == \
        [f"warning: skipped {s['file']}: {s['reason']}" for s in expand_says]
    assert f"skipped 2 file(s), each named above with its reason (and in {run}/summary.json)" in result.stdout
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    assert summary["train_images"] == 8
    assert summary["skipped"] == [{**s, "split": "train"} for s in expand_says]
    # --resume (a reused cache) names them again, as the line under the summary says, and lists them again
    result = _invoke("train", "-o", run, "--resume", "--epochs", "2", "--workers", "0")
    assert result.exit_code == 0, result.output
    assert [line for line in result.stderr.splitlines() if "skipped" in line] == \
        [f"warning: skipped {s['file']}: {s['reason']}" for s in expand_says]
    assert json.loads((run / "summary.json").read_text(encoding="utf-8"))["skipped"] == summary["skipped"]

    test = write_digits(tmp_path / "test", classes=(0, 1), n=3, offset=40, ext=".jpg")
    (test / "d1" / "cut.jpg").write_bytes(whole[:len(whole) // 2])
    result = _invoke("evaluate", run, test, "--workers", "0", "--json")
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout)
    assert scores["images"] == 6 and sum(map(sum, scores["confusion"])) == 6  # the rest is scored
    [reason] = [s.reason for s in scan_image_folder(test).skipped]
    assert result.stderr.splitlines() == [f"warning: skipped d1/cut.jpg: {reason}"]
    assert scores["skipped"] == [{"file": "d1/cut.jpg", "reason": reason}]


def test_skipped_files_of_an_expanded_dataset_are_named_from_it_by_split(dst, tmp_path):
    (dst / "val" / "d2" / "empty.png").write_bytes(b"")
    (dst / "train" / "d0" / "extra.png").write_bytes(b"not a png")  # not in metadata.jsonl: not read
    run = tmp_path / "run"
    result = _invoke("train", dst, "-o", run, "--epochs", "1", *FAST)
    assert result.exit_code == 0, result.output
    assert "warning: skipped val/d2/empty.png: empty file (0 bytes)" in result.stderr.splitlines()
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    assert summary["skipped"] == [{"file": "val/d2/empty.png", "reason": "empty file (0 bytes)", "split": "val"}]
    assert summary["train_images"] == 28


@pytest.mark.parametrize("option", ["--warmup-epochs", "--lr", "--kd-temperature", "--weight-decay"])
def test_an_infinite_number_is_refused(dst, tmp_path, option):
    result = _invoke("train", dst, "-o", tmp_path / "r", *FAST, "--epochs", "1", option, "inf")
    assert "Traceback" not in result.output, result.output
    if option in ("--lr", "--weight-decay"):  # bounded options: above their range, a usage error
        assert result.exit_code == 2 and f"Invalid value for '{option}': inf is not in the range" in result.output
    else:
        assert result.exit_code == 1, result.output
        assert result.output.strip().endswith("Input should be a finite number (got inf)")


def test_a_diverged_run_still_prints_valid_json(dst, tmp_path):
    result = _invoke("train", dst, "-o", tmp_path / "r", *FAST, "--epochs", "2", "--lr", "1e30", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout, parse_constant=lambda name: pytest.fail(f"{name} in the JSON"))
    assert summary["last_train_loss"] is None  # NaN: the run diverged
    result = _invoke("evaluate", tmp_path / "r", dst / "val", "--workers", "0", "--json")
    assert result.exit_code == 0, result.output
    json.loads(result.stdout, parse_constant=lambda name: pytest.fail(f"{name} in the JSON"))


def _strict_json_files(run) -> dict[str, list]:
    """Every JSON and JSON-lines file in RUN, parsed as strict JSON (NaN and Infinity are not JSON)."""
    def refuse(name):
        raise AssertionError(f"{name} in a JSON file of {run}")

    parsed = {}
    for path in sorted(run.rglob("*.json*")):
        lines = path.read_text().splitlines() if path.suffix == ".jsonl" else [path.read_text()]
        parsed[path.name] = [json.loads(line, parse_constant=refuse) for line in lines if line.strip()]
    return parsed


@pytest.mark.parametrize("val", [True, False], ids=["with-val", "no-val"])
def test_a_diverged_run_writes_valid_json_files_and_resumes(tmp_path, val):
    data = write_expanded(tmp_path / "dst", n=8, mixed=4, with_val=val)
    run = tmp_path / "r"
    result = _invoke("train", data, "-o", run, *FAST, "--epochs", "2", "--lr", "1e30")
    assert result.exit_code == 0, result.output
    files = _strict_json_files(run)
    assert {"summary.json", "metrics.jsonl"} <= set(files)
    assert files["summary.json"][0]["last_train_loss"] is None  # NaN: the run diverged
    assert [m["train_loss"] for m in files["metrics.jsonl"]] == [None, None]
    assert [m["val_loss"] is None for m in files["metrics.jsonl"]] == [True, True]
    # --resume reads those rows back (a null loss is a diverged epoch, not a damaged row), also with nothing to do
    result = _invoke("train", "-o", run, "--resume", "--epochs", "2")
    assert result.exit_code == 0, result.output
    assert ("last train loss nan" in result.output) != val
    result = _invoke("train", "-o", run, "--resume", "--epochs", "3")
    assert result.exit_code == 0, result.output
    files = _strict_json_files(run)
    assert [m["epoch"] for m in files["metrics.jsonl"]] == [1, 2, 3] and files["summary.json"][0]["epochs"] == 3
    assert ("last train loss nan" in result.output) != val


def test_ctrl_c_during_training_is_one_line_exit_130_and_resumable(dst, tmp_path):
    import re
    import signal
    import time

    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "augexpand", "train", str(dst), "-o", str(run), *FAST,
                             "--epochs", "1000", "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # noqa: PLW1509 -- even if CI ignores it
    try:
        deadline = time.monotonic() + 120
        while not (run / "last.pt").is_file() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)  # into a later epoch
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err  # 128 + SIGINT, as tune; was Click's "Aborted!" (exit 1)
    assert "Traceback" not in err and "Aborted!" not in err and out == ""
    last = err.strip().splitlines()[-1]
    match = re.fullmatch(rf"Error: interrupted at step (\d+) of 2000; {re.escape(str(run))}/last\.pt \(step (\d+), "
                         r"the end of epoch (\d+)\) is kept: run again with --resume to continue", last)
    assert match, err
    at, kept, epoch = map(int, match.groups())
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert (ckpt["step"], ckpt["epoch"]) == (kept, epoch) and kept == 2 * epoch and kept <= at < 2000
    result = _invoke("train", "-o", run, "--resume", "--epochs", str(epoch + 1), "-q", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["resumed_at_step"] == kept


@pytest.mark.parametrize("where", ["first epoch", "cache"])
def test_ctrl_c_before_anything_was_kept_says_so(dst, tmp_path, monkeypatch, where):
    from augexpand.train import data as D
    from augexpand.train import loop

    def one_step_then_ctrl_c(*args, **kwargs):
        args[6].step += 1  # the schedule: one optimizer step made
        raise KeyboardInterrupt

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    if where == "first epoch":
        monkeypatch.setattr(loop, "train_one_epoch", one_step_then_ctrl_c)
        expected = ("interrupted at step 1 of 20, before the first epoch ended: nothing was kept; start again with "
                    "--overwrite")
    else:
        monkeypatch.setattr(D, "build_cache", ctrl_c)
        expected = "interrupted before training started: nothing was kept"
    run = tmp_path / "run"
    result = _invoke("train", dst, "-o", run, *FAST, "--epochs", "10", "-q")
    assert result.exit_code == 130, result.output
    assert result.output.strip().splitlines()[-1] == f"Error: {expected}"
    assert not (run / "last.pt").exists()


def test_a_class_folder_name_that_is_not_utf8_trains_and_evaluates(tmp_path):
    import os

    root = write_digits(tmp_path / "plain", classes=(0, 1), n=4)
    os.rename(root / "d1", os.fsencode(root) + b"/caf\xe9")  # a Latin-1 name: not UTF-8
    run = tmp_path / "run"
    result = _invoke("train", root, "-o", run, "--epochs", "1", *FAST, "-q")
    assert result.exit_code == 0, result.output
    result = _invoke("evaluate", run, root, "--workers", "0")
    assert result.exit_code == 0, result.output
    assert "caf%E9" in result.output and (run / "confusion_plain.png").stat().st_size > 1000


def test_existing_run_is_refused_then_overwritten(dst, tmp_path):
    run = tmp_path / "run"
    assert _invoke("train", dst, "-o", run, "--epochs", "1", *FAST, "-q").exit_code == 0
    result = _invoke("train", dst, "-o", run, "--epochs", "1", *FAST, "-q")
    assert result.exit_code == 1 and "already holds a training run; use --resume" in result.output
    assert _invoke("train", dst, "-o", run, "--epochs", "1", *FAST, "-q", "--overwrite").exit_code == 0
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("keep me")
    result = _invoke("train", dst, "-o", tmp_path / "mine", *FAST, "--overwrite")
    assert result.exit_code == 1 and "is not empty and is not a training run" in result.output
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "keep me"
    # a project folder with a config.yaml of its own is not a run: --overwrite deleted it (and confusion_*.png)
    (tmp_path / "mine" / "config.yaml").write_text("name: my project\nepochs: lots\n")
    (tmp_path / "mine" / "confusion_final.png").write_bytes(b"my figure")
    result = _invoke("train", dst, "-o", tmp_path / "mine", *FAST, "--overwrite")
    assert result.exit_code == 1 and "is not empty and is not a training run" in result.output
    assert (tmp_path / "mine" / "config.yaml").read_text() == "name: my project\nepochs: lots\n"
    assert (tmp_path / "mine" / "confusion_final.png").read_bytes() == b"my figure"
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["config.yaml", "confusion_final.png",
                                                                      "thesis.tex"]


def _tree(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("where", ["dst/train/d0/run", "dst/val", "dst", "plain/d1/run", "plain", "val/run"])
def test_train_never_writes_into_the_images_it_reads(tmp_path, where):
    dst = write_expanded(tmp_path / "dst", classes=(0, 1), n=4, mixed=0)
    plain = write_digits(tmp_path / "plain", classes=(0, 1), n=4)
    val = write_digits(tmp_path / "val", classes=(0, 1), n=2, offset=30)
    data = plain if where.startswith("plain") else dst
    before = {d: _tree(d) for d in (dst, plain, val)}
    result = _invoke("train", data, "-o", tmp_path / where, "--val", val, "--epochs", "1", *FAST, "-q")
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: --out ") and len(result.output.strip().splitlines()) == 1
    assert "never written to" in result.output or "is not empty and is not a training run" in result.output
    assert {d: _tree(d) for d in (dst, plain, val)} == before  # not even a .lock
    assert not any(p.name == ".lock" for d in (dst, plain, val) for p in d.rglob("*"))


def test_evaluate_png_is_checked_before_evaluating(tmp_path):
    write_digits(tmp_path / "tiny", classes=(0, 1), n=2)
    run = tmp_path / "run"
    assert _invoke("train", tmp_path / "tiny", "-o", run, "--epochs", "1", *FAST).exit_code == 0
    test = write_digits(tmp_path / "test", classes=(0, 1), n=2, offset=40)
    (tmp_path / "file").write_text("x")
    before = _tree(test)
    for png, message in [
        (test / "d0" / "cm.png", "would be written inside the evaluation folder"),
        (test, "is a folder"),
        (tmp_path / "nowhere" / "cm.png", "does not exist"),
        (tmp_path / "file" / "cm.png", "is not a folder"),
        (tmp_path / "cm.txt", "must end in .png, .svg or .pdf"),
    ]:
        result = _invoke("evaluate", run, test, "--workers", "0", "--png", png)
        assert result.exit_code == 2, result.output
        assert result.output.strip().splitlines()[-1].startswith("Error: Invalid value for '--png'")
        assert message in result.output and "Traceback" not in result.output
    assert _tree(test) == before and not (tmp_path / "test.png").exists()


def test_missing_torch_is_explained(monkeypatch, dst, tmp_path):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    result = _invoke("train", dst, "-o", tmp_path / "r")
    assert result.exit_code == 1
    assert result.output.strip() == "Error: training needs torch: pip install 'augexpand[train]'"


def test_option_defaults_are_the_config_defaults():
    params = {p.name: p for p in train_command.params}
    unset = getattr(click.core, "UNSET", None)  # Click 8.3 marks "no default" with a sentinel
    for name in TRAIN_OPTIONS:
        assert name in params, name
        default = TrainConfig.model_fields[name].default
        given = None if params[name].default is unset else params[name].default
        assert given == default, f"--{name.replace('_', '-')}: {given} != {default}"


@pytest.mark.parametrize("command", [train_command, evaluate_command])
def test_help_has_an_example(command):
    result = CliRunner().invoke(command, ["--help"])
    assert result.exit_code == 0
    assert "Example:\n    augexpand " in result.output


def test_the_cli_does_not_import_torch_for_help():
    code = "import sys, augexpand.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize("cache", ["--cache", "--no-cache"])
def test_train_and_evaluate_skip_a_decompression_bomb_in_a_raw_folder(tmp_path, cache):
    # In a fresh process: OpenCV reads its pixel limit once, when it loads (the CLI sets it first).
    from skimage import data

    from tests.conftest import crops, save_rgb
    from tests.test_hostile_tree import jpeg_claiming, png_bomb

    src = tmp_path / "raw"
    for cls, photo in (("cat", data.chelsea()), ("coffee", data.coffee())):
        for k, image in enumerate(crops(photo, 4, seed=len(cls), size=(24, 24))):
            save_rgb(src / cls / f"{k}.png", image)
    (src / "cat" / "bomb.png").write_bytes(png_bomb(30000, 30000))  # 900 megapixels claimed: 2.7 GB if decoded
    (src / "coffee" / "wide.jpg").write_bytes(jpeg_claiming(data.coffee()[:64, :64], 65000, 65000))
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "augexpand"]
    trained = subprocess.run([*cmd, "train", str(src), "--out", str(run), "--steps", "2", cache, *FAST, "--json"],
                             capture_output=True, text=True, timeout=300, check=False)
    assert trained.returncode == 0, trained.stderr
    assert json.loads(trained.stdout)["train_images"] == 8
    for name in ("cat/bomb.png", "coffee/wide.jpg"):
        assert any(name in line and "skipped" in line and "limit of 89.5" in line  # from the header: never decoded
                   for line in trained.stderr.splitlines()), trained.stderr
    scored = subprocess.run([*cmd, "evaluate", str(run), str(src), "--workers", "0", "--json"],
                            capture_output=True, text=True, timeout=300, check=False)
    assert scored.returncode == 0, scored.stderr
    assert json.loads(scored.stdout)["images"] == 8 and "Traceback" not in scored.stderr
    assert "bomb.png" in scored.stderr and "wide.jpg" in scored.stderr
