"""Defaults that follow the source data: the training size and model come from the images an expanded set was made
from (dataset.json's source_sizes), a tiny set trains enough optimizer steps, and evaluate's balanced accuracy and
macro-F1 are scikit-learn's."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, f1_score

from augexpand.cli import cli
from augexpand.train import data as D
from augexpand.train.config import make_config
from augexpand.train.evaluate import classification_scores
from augexpand.train.loop import _length, _resolve_size, train
from tests.train_fixtures import write_digits

FAST = ["--width", "8", "--workers", "0", "--batch-size", "16", "--no-flip"]


def _invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def expanded(tmp_path_factory):
    """Real 16x16 digits expanded by the real CLI at 96x96 (6x the side): the case that picked ResNet-18 at 96."""
    root = tmp_path_factory.mktemp("defaults")
    src = write_digits(root / "src", classes=(0, 1), n=6, size=16)
    result = _invoke("expand", "--recipe", "light", src, root / "dst", "--size", "96", "--copies", "1",
                     "--workers", "1", "-q")
    assert result.exit_code == 0, result.output
    return root / "dst"


def test_size_and_model_follow_the_source_not_the_expansion(expanded, tmp_path):
    card = json.loads((expanded / "dataset.json").read_text())
    assert card["source_sizes"]["short_side"]["median"] == 16
    split = D.read_split(expanded / "train", ["d0", "d1"])
    assert D.probe_resolution(split) == 96  # what the files on disk are
    run = tmp_path / "run"
    result = _invoke("train", expanded, "-o", run, "--epochs", "1", *FAST)
    assert result.exit_code == 0, result.output
    summary = json.loads((run / "summary.json").read_text())
    assert summary["size"] == 16 and summary["model"] == "smallcnn"  # not resnet18 at 96
    assert summary["size_from"] == (f"the median short side of the 12 source images (16 px) in "
                                    f"{expanded / 'dataset.json'}")
    assert "note: training size 16x16 from the median short side of the 12 source images" in result.stderr
    assert yaml.safe_load((run / "config.yaml").read_text())["size"] == 16
    assert np.load(run / "cache" / "train_16.npy", mmap_mode="r").shape[1:] == (16, 16, 3)


def test_without_source_sizes_the_training_images_decide(expanded, tmp_path):
    data = tmp_path / "old"
    data.mkdir()
    (data / "train").symlink_to(expanded / "train")
    card = json.loads((expanded / "dataset.json").read_text())
    del card["source_sizes"]  # a card written before source_sizes existed
    (data / "dataset.json").write_text(json.dumps(card))
    split = D.read_split(data / "train", card["classes"])
    config = make_config(data=data, out=tmp_path / "r")
    assert _resolve_size(config, split, None) == (96, "the median short side of the training images (96 px)")
    # an explicit size wins over both
    assert _resolve_size(make_config(data=expanded, out=tmp_path / "r", size=40), split, None) == (40, "--size")
    # a large source is capped at 224
    card["source_sizes"] = {"count": 3, "short_side": {"min": 300, "median": 375, "max": 400}}
    (data / "dataset.json").write_text(json.dumps(card))
    assert _resolve_size(config, split, None)[0] == 224


@pytest.mark.parametrize(("n", "world", "given", "expected"), [
    (50, 1, {}, (20, 32)),  # 50 images in batches of 64: 32 passes (1600 images) make 25 steps per epoch
    (100, 1, {}, (20, 16)),  # 16 passes: 1600 images, 25 steps
    (100, 1, {"min_steps": 520}, (20, 17)),  # 26 steps: 1700 images (26 batches and a kept half batch of 36)
    (50, 2, {}, (20, 63)),  # torchrun, 2 processes: a step takes 2 batches; 49 batches make 25 steps
    (5000, 1, {}, (20, 1)),  # 78 steps per pass: 20 epochs already make 1560 steps
    (50, 1, {"epochs": 3}, (3, 1)),  # an explicit --epochs is honoured as written
    (50, 1, {"steps": 7}, (7, 1)),  # --steps too
    (50, 1, {"repeats": 4}, (20, 4)),
    (50, 1, {"min_steps": 0}, (20, 1)),
])
def test_min_steps_rule(tmp_path, n, world, given, expected):
    config = make_config(data=tmp_path, out=tmp_path, **given)
    epochs, repeats = _length(config, n, world)
    assert (epochs, repeats) == expected
    steps_per_epoch = -(-D.batch_count(n * repeats, 64) // world)
    if not given:
        assert epochs * steps_per_epoch >= 500


def test_repeated_passes_are_fresh_shuffles_of_the_whole_set():
    batches = D.epoch_batches(10, 8, seed=1, epoch=0, repeats=4)
    order = np.concatenate(batches)
    assert len(batches) == 5 and len(order) == 40
    passes = order.reshape(4, 10)
    assert all(sorted(p) == list(range(10)) for p in passes)  # every pass sees every image once
    assert len({tuple(p) for p in passes}) == 4  # each its own permutation
    assert np.array_equal(D.epoch_batches(10, 8, 1, 0, repeats=1)[0], batches[0])  # pass 0 as without repeats


def test_a_tiny_set_trains_min_steps_unless_epochs_are_given(tmp_path):
    root = write_digits(tmp_path / "img", classes=(0, 1), n=3, size=16)  # 6 images: one step per epoch
    common = {"data": root, "size": 16, "model": "smallcnn", "width": 8, "workers": 0, "progress": False,
              "cache": False}
    summary = train(make_config(out=tmp_path / "auto", min_steps=40, **common))
    assert summary["steps"] == 40 and summary["epochs"] == 20  # 20 epochs of 2 steps (16 passes: 96 images)
    saved = yaml.safe_load((tmp_path / "auto" / "config.yaml").read_text())
    assert (saved["epochs"], saved["repeats"]) == (20, 16)
    rows = (tmp_path / "auto" / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 20 and json.loads(rows[0])["step"] == 2
    summary = train(make_config(out=tmp_path / "given", epochs=2, min_steps=40, **common))
    assert summary["steps"] == 2
    summary = train(make_config(out=tmp_path / "steps", steps=3, min_steps=40, **common))
    assert summary["steps"] == 3 and yaml.safe_load((tmp_path / "steps" / "config.yaml").read_text())["epochs"] == 3


def test_help_states_the_rules():
    result = _invoke("train", "--help")
    text = " ".join(result.output.split())
    assert "--min-steps" in text and "32 passes per epoch make 25 steps, 500 in all" in text
    assert "SOURCE images DST was made from" in text
    assert "adabound" in text and "--final-lr" in text


def test_balanced_accuracy_and_macro_f1_equal_scikit_learn():
    # 4 classes: class 3 never occurs in the truth but is predicted; class 2 is never predicted
    y_true = np.array([0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 0, 1])
    y_pred = np.array([0, 0, 1, 0, 3, 1, 1, 0, 1, 0, 0, 3])
    confusion = confusion_matrix(y_true, y_pred, labels=[0, 1, 2, 3])
    scores = classification_scores(confusion)
    with pytest.warns(UserWarning, match="y_pred contains classes not in y_true"):
        expected_bal = balanced_accuracy_score(y_true, y_pred)
    assert scores["balanced_accuracy"] == pytest.approx(expected_bal, abs=1e-12)
    assert scores["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro", zero_division=0), abs=1e-12)
    assert scores["accuracy"] == pytest.approx(np.mean(y_true == y_pred))
    assert scores["recall"][3] is None and scores["precision"][2] is None and scores["f1"][2] == 0.0
    # a class absent from both the truth and the predictions does not count
    bigger = np.zeros((5, 5), dtype=int)
    bigger[:4, :4] = confusion
    assert classification_scores(bigger)["macro_f1"] == pytest.approx(scores["macro_f1"])


def test_evaluate_prints_and_returns_the_scores(tmp_path):
    root = write_digits(tmp_path / "img", classes=(0, 1, 2), n=6, size=16)
    run = tmp_path / "run"
    assert _invoke("train", root, "-o", run, "--epochs", "2", "--size", "16", *FAST, "-q").exit_code == 0
    test = write_digits(tmp_path / "test", classes=(0, 1, 2), n=4, offset=50)
    result = _invoke("evaluate", run, test, "--workers", "0", "--json")
    scores = json.loads(result.stdout)
    expected = classification_scores(np.array(scores["confusion"]))
    assert scores["balanced_accuracy"] == pytest.approx(expected["balanced_accuracy"])
    assert scores["macro_f1"] == pytest.approx(expected["macro_f1"])
    text = _invoke("evaluate", run, test, "--workers", "0").output.splitlines()
    assert text[1] == f"balanced accuracy {scores['balanced_accuracy']:.4f} (mean recall over the 3 classes present)"
    assert text[2] == f"macro-F1 {scores['macro_f1']:.4f}"
    quiet = _invoke("evaluate", run, test, "--workers", "0", "-q").output.strip()
    assert quiet == (f"top-1 accuracy {scores['accuracy']:.4f} on 12 images, balanced accuracy "
                     f"{scores['balanced_accuracy']:.4f}, macro-F1 {scores['macro_f1']:.4f}")
