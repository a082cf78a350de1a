"""Hostile checkpoints, datasets, options and outputs for `train`, `evaluate` and `tune`: each one is a single
`Error:` line (or a warning where the result is still meaningful), never a traceback, and no user file is lost."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from augexpand.cli import cli
from augexpand.errors import TrainingError
from augexpand.train.checkpoint import load_checkpoint
from augexpand.train.models import build_model, load_backbone_weights
from tests.train_fixtures import tiny_run, write_digits, write_expanded

FAST = ["--size", "16", "--width", "8", "--workers", "0", "--batch-size", "16", "--no-flip"]


def _invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _one_error_line(result, text: str, code: int = 1) -> None:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception, SystemExit)
    lines = [line for line in result.output.splitlines() if not line.startswith(("note:", "warning:"))]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and text in lines[0], result.output


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny real run (1 epoch) on real digits, and a test folder of other digits."""
    return tiny_run(tmp_path_factory.mktemp("hostile_train"), FAST, n=6, mixed=2, epochs=1, test_n=2)


def _with_weights(tmp_path, trained, name, change):
    ckpt = torch.load(trained[1] / "best.pt", weights_only=True)
    ckpt["model"] = {k: change(v) for k, v in ckpt["model"].items()}
    path = tmp_path / name
    torch.save(ckpt, path)
    return path


def _floats(f):
    return lambda v: f(v) if v.is_floating_point() else v


# Each passed weights_only and the shape check, then load_state_dict raised a RuntimeError listing every parameter
# (a traceback of 30 lines), or loaded garbage without a word (integer weights, a complex cast).
@pytest.mark.parametrize(("name", "change", "message"), [
    ("meta.pt", lambda v: v.to("meta"), "tensor 'features.0.weight' is a meta tensor (no data)"),
    ("sparse.pt", lambda v: v.to_sparse() if v.dim() == 1 else v, "tensor 'features.1.weight' is sparse"),
    ("complex.pt", _floats(lambda v: v.to(torch.complex64)), "tensor 'features.0.weight' is of dtype complex64"),
    ("int.pt", lambda v: v.long(), "tensor 'features.0.weight' is int64, its model_args give float32"),
])
def test_a_state_dict_of_tensors_no_model_can_hold_is_one_line(tmp_path, trained, name, change, message):
    dst, _, test = trained
    path = _with_weights(tmp_path, trained, name, change)
    with pytest.raises(TrainingError, match="^checkpoint .*: " + message.replace("(", r"\(").replace(")", r"\)")):
        load_checkpoint(path)
    _one_error_line(_invoke("evaluate", path, test, "--workers", "0"), message)
    _one_error_line(_invoke("train", dst, "-o", tmp_path / "r1", "--init", path, *FAST, "--epochs", "1"), message)
    _one_error_line(_invoke("train", dst, "-o", tmp_path / "r2", "--teacher", path, *FAST, "--epochs", "1"), message)


def test_float64_weights_still_load(tmp_path, trained):
    path = _with_weights(tmp_path, trained, "f64.pt", lambda v: v.double())  # the step counters too
    result = _invoke("evaluate", path, trained[2], "--workers", "0", "-q")
    assert result.exit_code == 0 and result.output.startswith("top-1 accuracy "), result.output


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nan_weights_are_a_warning_in_evaluate_and_refused_as_a_start_or_a_teacher(tmp_path, trained, value):
    dst, _, test = trained
    path = _with_weights(tmp_path, trained, "diverged.pt", _floats(lambda v: torch.full_like(v, value)))
    result = _invoke("evaluate", path, test, "--workers", "0")
    assert result.exit_code == 0, result.output  # a diverged run is still scored (as train leaves it)
    assert f"warning: {path} holds NaN or infinite weights (its run diverged): its predictions mean nothing" \
        in result.output
    message = "tensor 'features.0.weight' holds NaN or infinite values (the run it comes from diverged)"
    _one_error_line(_invoke("train", dst, "-o", tmp_path / "r1", "--init", path, *FAST, "--epochs", "1"), message)
    # the teacher trained the student on NaN targets without a word
    _one_error_line(_invoke("train", dst, "-o", tmp_path / "r2", "--teacher", path, *FAST, "--epochs", "1"), message)
    with pytest.raises(TrainingError, match=f"^weights file {path}: tensor 'features.0.weight' holds NaN"):
        load_backbone_weights(build_model("smallcnn", num_classes=3, width=8), path)


def test_a_refused_teacher_leaves_no_run_that_needs_overwrite(tmp_path, trained):
    dst, run, _ = trained
    bad = _with_weights(tmp_path, trained, "int.pt", lambda v: v.long())
    out = tmp_path / "student"
    _one_error_line(_invoke("train", dst, "-o", out, "--teacher", bad, *FAST, "--epochs", "1"), "is int64")
    # the run folder was left with a config.yaml: the corrected command was told to use --overwrite
    result = _invoke("train", dst, "-o", out, "--teacher", run, *FAST, "--epochs", "1", "-q")
    assert result.exit_code == 0, result.output
    assert (out / "best.pt").is_file() and (out / "config.yaml").is_file()
    other = write_digits(tmp_path / "other", classes=(0, 1), n=3)
    out2 = tmp_path / "student2"
    _one_error_line(_invoke("train", other, "-o", out2, "--teacher", run, *FAST, "--epochs", "1"),
                    "distillation needs the same classes")
    assert not (out2 / "cache").exists() and not (out2 / "config.yaml").exists()  # refused before decoding


@pytest.mark.parametrize(("args", "message"), [
    # each was torch's "value cannot be converted to type float without overflow" traceback at the first step
    (["--lr", "1e308"], "Invalid value for '--lr': 1e+308 is not in the range 0<x<=1e+30."),
    (["--head-lr-mult", "1e308"], "Invalid value for '--head-lr-mult'"),
    (["--weight-decay", "1e308"], "Invalid value for '--weight-decay'"),
    (["--optimizer", "adabound", "--final-lr", "1e308"], "Invalid value for '--final-lr'"),
])
def test_a_rate_that_overflows_float32_is_a_usage_error(tmp_path, args, message):
    result = _invoke("train", tmp_path, "-o", tmp_path / "r", *args)
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "r").exists()


def test_the_cli_bounds_of_rates_are_the_configs():
    from augexpand.train import cli as train_cli
    from augexpand.train import config

    assert (train_cli.MAX_RATE, train_cli.MAX_MULT) == (config.MAX_RATE, config.MAX_MULT)


def test_adams_beta1_of_one_and_adabounds_tiny_gamma(tmp_path, trained):
    dst = trained[0]
    # torch's Adam raised "Invalid beta parameter at index 0: 1.0" (AdaBound its own ValueError) as a traceback
    for optimizer in ("adamw", "adabound"):
        _one_error_line(_invoke("train", dst, "-o", tmp_path / optimizer, *FAST, "--optimizer", optimizer,
                                "--momentum", "1"), f"momentum is {optimizer}'s beta1 and must be below 1, got 1.0")
        assert not (tmp_path / optimizer).exists()
    # AdaBound's bounds final_lr * (1 + 1 / (gamma t)) overflowed float32: they are capped, and the run trains
    result = _invoke("train", dst, "-o", tmp_path / "r", *FAST, "--optimizer", "adabound", "--gamma", "1e-300",
                     "--epochs", "1", "--json")
    assert result.exit_code == 0, result.output
    # SGD may have momentum 1 (torch allows it); the largest rates allowed still run (the run diverges)
    result = _invoke("train", dst, "-o", tmp_path / "s", *FAST, "--momentum", "1", "--lr", "1e30",
                     "--head-lr-mult", "1e6", "--weight-decay", "1e6", "--epochs", "1", "-q")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("name", ["metrics.jsonl", "best.pt", "cache"])
def test_a_folder_or_file_in_place_of_a_run_file_is_named_before_training(tmp_path, trained, name):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained[1], run)
    kept = run / name
    if name == "cache":  # the run's cache folder is a file
        shutil.rmtree(kept)
        kept.write_text("mine")
    else:
        kept.unlink()
        kept.mkdir()
        (kept / "mine.txt").write_text("mine")
    kind = "a file" if name == "cache" else "a folder"
    # was, after an epoch of training, "Error: RUN/.1234-89abcdef.augexpand-tmp: Is a directory" (metrics.jsonl),
    # "Error: RUN/cache: File exists"
    _one_error_line(_invoke("train", "-o", run, "--resume", "--epochs", "2", "-q"),
                    f"{kept} is {kind}, where the run keeps its {name}; move it away")
    _one_error_line(_invoke("train", trained[0], "-o", run, *FAST, "--epochs", "1", "--overwrite", "-q"),
                    f"{kept} is {kind}, where the run keeps its {name}")
    assert (kept.read_text() if name == "cache" else (kept / "mine.txt").read_text()) == "mine"
    assert not list(run.glob(".*tmp"))


def test_tune_never_writes_its_pick_over_a_candidate_recipe_or_its_chart(tmp_path):
    src = write_digits(tmp_path / "src", classes=(0, 1), n=4)
    mine = tmp_path / "mine.yaml"
    mine.write_text("copies: 2\npipeline:\n  - HorizontalFlip: {p: 0.5}\n")
    os_link = tmp_path / "hard.yaml"
    os_link.hardlink_to(mine)
    for out in (mine, tmp_path / "." / "mine.yaml", os_link):
        # the search ran, then -o replaced the user's recipe with the winner (no expansion, here)
        result = _invoke("tune", src, "--only", "-c", mine, "-o", out, "--steps", "10", "-q")
        assert result.exit_code == 2, result.output
        assert result.output.strip().splitlines()[-1] == (
            f"Error: Invalid value for '-o' / '--output': {out} is the --candidate recipe {mine}, which the winner "
            "would replace; write it to another file")
    assert mine.read_text() == "copies: 2\npipeline:\n  - HorizontalFlip: {p: 0.5}\n"
    # the chart was drawn over the recipe just written
    result = _invoke("tune", src, "--only", "-c", "light", "-o", tmp_path / "r.png", "--plot", tmp_path / "r.png")
    assert result.exit_code == 2 and "Error: -o and --plot name the same file" in result.output, result.output
    assert not (tmp_path / "r.png").exists()


@pytest.mark.parametrize("again", ["d0/0_0.png", "d0/./0_0.png", "d0//0_0.png"])
def test_an_image_listed_twice_in_metadata_is_one_line(tmp_path, again):
    import json

    from augexpand.train import data as D

    dst = write_expanded(tmp_path / "dst", classes=(0, 1), n=2, mixed=0, with_val=False)
    meta = dst / "train" / "metadata.jsonl"
    # the second line gives the same image another label: it was trained on twice, once as each class
    meta.write_text(meta.read_text() + json.dumps({"file_name": again, "label": "d1"}) + "\n")
    with pytest.raises(TrainingError, match=rf"metadata.jsonl, line 5: '{again}' is listed again \(first on line 1\)"):
        D.read_split(dst / "train", ["d0", "d1"])
    _one_error_line(_invoke("train", dst, "-o", tmp_path / "r", *FAST, "--epochs", "1"), "is listed again")
    assert not (tmp_path / "r").exists() or not any(p.name != ".lock" for p in (tmp_path / "r").iterdir())


def test_a_checkpoint_whose_pickle_would_unpickle_into_gigabytes_is_refused_unread(tmp_path, trained):
    import io
    import resource
    import zipfile

    from augexpand.train import checkpoint

    buf = io.BytesIO()
    torch.save(torch.load(trained[1] / "best.pt", weights_only=True), buf)
    # 9 MB of pickle opcodes making empty lists, in a list: about 700 MB and 15 s to unpickle (weights_only too)
    bomb = b"\x80\x02](" + b"]" * (9 << 20) + b"e."
    path = tmp_path / "bomb.pt"
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as zin, zipfile.ZipFile(path, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info, bomb if info.filename.endswith("data.pkl") else zin.read(info.filename))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(TrainingError, match=r"holds a pickle of 9 MB besides its tensors, where train writes a few "
                                            r"hundred KB; refused"):
        checkpoint.read_torch_file(path)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # KiB
    _one_error_line(_invoke("evaluate", path, trained[2], "--workers", "0"), "holds a pickle of 9 MB")
    assert checkpoint.read_torch_file(trained[1] / "last.pt")["epoch"] == 1  # a real one, optimizer and all, passes


@pytest.mark.parametrize("key", ["step", "epoch"])
def test_an_infinite_step_or_epoch_in_last_pt_is_one_line(tmp_path, trained, key):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained[1], run)
    ckpt = torch.load(run / "last.pt", weights_only=True)
    ckpt[key] = float("inf")  # int(inf) was an OverflowError traceback
    torch.save(ckpt, run / "last.pt")
    _one_error_line(_invoke("train", "-o", run, "--resume", "--epochs", "2", "-q"),
                    f"{run}/last.pt does not fit this run's model and optimizer: cannot convert float infinity to "
                    "integer; start again with --overwrite")


def test_workers_past_the_cores_are_capped_not_forked(tmp_path, trained, monkeypatch):
    from augexpand import executors
    from augexpand.train import loop

    monkeypatch.setattr(executors, "default_workers", lambda: 1)
    assert loop.loader_workers(100_000) == 1 and loop.loader_workers(0) == 0
    # --workers 100000 forked until the machine gave out (the test ran past 2 minutes and was killed)
    result = _invoke("train", trained[0], "-o", tmp_path / "r", "--size", "16", "--width", "8", "--batch-size", "16",
                     "--no-flip", "--epochs", "1", "--workers", "100000")
    assert result.exit_code == 0, result.output
    assert "note: --workers 100000: at most one data-loading process per core, 1 on this machine" in result.output
    assert "workers: 1\n" in (tmp_path / "r" / "config.yaml").read_text()
    result = _invoke("evaluate", tmp_path / "r", trained[2], "--workers", "100000", "-q")
    assert result.exit_code == 0 and result.output.startswith("top-1 accuracy "), result.output


@pytest.mark.parametrize("name", ["c" * 100_000, "a/../../x", "", ".."])
def test_a_class_in_a_checkpoint_that_no_folder_could_be_named_is_refused(tmp_path, trained, name):
    ckpt = torch.load(trained[1] / "best.pt", weights_only=True)
    ckpt["classes"] = ["d0", name, "d2"]
    path = tmp_path / "c.pt"
    torch.save(ckpt, path)
    result = _invoke("evaluate", path, trained[2], "--workers", "0")
    _one_error_line(result, "is not a folder name (1-255 characters, no '/')")
    assert len(result.output) < 500  # the 100,000-character name was printed in the class mismatch line


def test_tune_on_two_images_a_class_holds_out_every_fold(tmp_path):
    import json

    src = write_digits(tmp_path / "src", classes=(0, 1, 2), n=2)  # the documented minimum: 2 images per class
    # fold 3 of 3 held out nothing: "Error: evaluation folder /tmp/augexpand-tune-.../split2/heldout does not exist"
    result = _invoke("tune", src, "--only", "-c", "light", "--steps", "10", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["proxy"]["folds"] == 2 and summary["proxy"]["held_out"] == 0.5, summary["proxy"]
    none = next(r for r in summary["candidates"] if r["name"] == "none")
    assert none["splits"] >= 2 and none["images"] == 3  # each split holds out one image of each class
    assert all(v in (0.0, 1 / 3, 0.3333, 2 / 3, 0.6667, 1.0) for v in none["scores"].values()), none["scores"]
    result = _invoke("tune", src, "--only", "-c", "light", "--steps", "10", "--folds", "10", "--budget", "0.2")
    assert result.exit_code == 0, result.output
    assert "note: --folds 10: the largest class has 2 different images, so 2 folds" in result.output


def test_tune_refuses_a_folder_of_splits(tmp_path):
    dst = write_expanded(tmp_path / "dst", classes=(0, 1), n=3, mixed=0)
    # scored train/ and val/ as two classes, then failed on a temporary folder's name
    result = _invoke("tune", dst, "-o", tmp_path / "best.yaml")
    _one_error_line(result, f"Error: {dst} holds splits (train, val), not class folders; tune the source images "
                            f"(one folder per class), e.g. {dst / 'train'}")
    assert not (tmp_path / "best.yaml").exists()


@pytest.mark.parametrize("where", ["d0/model.pt", "model.pt"])
def test_evaluate_never_draws_its_default_chart_into_the_folder_it_scores(tmp_path, trained, where):
    import shutil

    test = tmp_path / "test"
    shutil.copytree(trained[2], test)
    ckpt = test / where
    shutil.copyfile(trained[1] / "best.pt", ckpt)
    before = sorted(p.relative_to(test) for p in test.rglob("*"))
    # confusion_test.png was drawn next to the checkpoint: in d0/, an image of class d0 from then on
    result = _invoke("evaluate", ckpt, test, "--workers", "0")
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines()[-1] == (
        f"Error: the confusion matrix would be drawn in {ckpt.parent / 'confusion_test.png'}, inside the evaluation "
        f"folder {test}, whose images are never written to; give --png PATH outside it")
    assert sorted(p.relative_to(test) for p in test.rglob("*")) == before
    result = _invoke("evaluate", ckpt, test, "--workers", "0", "--png", tmp_path / "c.png", "-q")
    assert result.exit_code == 0 and (tmp_path / "c.png").stat().st_size > 1000, result.output


@pytest.mark.parametrize("option", ["--init", "--teacher"])
def test_overwrite_never_deletes_the_checkpoint_it_starts_or_learns_from(tmp_path, trained, option):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained[1], run)
    before = sorted(p.name for p in run.iterdir())
    # the run (best.pt, last.pt, config.yaml, ...) was deleted, then "Error: no checkpoint at RUN/best.pt"
    _one_error_line(_invoke("train", trained[0], "-o", run, option, run / "best.pt", "--overwrite", *FAST,
                            "--epochs", "1"),
                    f"{option} {run / 'best.pt'} is in --out {run}, which --overwrite empties first; copy it out of "
                    "the run folder, or write the new run to another --out")
    assert sorted(p.name for p in run.iterdir()) == before
    assert load_checkpoint(run)["classes"] == ["d0", "d1", "d2"]
