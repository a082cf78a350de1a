"""--executor ray: the same bytes as the local pool, a lost worker's task re-run, one-line errors. A local Ray on
2 CPUs (CI installs the `ray` extra); Ray is started twice in all: once by the CLI, once by a module fixture."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import augexpand
from augexpand.cli import cli
from tests.conftest import tree_digest

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'augexpand[ray]' to test --executor ray")

RECIPE = "seed: 4\ncopies: 2\npipeline:\n  - RandomResizedCrop: {size: [32, 32], scale: [0.5, 1.0]}\n" \
         "  - HorizontalFlip: {p: 0.5}\nmix:\n  mixup: {count: 1.0}\n  cutmix: {count: 0.5}\noutput: {size: 32}\n"


def outputs(dst: Path) -> dict[str, str]:
    """Every file written (images, metadata.jsonl) by sha256; the card without its timings and worker count."""
    digest = tree_digest(dst)
    digest.pop("dataset.json")
    return digest


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(RECIPE)
    return path


def test_ray_gives_the_same_bytes_as_two_local_workers(small_src: Path, tmp_path: Path, recipe: Path, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert not ray.is_initialized()
    runner = CliRunner()
    args = ["expand", "-r", str(recipe), "--val-fraction", "0.2", "-w", "2", str(small_src)]
    local = runner.invoke(cli, [*args, str(tmp_path / "local"), "-q"])
    assert local.exit_code == 0, local.output
    on_ray = runner.invoke(cli, [*args, str(tmp_path / "ray"), "--executor", "ray"])
    assert on_ray.exit_code == 0, on_ray.output
    assert "Made " in on_ray.stdout and "2 workers" in on_ray.stdout
    assert on_ray.stderr == "", "Ray's own messages must stay off stderr"
    assert outputs(tmp_path / "ray") == outputs(tmp_path / "local")
    assert len(outputs(tmp_path / "ray")) > 20
    assert not ray.is_initialized()  # the Ray it started for the run is shut down


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the rest of the module (the executor uses a Ray already running in the process)."""
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([str(Path(__file__).parent.parent),
                                                                      os.environ.get("PYTHONPATH", "")])}})
    yield
    ray.shutdown()




def test_a_lost_worker_s_task_runs_again_and_nothing_is_lost(local_ray, small_src: Path, tmp_path: Path,
                                                             recipe: Path, monkeypatch, capsys):
    from augexpand import ray_executor

    marker = tmp_path / "crashed"

    class DiesOnce(ray_executor.RayWorker):
        def run(self, task):
            if not marker.exists():  # the first task of the run kills its worker process, once
                marker.touch()
                os._exit(1)
            return super().run(task)

    monkeypatch.setattr(ray_executor.RayExecutor, "worker_class", DiesOnce)
    summary = augexpand.expand(small_src, tmp_path / "ray", recipe, workers=2, executor="ray")
    time.sleep(0.5)  # Ray's notice of the dead worker arrives by its own thread
    assert "worker died" not in capsys.readouterr().out  # stdout is for --json: Ray's notice goes to the log
    assert marker.exists() and ray.is_initialized()  # a Ray already running is left running
    augexpand.expand(small_src, tmp_path / "local", recipe, workers=1)
    assert outputs(tmp_path / "ray") == outputs(tmp_path / "local")
    assert summary["images_out"] == len([f for f in outputs(tmp_path / "ray") if f.startswith("train/")]) - 1


def test_a_task_that_fails_every_time_is_reported_by_row(local_ray, small_src: Path, tmp_path: Path, recipe: Path,
                                                   monkeypatch):
    from augexpand import ray_executor

    class AlwaysFails(ray_executor.RayWorker):  # (an error Ray reports, as when the worker's node is lost)
        def run(self, task):
            if any(r.index == 3 for r in task[1]):
                raise MemoryError("out of memory")
            return super().run(task)

    monkeypatch.setattr(ray_executor.RayExecutor, "worker_class", AlwaysFails)
    with pytest.raises(augexpand.ExpandError, match=r"images could not be made; first: row 3 .*lost on Ray after 3 "
                                                    r"attempts: .*MemoryError"):
        augexpand.expand(small_src, tmp_path / "ray", recipe, workers=2, executor="ray")


def test_unreachable_ray_address_is_one_line(small_src: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:9")  # the discard port: nothing listens there
    if ray.is_initialized():
        ray.shutdown()
    result = CliRunner().invoke(cli, ["expand", "--executor", "ray", str(small_src), str(tmp_path / "out")])
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: cannot reach the Ray cluster at RAY_ADDRESS=127.0.0.1:9")
    assert result.stderr.count("\n") == 1


def test_without_ray_installed_says_what_to_install(small_src: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    result = CliRunner().invoke(cli, ["expand", "--executor", "ray", str(small_src), str(tmp_path / "out")])
    assert result.exit_code == 1
    assert result.stderr == "Error: --executor ray needs Ray, which is not installed; pip install 'augexpand[ray]'\n"
