"""A hostile review of the scale-out and machine interfaces: the Python API run from threads, shards then
``--resume``, ``--executor ray`` with a bad RAY_ADDRESS, ``--json`` for pipelines. Each test failed before its fix."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from augexpand import expand
from augexpand.cli import cli
from tests.conftest import tree_digest


def outputs(dst: Path) -> dict[str, str]:
    """Every file's sha256 but the card (its timings differ between runs)."""
    digest = tree_digest(dst)
    digest.pop("dataset.json")
    return digest


def test_two_runs_in_two_threads_write_each_its_own_destination(small_src: Path, tmp_path: Path,
                                                                tiny_recipe: Path):
    """One worker runs in the calling process: its row maker was one per module, so the second thread's run made
    the first one's images into its own dst, and the first failed writing its manifest into a train/ never made."""
    alone = expand(small_src, tmp_path / "alone", tiny_recipe, workers=1)
    results: dict[str, object] = {}

    def run(name: str) -> None:
        try:
            results[name] = expand(small_src, tmp_path / name, tiny_recipe, workers=1)
        except BaseException as exc:  # noqa: BLE001 -- reported by the assertion below
            results[name] = exc

    threads = [threading.Thread(target=run, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert all(isinstance(results[n], dict) for n in "ab"), results
    want = outputs(tmp_path / "alone")
    assert outputs(tmp_path / "a") == want and outputs(tmp_path / "b") == want
    assert results["a"]["images_out"] == results["b"]["images_out"] == alone["images_out"]


def test_a_resume_that_finds_every_image_made_reports_no_negative_rate(small_src: Path, tmp_path: Path,
                                                                       tiny_recipe: Path):
    """The rate subtracted every row found done (validation copies too) from the training images: a --resume
    after all shards printed '-194 images/s'."""
    dst = tmp_path / "out"
    for i in (1, 2):
        expand(small_src, dst, tiny_recipe, workers=1, val_fraction=0.3, shard=(i, 2))
    summary = expand(small_src, dst, tiny_recipe, workers=1, val_fraction=0.3, resume=True)
    assert summary["resumed_rows"] > summary["images_out"]  # the validation copies are rows done too
    assert summary["images_per_second"] == 0
    card = json.loads((dst / "dataset.json").read_text())
    assert card["images_per_second"] == 0


@pytest.mark.parametrize("address", ["127.0.0.1:notaport", "::::"])
def test_a_ray_address_with_no_port_number_is_one_line(small_src: Path, tmp_path: Path, monkeypatch, address):
    """urlsplit's ValueError for a port that is not a number escaped as a traceback."""
    pytest.importorskip("ray", reason="Ray is not installed")
    monkeypatch.setenv("RAY_ADDRESS", address)
    result = CliRunner().invoke(cli, ["expand", "--executor", "ray", str(small_src), str(tmp_path / "out"),
                                      "--json"])
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith(f"Error: cannot reach the Ray cluster at RAY_ADDRESS={address}: Port could not")
    assert result.stderr.count("\n") == 1 and result.stdout == ""


def test_more_ray_workers_than_the_cluster_has_cpus_runs_on_those_it_has(small_src: Path, tmp_path: Path,
                                                                        tiny_recipe: Path, caplog):
    """An actor takes one CPU: asked for more actors than the cluster has CPUs, the run waited for ever for the
    ones that could not start (RAY_ADDRESS=a 2-CPU cluster with -w 3 hung). A one-CPU Ray stands for the cluster."""
    ray = pytest.importorskip("ray", reason="Ray is not installed")
    import os

    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([str(Path(__file__).parent.parent),
                                                                      os.environ.get("PYTHONPATH", "")])}})
    try:
        with caplog.at_level("INFO", logger="augexpand"):
            summary = expand(small_src, tmp_path / "ray", tiny_recipe, workers=3, executor="ray")
        from augexpand.ray_executor import _check_reachable

        _check_reachable(ray.get_runtime_context().gcs_address)  # a real GCS passes the gRPC check (no error)
    finally:
        ray.shutdown()
    assert summary["workers"] == 1
    assert "--workers 3: 1 Ray workers, one per CPU of the Ray cluster" in caplog.text
    expand(small_src, tmp_path / "local", tiny_recipe, workers=2)
    assert outputs(tmp_path / "ray") == outputs(tmp_path / "local")


def test_albumentations_imported_by_two_threads_at_once_is_whole_in_both():
    """import_albumentations returned the module it found in sys.modules, also while another thread was still
    importing it: the second of two expand() calls in threads failed with "partially initialized module
    'albumentations' has no attribute 'Compose'". A fresh interpreter, as albumentations is loaded here already."""
    import subprocess
    import sys

    code = ("import threading, time\n"
            "from augexpand.recipe import import_albumentations\n"
            "got = []\n"
            "def second():\n"
            "    time.sleep(0.05)\n"
            "    got.append(hasattr(import_albumentations(), 'Compose'))\n"
            "threads = [threading.Thread(target=import_albumentations), threading.Thread(target=second)]\n"
            "[t.start() for t in threads]; [t.join() for t in threads]\n"
            "print(got)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[True]"


def test_training_on_shards_without_the_final_resume_is_refused(small_src: Path, tmp_path: Path, tiny_recipe: Path):
    """Shards write images and journals, not metadata.jsonl: train read such a DST as a plain ImageFolder (part of
    the images, each mixed one under its folder's one-hot label) and trained without a word."""
    from augexpand.train.data import find_splits

    dst = tmp_path / "out"
    expand(small_src, dst, tiny_recipe, workers=1, shard=(1, 2))
    assert any((dst / "train").rglob("*.png")) and not (dst / "train" / "metadata.jsonl").exists()
    result = CliRunner().invoke(cli, ["train", str(dst), "--out", str(tmp_path / "run"), "--epochs", "1"])
    assert result.exit_code == 1, result.output
    assert result.stderr == (f"Error: {dst} is an unfinished augexpand expand (no train/metadata.jsonl yet); finish "
                             "it first: the same `augexpand expand` command with --resume, without --shard\n")
    expand(small_src, dst, tiny_recipe, workers=1, resume=True)
    assert find_splits(dst)[0] == dst / "train"


def test_inspecting_shards_without_the_final_resume_says_so(small_src: Path, tmp_path: Path, tiny_recipe: Path):
    """It reported a source ImageFolder of one class, 'train'."""
    dst = tmp_path / "out"
    expand(small_src, dst, tiny_recipe, workers=1, shard=(1, 2))
    result = CliRunner().invoke(cli, ["inspect", str(dst), "--json"])
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.startswith(f"Error: {dst} is an unfinished augexpand expand (no train/metadata.jsonl yet)")
    expand(small_src, dst, tiny_recipe, workers=1, resume=True)
    report = json.loads(CliRunner().invoke(cli, ["inspect", str(dst), "--json"]).stdout)
    assert report["kind"] == "expanded" and report["classes"] == ["cat", "coffee", "rocket"]


@pytest.mark.parametrize("answer", [b"HTTP/1.0 400 Bad Request\r\n\r\n", None])
def test_a_ray_address_where_something_else_listens_is_one_line_in_seconds(small_src: Path, tmp_path: Path,
                                                                          monkeypatch, answer):
    """A web server (or a silent one) at RAY_ADDRESS passed the connect check, then ray.init retried for minutes
    (still waiting after 150 s)."""
    pytest.importorskip("ray", reason="Ray is not installed")
    import socket
    import time

    from augexpand import ray_executor

    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            if answer:
                conn.recv(100)
                conn.sendall(answer)
            time.sleep(3)

    threading.Thread(target=serve, daemon=True).start()
    monkeypatch.setattr(ray_executor, "CONNECT_TIMEOUT_S", 1.0)
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    started = time.monotonic()
    try:
        result = CliRunner().invoke(cli, ["expand", "--executor", "ray", str(small_src), str(tmp_path / "out")])
    finally:
        server.close()
    assert time.monotonic() - started < 30
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith(f"Error: RAY_ADDRESS=127.0.0.1:{port} answers, but not as a Ray cluster")
    assert result.stderr.count("\n") == 1 and not (tmp_path / "out").exists()


def test_a_worker_forked_under_the_sigterm_handler_does_not_report_a_stopped_run(tmp_path: Path):
    """A pool worker forked while expand's SIGTERM handler is set has it until its initializer resets it: a
    SIGTERM then (a pool terminated at once) printed 'stopped by SIGTERM: run the same command with --resume' from
    the worker, of a run that went on."""
    import multiprocessing as mp
    import signal

    from augexpand.expansion import _stopped_by_sigterm

    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)  # (ray.init leaves a handler of its own)
    import logging

    logged = logging.FileHandler(tmp_path / "log.txt")  # the child's log lines (it inherits the handler)
    logging.getLogger("augexpand").addHandler(logged)
    try:
        with _stopped_by_sigterm():
            child = mp.get_context("fork").Process(target=_terminate_self)
            child.start()
            child.join(30)
    finally:
        logging.getLogger("augexpand").removeHandler(logged)
        logged.close()
        signal.signal(signal.SIGTERM, previous)
    assert child.exitcode == 128 + signal.SIGTERM
    assert "stopped by SIGTERM" not in (tmp_path / "log.txt").read_text()


def _terminate_self() -> None:
    import os
    import signal
    import time

    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)
