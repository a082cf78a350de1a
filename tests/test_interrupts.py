"""Interrupted runs, as a killed process or a full disk leaves them: --resume and --overwrite finish or replace
them, a user's files survive, and nothing is left half-written or untracked."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from augexpand.cli import cli
from augexpand.destination import read_journal
from tests.conftest import tree_digest
from tests.test_destination import interrupted, listed, one_error_line, run, same_output, slow_job, temp_files
from tests.train_fixtures import write_expanded


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_a_users_file_in_the_state_folder_survives_resume_and_overwrite(small_src, tmp_path, tiny_recipe,
                                                                       monkeypatch):
    # The state folder was removed whole (shutil.rmtree) when the card was written, with whatever else was in it.
    run(small_src, tmp_path / "whole", tiny_recipe)
    dst = tmp_path / "cut"
    interrupted(small_src, dst, tiny_recipe, monkeypatch)
    notes = dst / ".augexpand" / "notes.txt"
    notes.write_text("why this run was stopped")
    run(small_src, dst, tiny_recipe, resume=True)
    assert notes.read_text() == "why this run was stopped"
    assert sorted(p.name for p in notes.parent.iterdir()) == ["notes.txt"]  # journals, run.json, lock: gone
    notes.unlink()
    same_output(dst, tmp_path / "whole")

    notes.write_text("mine")
    run(small_src, dst, tiny_recipe, overwrite=True)
    assert notes.read_text() == "mine"


def test_a_journal_line_cut_short_by_a_full_disk_leaves_no_untracked_image(small_src, tmp_path, tiny_recipe,
                                                                          monkeypatch):
    # On a full disk write() writes what fits and returns the shorter count, without an error: the journal kept
    # half a line, the image got its name all the same, and --overwrite (which removes what the journals list)
    # then left it in the class folder, an image of the earlier run in the new one.
    real_write = os.write
    journal_lines = {"n": 0, "full": False}

    def fills_up(fd, data):
        if journal_lines["full"]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        if "/journal-" in os.readlink(f"/proc/self/fd/{fd}"):
            journal_lines["n"] += 1
            if journal_lines["n"] == 6:
                journal_lines["full"] = True
                return real_write(fd, data[:len(data) // 2])
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", fills_up)
    dst = tmp_path / "full"
    result = invoke("expand", "-r", tiny_recipe, small_src, dst, "-w", "1")
    monkeypatch.setattr(os, "write", real_write)
    assert "No space left on device" in one_error_line(result)
    (journal,) = (dst / ".augexpand").glob("journal-*.jsonl")
    lines = journal.read_bytes().splitlines(keepends=True)
    assert len(lines) == 5 and all(line.endswith(b"}\n") and json.loads(line) for line in lines)
    records, bad = read_journal(journal)
    assert bad == 0
    on_disk = {p.relative_to(dst).as_posix() for p in dst.rglob("*.png")}
    assert on_disk == {f"{r['split']}/{r['file_name']}" for r in records.values()} and temp_files(dst) == []

    run(small_src, dst, tiny_recipe, overrides={"copies": 0, "mix": {}}, overwrite=True)
    on_disk = {p.relative_to(dst).as_posix() for p in dst.rglob("*.png")}
    assert on_disk == listed(dst) and len(on_disk) == 10  # the originals only: nothing of the earlier run


def test_workers_die_with_a_parent_killed_at_once_and_resume_finishes(tmp_path, photos):
    # `kill -9` of the run (or the out-of-memory killer choosing it) left its workers to finish their task for
    # nobody: each printed two BrokenPipeError tracebacks when it handed its result to the dead parent.
    src, recipe, env = slow_job(tmp_path, photos, 12)
    dst = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "augexpand", "expand", "-r", str(recipe), str(src), str(dst), "-w",
                             "2", "-q"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any((dst / "train").rglob("*.png")):
        time.sleep(0.01)  # killed while the workers write
    proc.kill()
    _, err = proc.communicate(timeout=60)  # the pipe closes when the workers are gone too
    assert proc.returncode == -signal.SIGKILL and "Traceback" not in err, err
    run(src, dst, recipe, resume=True)
    run(src, tmp_path / "whole", recipe)
    same_output(dst, tmp_path / "whole")
    assert temp_files(dst) == []


def test_a_checkpoint_half_written_by_a_killed_training_is_removed_on_resume(tmp_path):
    # A run killed while torch.save wrote last.pt left its temporary file (.last.pt.<pid>-<hex>.tmp: for a
    # ResNet-50 with its optimizer state, hundreds of MB) in RUN for good: --resume and --overwrite kept it.
    import signal

    import torch

    from augexpand.train.checkpoint import save_checkpoint

    dst = write_expanded(tmp_path / "dst", classes=(0, 1), n=6, mixed=2)
    out = tmp_path / "run"
    fast = ["--size", "16", "--width", "8", "--workers", "0", "--batch-size", "16", "--no-flip", "-q"]
    assert invoke("train", dst, "-o", out, "--epochs", "1", *fast).exit_code == 0
    real_save = torch.save

    def killed_while_saving(obj, f):
        real_save(obj, f)
        os.kill(os.getpid(), signal.SIGKILL)

    pid = os.fork()
    if pid == 0:  # the child: killed inside torch.save, as the training run would be; never returns into pytest
        try:
            torch.save = killed_while_saving
            save_checkpoint(torch.load(out / "last.pt", weights_only=True), out / "last.pt")
        finally:
            os._exit(1)
    assert os.waitpid(pid, 0)[1] == signal.SIGKILL
    (left,) = [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    assert left.startswith(".last.pt.")

    result = invoke("train", "-o", out, "--resume", "--epochs", "2", *fast)
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert not [p.name for p in out.iterdir() if p.name.endswith("tmp")]


def test_a_training_killed_before_its_first_checkpoint_is_not_sent_to_resume(tmp_path):
    dst = write_expanded(tmp_path / "dst", classes=(0, 1), n=6, mixed=2)
    out = tmp_path / "run"
    fast = ["--size", "16", "--width", "8", "--workers", "0", "--batch-size", "16", "--no-flip", "-q"]
    assert invoke("train", dst, "-o", out, "--epochs", "1", *fast).exit_code == 0
    (out / "last.pt").unlink()  # what a run killed in its first epoch leaves: config.yaml, no last.pt
    before = {k: v for k, v in tree_digest(out).items() if k != ".lock"}
    result = invoke("train", dst, "-o", out, "--epochs", "1", *fast)
    assert one_error_line(result).endswith("already holds a training run (without last.pt); use --overwrite to "
                                           "start it again")
    assert "nothing to resume" in one_error_line(invoke("train", "-o", out, "--resume", *fast))
    assert {k: v for k, v in tree_digest(out).items() if k != ".lock"} == before


class _file_size_limit:
    """Writes past ``limit`` bytes fail with EFBIG ("File too large"), as writes on a full disk fail with ENOSPC."""

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def __enter__(self) -> None:
        import resource

        self.signal = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the error, not the signal that kills
        self.previous = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (self.limit, self.previous[1]))

    def __exit__(self, *exc) -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, self.previous)
        signal.signal(signal.SIGXFSZ, self.signal)


def test_a_checkpoint_or_manifest_the_disk_has_no_room_for_is_one_line_naming_it(tmp_path):
    # torch.save reported the failed write as a RuntimeError ("unexpected pos 272320 vs 272216"): a traceback;
    # and a file written by write_atomic failed as "Error: No space left on device", naming no file.
    from augexpand.folder import write_atomic

    dst = write_expanded(tmp_path / "dst", classes=(0, 1), n=6, mixed=2)
    out = tmp_path / "run"
    fast = ["--size", "16", "--width", "8", "--workers", "0", "--batch-size", "16", "--no-flip", "-q"]
    with _file_size_limit(60_000):  # best.pt (48 kB) fits, last.pt (96 kB, with the optimizer state) does not
        result = invoke("train", dst, "-o", out, "--epochs", "1", *fast)
        with pytest.raises(OSError, match="File too large") as failed:
            write_atomic(tmp_path / "big.json", "x" * 100_000)
    assert one_error_line(result) == f"Error: {out}/last.pt: File too large"
    assert sorted(p.name for p in out.iterdir()) == [".lock", "best.pt", "cache", "config.yaml", "metrics.jsonl"]
    assert failed.value.filename == str(tmp_path / "big.json") and sorted(os.listdir(tmp_path)) == ["dst", "run"]


def test_a_training_cache_the_disk_has_no_room_for_is_one_line_not_a_bus_error(tmp_path, monkeypatch):
    # The cache was written through a memory map of a file made at its full size but holding no disk blocks: on a
    # full disk the first page without room killed the run with SIGBUS ("Bus error", exit 135), without a word.
    dst = write_expanded(tmp_path / "dst", classes=(0, 1), n=6, mixed=2)
    out = tmp_path / "run"

    def no_room(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", no_room)
    result = invoke("train", dst, "-o", out, "--epochs", "1", "--size", "16", "--width", "8", "--workers", "0",
                    "--no-flip", "-q")
    assert one_error_line(result).startswith(f"Error: cannot write the decoded cache {out}/cache/train_16.npy (0 MB): "
                                             f"No space left on device; free some space")
    assert list((out / "cache").iterdir()) == []


@pytest.mark.parametrize("stop", [KeyboardInterrupt(), OSError(28, "No space left on device")])
def test_a_checkpoint_write_stopped_midway_raises_what_stopped_it(tmp_path, monkeypatch, stop):
    """Ctrl-C (or a full disk) inside torch.save: torch's zip writer then fails on closing with a RuntimeError of its
    own ("unexpected pos"), which reached the user as a traceback where Ctrl-C is exit 130 and one line. What
    stopped the write is raised instead, and no temporary file is left."""
    import builtins

    torch = pytest.importorskip("torch")
    from augexpand.train import checkpoint

    class Stopping:  # a file that takes 2000 bytes, then fails as ``stop`` says
        def __init__(self, f):
            self.f, self.written = f, 0

        def write(self, data):
            self.written += len(data)
            if self.written > 2000:
                raise stop
            return self.f.write(data)

        def flush(self):
            self.f.flush()

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(checkpoint, "open", lambda fd, mode: Stopping(builtins.open(fd, mode)),  # noqa: SIM115
                        raising=False)
    with pytest.raises(type(stop)) as caught:
        checkpoint.save_checkpoint({"weights": torch.zeros(10_000)}, tmp_path / "last.pt")
    if isinstance(stop, OSError):
        assert caught.value.filename == str(tmp_path / "last.pt") and caught.value.errno == 28
    assert list(tmp_path.iterdir()) == []
