"""`torchrun --nproc_per_node 2 -m augexpand train` on the CPU (gloo): the loss falls, rank 0 alone writes a
checkpoint that loads and evaluates, --resume continues, and a RUN another run holds is one error line."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist
from click.testing import CliRunner

from augexpand.cli import cli
from augexpand.train.data import EpochPlan, epoch_batches
from augexpand.train.distributed import ShardedPlan
from tests.train_fixtures import write_digits, write_expanded

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch built without distributed gloo")

FAST = ["--size", "16", "--width", "8", "--workers", "0", "--batch-size", "8", "--no-flip", "--warmup-epochs", "0"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(*args, timeout: float = 90) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "augexpand", "train", *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.parametrize(("n", "batch", "world"), [(28, 8, 2), (28, 8, 3), (5, 8, 2), (100, 10, 4)])
def test_sharded_plan_deals_the_epoch_batches_round_robin(n, batch, world):
    plan = EpochPlan(n, batch, seed=3)
    shards = [ShardedPlan(plan, r, world) for r in range(world)]
    plan.set_epoch(2)
    got = [list(s) for s in shards]
    batches = epoch_batches(n, batch, 3, 2)
    steps = -(-len(batches) // world)
    assert all(len(g) == steps == len(s) for g, s in zip(got, shards))  # every rank takes the same steps
    for step in range(steps):  # step s of rank r is batch s * world + r (the first ones again past the end)
        for r in range(world):
            epoch, b, idx = got[r][step]
            assert epoch == 2 and b == (step * world + r) % len(batches)  # its global index: same augmentation
            assert np.array_equal(idx, batches[b])
    seen = np.concatenate([idx for g in got for _, _, idx in g])
    assert set(seen.tolist()) == set(np.concatenate(batches).tolist())  # the whole epoch, as one process sees it
    # validation: each batch exactly once, nothing padded
    val = EpochPlan(n, batch, seed=3, shuffle=False)
    parts = [list(ShardedPlan(val, r, world, pad=False)) for r in range(world)]
    assert sorted(np.concatenate([i for p in parts for _, _, i in p]).tolist()) == list(range(n))


def test_torchrun_two_cpu_processes_train_resume_and_lock(tmp_path):
    dst = write_expanded(tmp_path / "dst", classes=(0, 1, 2), n=8, mixed=4)
    run = tmp_path / "run"
    done = _torchrun(dst, "--out", run, "--device", "cpu", "--epochs", "4", *FAST)
    assert done.returncode == 0, done.stderr[-3000:]
    # rank 0 alone speaks: one summary line, one line per epoch
    assert done.stdout.count("best val acc") == 1, done.stdout
    assert "2 processes (gloo, global batch 2x8)" in done.stderr
    assert done.stderr.count("note: epoch 1/4") == 1
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # 28 images in batches of 8 make 4 batches: 2 steps per epoch on 2 processes, each step seeing 2 batches
    assert [r["step"] for r in rows] == [2, 4, 6, 8]
    assert rows[-1]["train_loss"] < 0.85 * rows[0]["train_loss"], rows
    summary = json.loads((run / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] == 8 and summary["train_images"] == 28
    ckpt = torch.load(run / "best.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in ckpt["model"])  # the plain model, loadable anywhere
    test = write_digits(tmp_path / "test", classes=(0, 1, 2), n=4, offset=60)
    result = CliRunner().invoke(cli, ["evaluate", str(run), str(test), "--workers", "0", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["images"] == 12

    # --resume continues the same run with both processes
    done = _torchrun("--out", run, "--resume", "--epochs", "5", "-q")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "10 steps (2 steps after resuming)" in done.stdout
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 5

    # a RUN another run is writing: rank 0 says so in one line, no rank hangs
    fd = os.open(run / ".lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        done = _torchrun("--out", run, "--resume", "--epochs", "6", "-q", timeout=60)
    finally:
        os.close(fd)
    assert done.returncode != 0
    ours = [line for line in done.stderr.splitlines() if line.startswith("Error: ")]
    assert len(ours) == 1, done.stderr[-2000:]
    assert ours[0].startswith(f"Error: {run} is being written by another training run (pid ")
    assert ours[0].endswith("; wait for it to finish, or choose another --out")
