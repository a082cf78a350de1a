"""Hostile and broken checkpoints: every one is a single `Error:` line and a non-zero exit, nothing is built from a
crafted file before it is checked, and a RUN another run is writing is refused."""

from __future__ import annotations

import fcntl
import json
import os
import resource
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

from augexpand.cli import cli
from augexpand.errors import TrainingError
from augexpand.train.checkpoint import load_checkpoint, validate_model_args
from tests.train_fixtures import tiny_run, write_digits

FAST = ["--size", "16", "--width", "8", "--workers", "0", "--batch-size", "16", "--no-flip"]


def _invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _one_error_line(result, start: str) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if not line.startswith(("note:", "warning:"))]
    assert len(lines) == 1 and lines[0].startswith("Error: " + start), result.output


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny real run (2 epochs) and a test folder of other digits."""
    return tiny_run(tmp_path_factory.mktemp("ckpt"), FAST, n=8, mixed=4, epochs=2, test_n=3)


def _crafted(tmp_path, trained, **changes):
    ckpt = torch.load(trained[1] / "best.pt", weights_only=True)
    ckpt.update(changes)
    path = tmp_path / "crafted.pt"
    torch.save(ckpt, path)
    return path


@pytest.mark.parametrize(("content", "message"), [
    (b"", "checkpoint {p} is empty (0 bytes)"),
    (b"hello, not a checkpoint\n", "checkpoint {p} is not a PyTorch file"),
    (b"PK\x03\x04" + b"\0" * 100, "cannot read checkpoint {p}: the file is truncated or damaged"),
])
def test_a_broken_file_is_one_line_everywhere_a_checkpoint_goes(tmp_path, trained, content, message):
    dst, _, test = trained
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    expected = message.format(p=path)
    _one_error_line(_invoke("evaluate", path, test, "--workers", "0"), expected)
    _one_error_line(_invoke("train", dst, "-o", tmp_path / "r1", "--init", path, *FAST), expected)
    _one_error_line(_invoke("train", dst, "-o", tmp_path / "r2", "--teacher", path, *FAST, "--epochs", "1"), expected)
    weights = expected.replace("checkpoint", "weights file", 1)
    _one_error_line(_invoke("train", dst, "-o", tmp_path / "r3", "--weights", path, "--model", "resnet18",
                            *FAST), weights)


def test_a_truncated_real_checkpoint_is_one_line(tmp_path, trained):
    path = tmp_path / "half.pt"
    path.write_bytes((trained[1] / "best.pt").read_bytes()[:5000])
    _one_error_line(_invoke("evaluate", path, trained[2], "--workers", "0"),
                    f"cannot read checkpoint {path}: the file is truncated or damaged")


def test_a_zip_bomb_checkpoint_is_refused_before_it_is_inflated(tmp_path, trained):
    import io
    import zipfile

    # a real checkpoint plus 200 MB of zeros, deflated: a 0.2 MB file (at this ratio, 100 MB would inflate to 100 GB)
    buf = io.BytesIO()
    torch.save({**torch.load(trained[1] / "best.pt", weights_only=True),
                "extra": torch.zeros(200_000_000, dtype=torch.uint8)}, buf)
    path = tmp_path / "bomb.pt"
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as zin, \
            zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zout:
        for name in zin.namelist():
            zout.writestr(name, zin.read(name))
    with pytest.raises(TrainingError, match=r"holds compressed entries, which torch.save never writes; refused"):
        load_checkpoint(path)


def test_pickled_code_is_refused_and_never_runs(tmp_path, trained):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    torch.save({"model": Payload(), "model_args": {"name": "smallcnn", "num_classes": 3}, "classes": []}, path)
    _one_error_line(_invoke("evaluate", path, trained[2], "--workers", "0"),
                    f"checkpoint {path} holds Python objects besides tensors and plain values; refused")
    assert not marker.exists()


@pytest.mark.parametrize(("changes", "message"), [
    # a width that would allocate about 128 GB (and more): refused before anything is built
    ({"model_args": {"name": "smallcnn", "num_classes": 3, "width": 10**6}},
     "model_args.width must be an integer in [1, 256], got 1000000"),
    ({"model_args": {"name": "smallcnn", "num_classes": 10**9, "width": 8}},
     "model_args.num_classes must be an integer in [1, 1000], got 1000000000"),
    # a head of 100 000 classes is a 4 MB file, but evaluate's confusion matrix of it would be 80 GB
    ({"model_args": {"name": "smallcnn", "num_classes": 1001, "width": 8}},
     "model_args.num_classes must be an integer in [1, 1000], got 1001"),
    ({"model_args": {"name": "os.system", "num_classes": 3}}, "model_args.name must be one of smallcnn, resnet18"),
    ({"model_args": {"name": "smallcnn", "num_classes": 3, "width": 8, "inplace": True}},
     "model_args has unknown key(s) 'inplace' for a smallcnn"),
    ({"model_args": {"name": "smallcnn", "num_classes": 3, "width": 16}},
     "tensor 'features.0.weight' has shape (8, 3, 3, 3), its model_args give (16, 3, 3, 3)"),
    ({"model_args": {"name": "resnet18", "num_classes": 3}}, "the weights do not fit its model_args (missing"),
    ({"classes": ["a", "b"]}, "classes must be 3 distinct names"),
    ({"size": 10**6}, "size must be an integer in [8, 1024], got 1000000"),
    ({"model": {"fc.weight": "not a tensor"}}, "'model' is not a state dict"),
])
def test_crafted_model_args_are_checked_before_building(tmp_path, trained, changes, message):
    path = _crafted(tmp_path, trained, **changes)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(TrainingError, match="^checkpoint .*crafted.pt: ") as info:
        load_checkpoint(path)
    assert message in str(info.value)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB: nothing big was allocated
    _one_error_line(_invoke("evaluate", path, trained[2], "--workers", "0"), f"checkpoint {path}: ")


def test_validate_model_args_accepts_what_train_writes():
    assert validate_model_args({"name": "smallcnn", "num_classes": 3, "width": 8}, "x") == \
        {"name": "smallcnn", "num_classes": 3, "width": 8}
    assert validate_model_args({"name": "resnet50", "num_classes": 1000}, "x")["name"] == "resnet50"
    with pytest.raises(TrainingError, match="model_args.width must be an integer"):
        validate_model_args({"name": "smallcnn", "num_classes": 3, "width": True}, "x")


def test_a_width_too_large_is_a_usage_error():
    result = _invoke("train", "x", "-o", "y", "--width", str(10**6))
    assert result.exit_code == 2 and "Invalid value for '--width'" in result.output


def _copy_run(trained, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for p in trained[1].iterdir():
        if p.is_file():
            (run / p.name).write_bytes(p.read_bytes())
    return run


@pytest.mark.parametrize(("make", "message"), [
    (lambda run: (run / "last.pt").write_bytes(b""), "checkpoint {run}/last.pt is empty (0 bytes)"),
    (lambda run: (run / "last.pt").write_text("junk"), "checkpoint {run}/last.pt is not a PyTorch file"),
    # best.pt has no optimizer state
    (lambda run: (run / "last.pt").write_bytes((run / "best.pt").read_bytes()),
     "{run}/last.pt is not the last.pt of a training run (no optimizer state); start again with --overwrite"),
    # a last.pt of another model: the weights do not fit
    (lambda run: torch.save({**torch.load(run / "last.pt", weights_only=True),
                             "model": {"fc.weight": torch.zeros(2, 2)}}, run / "last.pt"),
     "{run}/last.pt does not fit this run's model and optimizer: "),
])
def test_a_bad_last_pt_on_resume_is_one_line(tmp_path, trained, make, message):
    run = _copy_run(trained, tmp_path)
    make(run)
    _one_error_line(_invoke("train", "-o", run, "--resume", "--epochs", "3", "-q"), message.format(run=run))


def test_a_run_another_process_writes_is_refused(tmp_path, trained):
    run = _copy_run(trained, tmp_path)
    fd = os.open(run / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # what a running `augexpand train` holds
    try:
        result = _invoke("train", "-o", run, "--resume", "--epochs", "3", "-q")
        _one_error_line(result, f"{run} is being written by another training run")
        assert "wait for it to finish, or choose another --out" in result.output
    finally:
        os.close(fd)
    assert _invoke("train", "-o", run, "--resume", "--epochs", "3", "-q").exit_code == 0  # released: it goes on


def test_a_single_class_trains_with_one_warning(tmp_path):
    root = write_digits(tmp_path / "one", classes=(4,), n=4)
    result = CliRunner().invoke(cli, ["train", str(root), "-o", str(tmp_path / "run"), "--epochs", "1", *FAST])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if "single class" in line]
    assert warnings == [(f"warning: {root} has a single class (d4): the model will learn nothing useful (it always "
                         "predicts it); a classifier needs at least two classes")]


def test_cli_modules_import_without_a_circle():
    code = "import augexpand.train.cli, sys; print('augexpand.cli' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"  # train/cli.py no longer reaches into augexpand/cli.py


_BOMB = "".join(f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi"))
_BOMB = 'a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x"]\n' + _BOMB  # 9**9 strings once aliases expand


@pytest.mark.parametrize(("text", "message"), [
    (b"\xff\xfe\x00 not UTF-8", "cannot read {run}/config.yaml: it is not UTF-8 text"),
    (b"x: " + b"[" * 50_000 + b"]" * 50_000, "{run}/config.yaml is not a training config"),
    (b"- 1\n- 2\n", "{run}/config.yaml is not a training config"),
    (b"data: [unclosed\n", "{run}/config.yaml is not valid YAML: "),
])
def test_a_hand_edited_config_yaml_on_resume_is_one_line(tmp_path, trained, text, message):
    run = _copy_run(trained, tmp_path)
    (run / "config.yaml").write_bytes(text)
    _one_error_line(_invoke("train", trained[0], "-o", run, "--resume", "--epochs", "3", "-q"), message.format(run=run))
    result = _invoke("train", "-o", run, "--resume", "--epochs", "3", "-q")  # DST read from that config
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.strip().splitlines()[-1] == f"Error: cannot find the dataset of {run} (no readable " \
                                                     f"{run}/config.yaml); give DST"


def test_a_key_given_twice_in_config_yaml_is_refused_on_resume(tmp_path, trained):
    run = _copy_run(trained, tmp_path)
    text = (run / "config.yaml").read_text()
    line = text.splitlines().index(next(x for x in text.splitlines() if x.startswith("lr: "))) + 1
    (run / "config.yaml").write_text(text + "lr: 5.0\n")  # YAML would quietly resume at lr 5
    total = len(text.splitlines()) + 1
    _one_error_line(_invoke("train", trained[0], "-o", run, "--resume", "--epochs", "3", "-q"),
                    f"{run}/config.yaml is not a training config: it gives 'lr' twice (lines {line} and {total}); "
                    f"keep one")
    assert not (run / "summary.json").exists() or json.loads((run / "summary.json").read_text())["epochs"] == 2


def test_a_yaml_alias_bomb_in_config_yaml_is_refused_at_once(tmp_path, trained):
    run = _copy_run(trained, tmp_path)
    (run / "config.yaml").write_text((run / "config.yaml").read_text() + _BOMB)

    def limit():  # a failure must not take the machine's memory with it
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))

    for dst in ([str(trained[0])], []):
        done = subprocess.run([sys.executable, "-m", "augexpand", "train", *dst, "-o", str(run), "--resume", "-q"],
                              capture_output=True, text=True, timeout=120, preexec_fn=limit, check=False)
        assert done.returncode == (1 if dst else 2) and "Traceback" not in done.stderr
        assert done.stderr.strip().splitlines()[-1].startswith(
            f"Error: {run}/config.yaml is not a training config" if dst else "Error: cannot find the dataset")


@pytest.mark.parametrize("text", [
    b"[" * 100_000 + b"\n",  # nested past the JSON parser's recursion
    # rows without the numbers the curves need
    b'{"epoch": 1, "train_loss": "x"}\n\xff\xfe\n{"epoch": 2}\n{"epoch": 2, "train_loss": 1, "train_acc": 0, "val_acc": "x"}\n',
])
def test_a_damaged_metrics_jsonl_on_resume_drops_its_bad_rows(tmp_path, trained, text):
    run = _copy_run(trained, tmp_path)
    (run / "metrics.jsonl").write_bytes(text)
    result = _invoke("train", "-o", run, "--resume", "--epochs", "3", "-q")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [3] and (run / "curves.png").stat().st_size > 1000
