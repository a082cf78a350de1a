"""AdaBound against the paper's update: a step by hand, bounds that converge to final_lr, the schedule scaling the
final rate, the authors' reference package step for step, and `--optimizer adabound` in a real run."""

from __future__ import annotations

import math
import warnings
from itertools import pairwise

import numpy as np
import pytest
import torch
import yaml

from augexpand.train.config import make_config
from augexpand.train.loop import train
from augexpand.train.optim import AdaBound, bounds
from tests.train_fixtures import TINY, write_expanded


def test_one_step_equals_the_hand_computation():
    # gradients of very different scales: the first is clipped to the upper bound, the last to the lower one
    p0 = np.array([0.5, -0.3, 0.2, 0.7], dtype=np.float64)
    g = np.array([1e-6, 1.0, -0.5, 1000.0])
    lr, final_lr, gamma, b1, b2, eps = 1e-3, 0.1, 1e-3, 0.9, 0.999, 1e-8
    p = torch.nn.Parameter(torch.tensor(p0))
    opt = AdaBound([p], lr=lr, betas=(b1, b2), final_lr=final_lr, gamma=gamma, eps=eps)
    p.grad = torch.tensor(g)
    opt.step()
    m, v = (1 - b1) * g, (1 - b2) * g * g
    step_size = lr * math.sqrt(1 - b2) / (1 - b1)
    lower, upper = final_lr * (1 - 1 / (gamma + 1)), final_lr * (1 + 1 / gamma)
    eta = np.clip(step_size / (np.sqrt(v) + eps), lower, upper)
    assert eta[0] == upper and eta[3] == lower and lower < eta[1] < upper  # both bounds and Adam in one step
    np.testing.assert_allclose(p.detach().numpy(), p0 - eta * m, rtol=1e-12, atol=0)


def test_the_bounds_converge_to_final_lr():
    lows, highs = zip(*(bounds(t, 0.1, 1e-3) for t in (1, 10, 100, 1000, 10_000, 1_000_000)))
    assert lows[0] < 1e-4 and highs[0] > 100  # step 1: practically Adam
    assert all(a < b for a, b in pairwise(lows)) and all(a > b for a, b in pairwise(highs))
    assert lows[-1] == pytest.approx(0.1, rel=1e-3) and highs[-1] == pytest.approx(0.1, rel=1e-3)


def test_late_steps_are_sgd_at_final_lr_whatever_the_gradient_scale():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    scales = torch.tensor([1e-4, 1.0, 1e4], dtype=torch.float64)  # Adam would give rates 1e8 apart
    opt = AdaBound([p], lr=1e-3, final_lr=0.05, gamma=0.5)
    for _ in range(400):
        before = p.detach().clone()
        p.grad = scales * (1 + 0.1 * torch.randn(3, dtype=torch.float64))
        opt.step()
    rate = (before - p.detach()) / opt.state[p]["exp_avg"]
    lower, upper = bounds(400, 0.05, 0.5)
    assert torch.all(rate >= lower * (1 - 1e-9)) and torch.all(rate <= upper * (1 + 1e-9))  # float64 rounding
    np.testing.assert_allclose(rate.numpy(), 0.05, rtol=0.01)


def test_the_schedule_scales_the_final_rate():
    p = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt = AdaBound([{"params": [p], "lr": 1e-3, "base_lr": 1e-3}], final_lr=0.1, gamma=0.5)
    for _ in range(300):
        p.grad = torch.tensor([1e4], dtype=torch.float64)
        opt.step()
    opt.param_groups[0]["lr"] = 0.5e-3  # the cosine schedule halves the rate
    before = p.detach().clone()
    p.grad = torch.tensor([1e4], dtype=torch.float64)
    opt.step()
    rate = float((before - p.detach()) / opt.state[p]["exp_avg"])
    # Adam's rate for a gradient of 1e4 is about 1e-7: clipped to the lower bound of final_lr * 0.5e-3 / 1e-3
    assert rate == pytest.approx(bounds(301, 0.05, 0.5)[0], rel=1e-9)


@pytest.mark.parametrize("amsbound", [False, True])
def test_same_weights_as_the_authors_package(amsbound):
    adabound = pytest.importorskip("adabound")
    torch.manual_seed(0)
    ours = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3)).double()
    theirs = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3)).double()
    theirs.load_state_dict(ours.state_dict())
    kw = {"lr": 3e-3, "final_lr": 0.05, "gamma": 0.01, "weight_decay": 5e-4, "amsbound": amsbound}
    opt_a, opt_b = AdaBound(ours.parameters(), **kw), adabound.AdaBound(theirs.parameters(), **kw)
    x, y = torch.randn(32, 6, dtype=torch.float64), torch.randint(0, 3, (32,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the package uses signatures torch deprecates
        for _ in range(50):
            for model, opt in ((ours, opt_a), (theirs, opt_b)):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
    for a, b in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_a_run_with_adabound_learns_and_resumes(tmp_path):
    dst = write_expanded(tmp_path / "dst", classes=(0, 1, 2), n=8, mixed=4)
    run = tmp_path / "run"
    config = make_config(data=dst, out=run, optimizer="adabound", epochs=6, **TINY)
    summary = train(config)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert (saved["optimizer"], saved["lr"], saved["final_lr"], saved["gamma"], saved["weight_decay"]) == \
        ("adabound", 1e-3, 0.1, 1e-3, 5e-4)
    rows = [yaml.safe_load(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    state = torch.load(run / "last.pt", weights_only=True)["optimizer"]
    assert {g["final_lr"] for g in state["param_groups"]} == {0.1}
    resumed = train(make_config(data=dst, out=run, optimizer="adabound", epochs=7, **TINY), resume=True,
                    explicit={"epochs"})
    assert resumed["steps"] == summary["steps"] + summary["steps"] // 6
