"""The training loop on tiny real images: loss goes down, frozen backbones stay put, runs repeat, resume, transfer."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from augexpand.errors import TrainingError
from augexpand.train.config import make_config
from augexpand.train.loop import build_optimizer, set_backbone_frozen, soft_cross_entropy, train
from augexpand.train.models import build_model
from tests.train_fixtures import TINY, write_digits, write_expanded


@pytest.fixture
def dst(tmp_path):
    return write_expanded(tmp_path / "dst", classes=(0, 1, 2), n=8, mixed=4)


def _config(dst, out, **kw):
    return make_config(data=dst, out=out, **{**TINY, **kw})


def _strip(rows):
    """Metrics without the timings (which differ from run to run)."""
    return [{k: v for k, v in r.items() if k not in ("images_per_s", "seconds")} for r in rows]


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_smoke_training_reduces_the_loss_and_writes_the_run(dst, tmp_path):
    run = tmp_path / "run"
    summary = train(_config(dst, run, epochs=6, lr=0.05))
    rows = _metrics(run)
    assert len(rows) == 6 and rows[-1]["step"] == summary["steps"] == 6 * 2  # 28 images, batches of 16
    assert rows[-1]["train_loss"] < 0.8 * rows[0]["train_loss"]
    assert {"train_loss", "train_acc", "val_loss", "val_acc", "lr_backbone", "lr_head", "images_per_s"} <= set(rows[0])
    for name in ("best.pt", "last.pt", "config.yaml", "curves.png", "summary.json"):
        assert (run / name).is_file(), name
    ckpt = torch.load(run / "best.pt", weights_only=True)  # plain tensors and values only
    assert ckpt["classes"] == ["d0", "d1", "d2"] and ckpt["size"] == 16
    assert ckpt["model_args"] == {"name": "smallcnn", "num_classes": 3, "width": 8}
    model = build_model("smallcnn", 3, width=8)
    model.load_state_dict(ckpt["model"])
    assert summary["best_val_acc"] == pytest.approx(max(r["val_acc"] for r in rows), abs=1e-5)
    assert (run / "cache" / "train_16.npy").is_file()


def test_head_only_training_leaves_the_backbone_bit_identical():
    torch.manual_seed(0)
    model = build_model("smallcnn", 3, width=8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = make_config(data=".", out=".", lr=0.5, weight_decay=0.1, head_lr_mult=10, optimizer="sgd")
    optimizer = build_optimizer(model, config)
    for _ in range(3):
        model.train()
        set_backbone_frozen(model, True)
        x, y = torch.randn(8, 3, 16, 16), torch.eye(3)[torch.randint(0, 3, (8,))]
        loss = soft_cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    after = model.state_dict()
    for key, value in before.items():
        if key.startswith("fc."):
            assert not torch.equal(after[key], value), f"the head must train: {key}"
        else:  # weights, BatchNorm affine parameters and running statistics alike
            assert torch.equal(after[key], value), f"backbone changed: {key}"


def test_freeze_epochs_in_a_run_keep_the_backbone_and_then_unfreeze(dst, tmp_path):
    source = tmp_path / "source"
    train(_config(dst, source, epochs=1))
    start = torch.load(source / "best.pt", weights_only=True)["model"]
    run = tmp_path / "run"
    train(_config(dst, run, epochs=2, init=source, freeze_epochs=1))
    rows = _metrics(run)
    assert [r["frozen"] for r in rows] == [True, False]
    assert rows[0]["lr_head"] == pytest.approx(10 * rows[0]["lr_backbone"])  # pretrained: head at 10x
    # A checkpoint of the frozen epoch: last.pt after epoch 1 is overwritten, so rerun just that epoch
    frozen_run = tmp_path / "frozen"
    train(_config(dst, frozen_run, epochs=1, init=source, freeze_epochs=1))
    frozen = torch.load(frozen_run / "last.pt", weights_only=True)["model"]
    backbone = [k for k in start if not k.startswith("fc.")]
    assert all(torch.equal(frozen[k], start[k]) for k in backbone)
    unfrozen = torch.load(run / "last.pt", weights_only=True)["model"]
    assert not all(torch.equal(unfrozen[k], start[k]) for k in backbone)


def test_same_seed_repeats_a_cpu_run(dst, tmp_path):
    a = train(_config(dst, tmp_path / "a", epochs=2, seed=5, flip=True))
    b = train(_config(dst, tmp_path / "b", epochs=2, seed=5, flip=True))
    assert _strip(_metrics(tmp_path / "a")) == _strip(_metrics(tmp_path / "b"))
    wa = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["model"]
    wb = torch.load(tmp_path / "b" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    c = train(_config(dst, tmp_path / "c", epochs=2, seed=6, flip=True))
    assert c["last_train_loss"] != a["last_train_loss"]
    assert a["last_train_loss"] == b["last_train_loss"]


def test_the_number_of_loader_workers_does_not_change_the_weights(dst, tmp_path):
    # Three epochs: persistent workers draw no per-epoch seed from the global RNG that dropout uses, so a main-process
    # loader must not draw one either.
    for w in (0, 2):
        train(_config(dst, tmp_path / f"w{w}", epochs=3, seed=3, flip=True, workers=w))
    assert _strip(_metrics(tmp_path / "w0")) == _strip(_metrics(tmp_path / "w2"))
    w0 = torch.load(tmp_path / "w0" / "last.pt", weights_only=True)["model"]
    w2 = torch.load(tmp_path / "w2" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(w0[k], w2[k]) for k in w0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_gpu_cache_trains_on_the_loader_batches(dst, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="augexpand"):
        train(_config(dst, tmp_path / "on", epochs=3, seed=3, flip=True, device="cuda"))
    assert "is held on the GPU" in caplog.text
    train(_config(dst, tmp_path / "off", epochs=3, seed=3, flip=True, device="cuda", gpu_cache=False, workers=2))
    on, off = _metrics(tmp_path / "on"), _metrics(tmp_path / "off")
    for a, b in zip(on, off, strict=True):  # the same batches: the same run, up to the GPU's rounding
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-3, abs=1e-4)
        assert a["val_acc"] == pytest.approx(b["val_acc"], abs=0.05)


def test_resume_continues_to_the_same_result(dst, tmp_path, monkeypatch):
    whole = tmp_path / "whole"
    train(_config(dst, whole, epochs=3))
    # Interrupt a second, identical run during its third epoch
    from augexpand.train import loop

    real_evaluate, calls = loop.evaluate, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(loop, "evaluate", interrupted)
    part = tmp_path / "part"
    with pytest.raises(KeyboardInterrupt):
        train(_config(dst, part, epochs=3))
    monkeypatch.setattr(loop, "evaluate", real_evaluate)
    assert len(_metrics(part)) == 2
    with pytest.raises(TrainingError, match="already holds a training run"):
        train(_config(dst, part, epochs=3))
    resumed = train(_config(dst, part, epochs=3), resume=True)
    assert _strip(_metrics(part)) == _strip(_metrics(whole))
    # Epochs are numbered from 1 everywhere: metrics.jsonl, checkpoints and the summary
    assert [m["epoch"] for m in _metrics(part)] == [1, 2, 3]
    assert torch.load(part / "last.pt", weights_only=True)["epoch"] == 3 and resumed["epochs"] == 3
    steps = [m["step"] for m in _metrics(part)]
    assert (resumed["steps"], resumed["resumed_at_step"]) == (steps[2], steps[1])
    # images/s after resuming counts the images of the resumed epoch only, over its time only
    third = _metrics(part)[2]
    assert resumed["images_per_s"] == pytest.approx(third["images_per_s"], rel=1e-3)
    a = torch.load(whole / "last.pt", weights_only=True)["model"]
    b = torch.load(part / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_changed_settings(dst, tmp_path):
    run = tmp_path / "run"
    train(_config(dst, run, epochs=1))
    with pytest.raises(TrainingError, match=r"cannot change lr when resuming"):
        train(_config(dst, run, epochs=2, lr=0.3), resume=True, explicit={"lr", "epochs"})
    with pytest.raises(TrainingError, match="nothing to resume"):
        train(_config(dst, tmp_path / "new", epochs=1), resume=True)


def test_transfer_to_new_classes_and_distillation(dst, tmp_path):
    source = tmp_path / "source"
    train(_config(dst, source, epochs=1))
    target = write_digits(tmp_path / "target", classes=(4, 5, 6, 7), n=4)
    run = tmp_path / "transfer"
    summary = train(_config(target, run, epochs=1, init=source))
    ckpt = torch.load(run / "best.pt", weights_only=True)
    assert ckpt["classes"] == ["d4", "d5", "d6", "d7"] and ckpt["model"]["fc.weight"].shape == (4, 32)
    assert summary["val_images"] == 0  # a plain ImageFolder: no validation split, best.pt is the last epoch
    # distillation: a teacher with the same classes works, one with other classes is refused
    student = train(_config(dst, tmp_path / "student", epochs=1, teacher=source, kd_weight=0.7))
    assert student["steps"] == 2
    with pytest.raises(TrainingError, match="distillation needs the same classes"):
        train(_config(target, tmp_path / "bad", epochs=1, teacher=source))


def test_init_keeps_the_head_for_the_same_classes(dst, tmp_path):
    source = tmp_path / "source"
    train(_config(dst, source, epochs=2))
    run = tmp_path / "again"
    train(_config(dst, run, epochs=1, init=source, lr=1e-9, freeze_epochs=0))
    a = torch.load(source / "best.pt", weights_only=True)["model"]["fc.weight"]
    b = torch.load(run / "last.pt", weights_only=True)["model"]["fc.weight"]
    assert torch.allclose(a, b, atol=1e-6)


def test_resolution_and_model_follow_the_data(tmp_path):
    root = write_digits(tmp_path / "img", classes=(0, 1), n=4, size=24)
    summary = train(make_config(data=root, out=tmp_path / "run", epochs=1, workers=0, progress=False, width=8))
    assert summary["size"] == 24 and summary["model"] == "smallcnn"  # 24 px images are not blown up to 224


def test_evaluation_batches_hold_at_most_256_images_of_224x224():
    from augexpand.train.loop import eval_batch_size

    # a checkpoint of size 1024 evaluated 256 images a batch: 34 GB through a smallcnn's first layer
    assert [eval_batch_size(256, s) for s in (16, 224, 448, 1024)] == [256, 256, 64, 12]
    assert eval_batch_size(8, 16) == 8
