"""Losses and schedule: soft-target cross-entropy, label smoothing and distillation against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from augexpand.train.loop import distillation_loss, lr_factor, smooth_targets, soft_cross_entropy


def _log_softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


def test_soft_cross_entropy_equals_the_hand_computation():
    logits = np.array([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
    target = np.array([[0.7, 0.3, 0.0], [0.2, 0.2, 0.6]])  # a mixup label, and a three-way one
    # By hand: row 1 = -(0.7 * log p0 + 0.3 * log p1), row 2 likewise; then the batch mean.
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    by_hand = np.mean([-(0.7 * math.log(p[0, 0]) + 0.3 * math.log(p[0, 1])),
                       -(0.2 * math.log(p[1, 0]) + 0.2 * math.log(p[1, 1]) + 0.6 * math.log(p[1, 2]))])
    got = soft_cross_entropy(torch.tensor(logits), torch.tensor(target)).item()
    assert got == pytest.approx(by_hand, abs=1e-12)
    assert got == pytest.approx(float(np.mean((-target * _log_softmax(logits)).sum(1))), abs=1e-12)


def test_soft_cross_entropy_with_one_hot_is_cross_entropy():
    torch.manual_seed(0)
    logits, labels = torch.randn(6, 4), torch.tensor([0, 3, 1, 1, 2, 0])
    got = soft_cross_entropy(logits, F.one_hot(labels, 4).float())
    assert torch.allclose(got, F.cross_entropy(logits, labels))


def test_label_smoothing_matches_torch_on_hard_labels():
    torch.manual_seed(1)
    logits, labels = torch.randn(5, 3), torch.tensor([0, 1, 2, 2, 1])
    got = soft_cross_entropy(logits, smooth_targets(F.one_hot(labels, 3).float(), 0.1))
    assert torch.allclose(got, F.cross_entropy(logits, labels, label_smoothing=0.1))
    soft = torch.tensor([[0.6, 0.4, 0.0]])
    assert torch.allclose(smooth_targets(soft, 0.3), torch.tensor([[0.52, 0.38, 0.1]]))


def test_distillation_loss_by_hand():
    student, teacher, t = np.array([[1.0, 0.0, -1.0]]), np.array([[0.5, 0.5, 2.0]]), 2.0
    ps, pt = np.exp(_log_softmax(student / t)), np.exp(_log_softmax(teacher / t))
    by_hand = t * t * float((pt * (np.log(pt) - np.log(ps))).sum())
    got = distillation_loss(torch.tensor(student), torch.tensor(teacher), t).item()
    assert got == pytest.approx(by_hand, abs=1e-12)
    assert distillation_loss(torch.tensor(teacher), torch.tensor(teacher), t).item() == pytest.approx(0, abs=1e-12)


@pytest.mark.parametrize(("step", "expected"), [
    (0, 0.25),    # warmup: (step + 1) / warmup
    (3, 1.0),     # end of warmup
    (4, 1.0),     # cosine starts at 1
    (9, 0.5),     # half-way through the cosine (4 + 10 / 2)
    (14, 0.0),    # the end
    (20, 0.0),    # past the end stays at 0
])
def test_lr_factor(step, expected):
    assert lr_factor(step, warmup=4, total=14) == pytest.approx(expected, abs=1e-12)
