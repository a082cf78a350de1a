"""The destination's rules: --overwrite removes only our files, --resume keeps only verified files, nothing is
written through a link, one run writes a destination at a time, and every failure is one clear line."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from augexpand.cli import cli
from augexpand.destination import Destination, read_journal, write_output
from augexpand.errors import DestinationError, SourceError
from augexpand.expansion import expand
from augexpand.folder import decode_image, write_atomic
from augexpand.manifest import read_metadata
from tests.conftest import save_rgb, tree_digest


def run(src, dst, recipe, **kwargs):
    kwargs.setdefault("workers", 1)
    return expand(src, dst, recipe, **kwargs)


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_error_line(result, code: int = 1) -> str:
    """The CLI failed with exactly one ``Error: ...`` line and no traceback."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[-1].startswith("Error: ") and len([x for x in lines if x.startswith("Error")]) == 1, lines
    return lines[-1]


def listed(dst: Path) -> set[str]:
    """The files that dst's manifests list, as paths relative to dst."""
    out = set()
    for split in ("train", "val"):
        meta = dst / split / "metadata.jsonl"
        if meta.exists():
            out |= {f"{split}/{r['file_name']}" for r in read_metadata(meta)}
    return out


def temp_files(dst: Path) -> list[Path]:
    return [p for p in dst.rglob("*") if p.name.endswith(".augexpand-tmp")]


def same_output(a: Path, b: Path) -> None:
    """Every image and metadata.jsonl byte for byte, and the card's counts (its timings differ)."""
    da, db = tree_digest(a), tree_digest(b)
    assert da.pop("dataset.json") and db.pop("dataset.json")
    assert da == db
    cards = [json.loads((d / "dataset.json").read_text()) for d in (a, b)]
    assert cards[0]["counts"] == cards[1]["counts"]


def journal_of(dst: Path) -> Path:
    (journal,) = (dst / ".augexpand").glob("journal-*.jsonl")  # one worker: one journal
    return journal


def interrupted(src: Path, dst: Path, recipe, monkeypatch, after: int = 17, **kwargs) -> None:
    """A run that dies (KeyboardInterrupt) while making its ``after``-th row."""
    from augexpand.rows import RowMaker

    real = RowMaker.run_row
    calls = {"n": 0}

    def dies(self, row):
        calls["n"] += 1
        if calls["n"] == after:
            raise KeyboardInterrupt
        return real(self, row)

    monkeypatch.setattr(RowMaker, "run_row", dies)
    with pytest.raises(KeyboardInterrupt):
        run(src, dst, recipe, **kwargs)
    monkeypatch.setattr(RowMaker, "run_row", real)


# --------------------------------------------------------------------------------------------------------------
# --overwrite


def slow_job(tmp_path: Path, photos, per_class: int) -> tuple[Path, Path, dict[str, str]]:
    """For a run to stop while it writes: ``per_class`` photo crops in each of two classes, a recipe of ten rotated
    copies each, and the environment in which ``python -m augexpand`` imports this tree."""
    from tests.conftest import crops

    src = tmp_path / "src"
    for name, photo in (("cat", "chelsea"), ("rocket", "rocket")):
        for k, image in enumerate(crops(photos[photo], per_class, seed=3, size=(40, 32))):
            save_rgb(src / name / f"{name}_{k}.jpg", image)
    recipe = tmp_path / "slow.yaml"
    recipe.write_text("seed: 1\ncopies: 10\npipeline:\n  - Rotate: {limit: 30, p: 1}\noutput: {size: 32, format: png}\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    return src, recipe, env


def test_overwrite_removes_only_what_the_earlier_run_wrote(small_src, tmp_path, tiny_recipe, photos):
    dst = tmp_path / "out"
    run(small_src, dst, tiny_recipe)
    ours = listed(dst)
    # The user's own files, beside and among ours: a CSV, an image in a class folder, a val/ of their own.
    (dst / "train" / "my_labels.csv").write_text("file,label\n")
    mine = save_rgb(dst / "train" / "cat" / "x.jpg", photos["chelsea"][:40, :40])
    save_rgb(dst / "val" / "cat" / "held_out.jpg", photos["chelsea"][:30, :30])
    (dst / "notes.txt").write_text("mine")
    outside = tmp_path / "elsewhere.jpg"
    outside.write_bytes(b"not ours")
    victim = min(f for f in ours if "__augment_" in f)  # a name the next run does not write again
    (dst / victim).unlink()
    (dst / victim).symlink_to(outside)  # one of our names is now a link out of dst: never followed, never removed
    users = {p: p.read_bytes() for p in (dst / "train" / "my_labels.csv", mine, dst / "val/cat/held_out.jpg",
                                         dst / "notes.txt", outside)}

    summary = run(small_src, dst, tiny_recipe, overrides={"copies": 0, "mix": {}}, overwrite=True)

    for path, data in users.items():
        assert path.read_bytes() == data, path
    assert (dst / victim).is_symlink()
    left = {p.relative_to(dst).as_posix() for p in dst.rglob("*") if p.is_file() and not p.is_symlink()}
    assert left - {"train/metadata.jsonl", "dataset.json"} == listed(dst) | {
        "train/my_labels.csv", "train/cat/x.jpg", "val/cat/held_out.jpg", "notes.txt"}
    assert summary["images_out"] == 10 and len(listed(dst)) == 10
    assert not (ours - {victim}) & {p.relative_to(dst).as_posix() for p in dst.rglob("*__*")}
    assert not (dst / ".augexpand").exists()


def test_overwrite_of_an_interrupted_run_removes_its_journaled_files(small_src, tmp_path, tiny_recipe, monkeypatch):
    dst = tmp_path / "out"
    interrupted(small_src, dst, tiny_recipe, monkeypatch)
    journaled, _ = read_journal(journal_of(dst))
    assert journaled and not (dst / "dataset.json").exists()
    (dst / "train" / "cat" / "mine.txt").write_text("keep")
    run(small_src, dst, tiny_recipe, overrides={"copies": 0, "mix": {}}, overwrite=True)
    assert (dst / "train" / "cat" / "mine.txt").read_text() == "keep"
    on_disk = {p.relative_to(dst).as_posix() for p in dst.rglob("*.png")}
    assert on_disk == listed(dst) and len(on_disk) == 10


def test_overwrite_never_follows_a_linked_class_folder(small_src, tmp_path, tiny_recipe):
    dst = tmp_path / "out"
    run(small_src, dst, tiny_recipe)
    elsewhere = tmp_path / "elsewhere"
    (dst / "train" / "coffee").rename(elsewhere)  # the user moved the folder away and left a link
    (dst / "train" / "coffee").symlink_to(elsewhere, target_is_directory=True)
    before = tree_digest(elsewhere)
    with pytest.raises(DestinationError, match=r"train/coffee is a link; augexpand writes only into real folders"):
        run(small_src, dst, tiny_recipe, overwrite=True)
    assert tree_digest(elsewhere) == before and (dst / "dataset.json").exists()  # refused before deleting


# --------------------------------------------------------------------------------------------------------------
# --resume keeps only what it can verify


def test_resume_redoes_a_truncated_file_and_a_users_file(small_src, tmp_path, tiny_recipe, monkeypatch):
    run(small_src, tmp_path / "whole", tiny_recipe)
    dst = tmp_path / "cut"
    interrupted(small_src, dst, tiny_recipe, monkeypatch)
    records, _ = read_journal(journal_of(dst))
    first, second, third = (dst / r["split"] / r["file_name"] for r in list(records.values())[:3])
    first.write_bytes(first.read_bytes()[:50])  # truncated in place
    second.unlink()
    second.write_bytes(b"\x89PNG a user's own file" + b"\0" * 10)  # another file at an output path
    os.utime(third, ns=(0, 0))  # same bytes, touched (another mtime): the hash says it is ours: kept
    summary = run(small_src, dst, tiny_recipe, resume=True)
    assert summary["resumed_rows"] == len(records) - 2
    same_output(dst, tmp_path / "whole")
    assert decode_image(first).shape == (32, 32, 3)


def test_resume_refuses_to_write_through_a_linked_class_folder(small_src, tmp_path, tiny_recipe, monkeypatch):
    dst = tmp_path / "cut"
    interrupted(small_src, dst, tiny_recipe, monkeypatch)
    outside = tmp_path / "outside"
    outside.mkdir()
    assert not (dst / "train" / "rocket").exists()  # made when its first image is written
    (dst / "train" / "rocket").symlink_to(outside, target_is_directory=True)
    before = tree_digest(outside)
    result = invoke("expand", "-r", tiny_recipe, small_src, dst, "--resume", "-w", "1")
    assert "rocket is a link; augexpand writes only into real folders" in one_error_line(result)
    assert tree_digest(outside) == before


def test_write_output_never_follows_a_link(tmp_path):
    dst = tmp_path / "dst"
    (dst / "train").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (dst / "train" / "cat").symlink_to(outside, target_is_directory=True)
    with pytest.raises(DestinationError, match="is a link or not a folder"):
        write_output(str(dst), "train", "cat", "a.png", b"data")
    (dst / "train" / "dog").mkdir()
    (dst / "train" / "dog" / "a.png").symlink_to(outside / "target.png")
    written = write_output(str(dst), "train", "dog", "a.png", b"12345")  # replaces the link, not its target
    assert not (dst / "train" / "dog" / "a.png").is_symlink() and (dst / "train" / "dog" / "a.png").read_bytes() == b"12345"
    assert list(outside.iterdir()) == [] and written["size"] == 5
    assert [p.name for p in (dst / "train" / "dog").iterdir()] == ["a.png"]


def test_a_damaged_journal_or_manifest_is_skipped_and_remade(small_src, tmp_path, tiny_recipe, monkeypatch, caplog):
    run(small_src, tmp_path / "whole", tiny_recipe)
    dst = tmp_path / "cut"
    interrupted(small_src, dst, tiny_recipe, monkeypatch)
    journal = journal_of(dst)
    lines = journal.read_text().splitlines()
    lines[3] = lines[3][:30] + "\x00garbage"  # a bad line in the middle, not only a cut last one
    lines[5] = json.dumps({"row": "five", "file_name": "../../etc/passwd", "split": "train"})
    journal.write_text("\n".join(lines) + "\n")
    summary = run(small_src, dst, tiny_recipe, resume=True)
    assert summary["resumed_rows"] == len(lines) - 2
    assert "2 unreadable line(s)" in caplog.text
    same_output(dst, tmp_path / "whole")

    meta = dst / "train" / "metadata.jsonl"  # a finished run's manifest, damaged: its bad rows are made again
    meta.write_text(meta.read_text().replace('"op"', '"op', 1))
    again = run(small_src, dst, tiny_recipe, resume=True)
    assert again["resumed_rows"] == again["images_out"] - 1
    same_output(dst, tmp_path / "whole")


def test_a_manifest_line_edited_to_another_rows_file_or_label_is_made_again(small_src, tmp_path, tiny_recipe):
    # Each line parsed and named an existing file, so --resume kept it: two lines listed one file, the image of
    # the edited row was left out of the manifest, and an edited label went into the final manifest.
    whole = tmp_path / "whole"
    run(small_src, whole, tiny_recipe)
    dst = tmp_path / "edited"
    shutil.copytree(whole, dst)
    meta = dst / "train" / "metadata.jsonl"
    lines = [json.loads(line) for line in meta.read_text().splitlines()]
    lines[2]["file_name"] = lines[3]["file_name"]  # another row's file
    lines[4]["label"] = "rocket" if lines[4]["label"] != "rocket" else "cat"  # a label that is not its folder
    lines[5]["op"], lines[6]["row"] = "smote", lines[7]["row"]  # another op; another row's number
    meta.write_text("".join(json.dumps(r) + "\n" for r in lines))
    summary = run(small_src, dst, tiny_recipe, resume=True)
    assert summary["resumed_rows"] == len(lines) - 4
    same_output(dst, whole)


def test_a_damaged_run_file_is_one_clear_error(small_src, tmp_path, tiny_recipe, monkeypatch):
    dst = tmp_path / "cut"
    interrupted(small_src, dst, tiny_recipe, monkeypatch)
    (dst / ".augexpand" / "run.json").write_text("{not json")
    result = invoke("expand", "-r", tiny_recipe, small_src, dst, "--resume", "-w", "1")
    assert "run.json is damaged" in one_error_line(result)


# --------------------------------------------------------------------------------------------------------------
# One writer at a time


def test_a_second_run_or_overwrite_is_refused_while_one_writes(small_src, tmp_path, tiny_recipe):
    dst = tmp_path / "out"
    run(small_src, dst, tiny_recipe)
    before = tree_digest(dst)
    with Destination(dst, resume=True):  # a run in progress (the lock is per open file: this process counts)
        for kwargs in ({"overwrite": True}, {"resume": True}):
            with pytest.raises(DestinationError, match=rf"being written by another augexpand run \(pid {os.getpid()}"
                                                        r" on .*\); one run writes a destination at a time"):
                run(small_src, dst, tiny_recipe, **kwargs)
    assert {k: v for k, v in tree_digest(dst).items() if ".augexpand" not in k} == before  # nothing deleted
    run(small_src, dst, tiny_recipe, overwrite=True)  # the lock is gone with its holder


def test_shards_share_the_lock_and_an_overwrite_waits_for_all(small_src, tmp_path, tiny_recipe):
    dst = tmp_path / "out"
    with Destination(dst, shard=(1, 3)), Destination(dst, shard=(2, 3)):
        with pytest.raises(DestinationError, match=r"shard 1/3 of .* is already running \(pid"):
            Destination(dst, shard=(1, 3))
        result = invoke("expand", "-r", tiny_recipe, small_src, dst, "--resume", "-w", "1")
        assert "being written by shard 1/3 (pid" in one_error_line(result)
        assert "shard 2/3 (pid" in result.output
    run(small_src, dst, tiny_recipe, resume=True)  # all shards gone: the destination is free


def test_a_refused_run_leaves_nothing_behind(small_src, tmp_path, tiny_recipe):
    dst = tmp_path / "new" / "out"
    with Destination(dst, shard=(1, 2)):
        with pytest.raises(DestinationError):
            Destination(dst)
        assert sorted(p.name for p in (dst / ".augexpand").iterdir()) == ["lock", "shard-1-of-2.lock"]
    assert run(small_src, dst, tiny_recipe)["images_out"] == 45  # lock files alone: an empty destination
    (tmp_path / "nothing" / "cat").mkdir(parents=True)
    with pytest.raises(SourceError):  # a failure before anything is written: what the run made is removed
        run(tmp_path / "nothing", tmp_path / "x" / "y", tiny_recipe)
    assert not (tmp_path / "x").exists()


# --------------------------------------------------------------------------------------------------------------
# Environment failures: one line, exit 1, no temporary file left


def test_destination_under_a_file_or_in_proc_is_one_line(small_src, tmp_path, tiny_recipe):
    (tmp_path / "afile").write_text("x")
    assert "is under" in one_error_line(invoke("expand", "-r", tiny_recipe, small_src, tmp_path / "afile" / "d"))
    assert "which is a file" in one_error_line(invoke("expand", "-r", tiny_recipe, small_src, tmp_path / "afile"
                                                      / "d" / "e"))
    assert "cannot create destination /proc/" in one_error_line(invoke("expand", small_src, "/proc/augexpand-out"))
    assert "exists and is not a folder" in one_error_line(invoke("expand", small_src, tmp_path / "afile"))


def _as_nobody(fn):
    """Run ``fn()`` as an unprivileged user (a forked child that drops root); return its error text or None."""
    if os.geteuid() != 0:
        try:
            fn()
        except DestinationError as exc:
            return str(exc)
        return None
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.setgid(65534)
            os.setuid(65534)
            fn()
            message = "no error"
        except DestinationError as exc:
            message = str(exc)
        except BaseException as exc:  # noqa: BLE001 -- reported to the parent, which fails the test
            message = f"unexpected {type(exc).__name__}: {exc}"
        os.write(w, message.encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        message = f.read()
    os.waitpid(pid, 0)
    return message


def test_an_unwritable_destination_is_one_line(tmp_path, small_src, tiny_recipe, monkeypatch):
    import tempfile

    top = Path(tempfile.mkdtemp(prefix="augexpand-test-"))  # outside pytest's private (0700) tmp folders
    try:
        os.chmod(top, 0o755)
        (top / "exists").mkdir(mode=0o755)  # a user may look in, but not write
        assert "cannot create destination" in _as_nobody(lambda: Destination(top / "out"))
        assert "Permission denied" in _as_nobody(lambda: Destination(top / "out" / "deeper"))
        assert "is not writable (permission denied)" in _as_nobody(lambda: Destination(top / "exists"))
        assert "cannot use destination" in _as_nobody(lambda: Destination(tmp_path / "out"))  # cannot even look
        assert os.listdir(top) == ["exists"] and os.listdir(top / "exists") == []
    finally:
        shutil.rmtree(top)
    # The same through the CLI (root ignores modes: os.access answers as it would for a user).
    monkeypatch.setattr("augexpand.destination._writable", lambda path: False)
    (tmp_path / "empty").mkdir()
    assert "is not writable" in one_error_line(invoke("expand", small_src, tmp_path / "empty"))


def test_a_full_disk_is_one_line_leaves_no_temporary_file_and_resumes(small_src, tmp_path, tiny_recipe,
                                                                       monkeypatch):
    run(small_src, tmp_path / "whole", tiny_recipe)
    dst = tmp_path / "full"
    real_write = os.write
    written = {"n": 0}

    def fills_up(fd, data):
        written["n"] += 1
        if written["n"] > 20:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", fills_up)
    result = invoke("expand", "-r", tiny_recipe, small_src, dst, "-w", "1")
    monkeypatch.setattr(os, "write", real_write)
    line = one_error_line(result)
    assert "No space left on device" in line and "--resume" in line
    assert temp_files(dst) == []
    assert len(list(dst.rglob("*.png"))) == 10  # two writes a row: its image, its journal line
    run(small_src, dst, tiny_recipe, resume=True)
    same_output(dst, tmp_path / "whole")


def test_a_full_disk_while_writing_the_manifest(small_src, tmp_path, tiny_recipe, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "metadata.jsonl")

    monkeypatch.setattr("augexpand.expansion.write_metadata", full)
    result = invoke("expand", "-r", tiny_recipe, small_src, tmp_path / "out", "-w", "1")
    assert "cannot write to metadata.jsonl: No space left on device" in one_error_line(result)


def test_write_atomic_removes_its_temporary_file_on_failure(tmp_path):
    with pytest.raises(AttributeError):  # fails after the temporary file is made (not bytes, not text)
        write_atomic(tmp_path / "a.txt", 5)
    assert list(tmp_path.iterdir()) == []


class _Hang(Exception):
    pass


def _within(seconds: int):
    """Fail (not hang) when the code blocks longer than ``seconds``: SIGALRM interrupts a blocking open()."""
    import contextlib

    @contextlib.contextmanager
    def guard():
        def stop(signum, frame):
            raise _Hang(f"blocked for {seconds} s")

        previous = signal.signal(signal.SIGALRM, stop)
        signal.alarm(seconds)
        try:
            yield
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)

    return guard()


@pytest.mark.parametrize("name, args, words", [
    # a FIFO in place of the card: opening it waited for a writer for ever
    ("dataset.json", ["--overwrite"], "refusing to overwrite"),
    ("dataset.json", ["--resume"], "cannot resume into"),
    # and in place of the manifest, once the card says the folder is ours
    ("train/metadata.jsonl", ["--overwrite"], "metadata.jsonl: a FIFO, not a regular file"),
    ("train/metadata.jsonl", ["--resume"], "metadata.jsonl: a FIFO, not a regular file"),
    # inspect reads the card too: it counts the folders instead
    ("dataset.json", ["inspect"], None),
])
def test_a_fifo_in_place_of_our_files_is_one_line_not_a_hang(small_src, tmp_path, tiny_recipe, name, args, words):
    dst = tmp_path / "out"
    run(small_src, dst, tiny_recipe)
    os.unlink(dst / name)
    os.mkfifo(dst / name)
    with _within(20):
        result = invoke("inspect", dst) if args == ["inspect"] else \
            invoke("expand", "-r", tiny_recipe, small_src, dst, "-w", "1", *args)
    if words is None:
        assert result.exit_code == 0 and "training images" in result.output, result.output
    else:
        assert words in one_error_line(result)
    assert stat_kind(dst / name) == "fifo" and sorted(p.name for p in (dst / "train").rglob("*.png"))


def stat_kind(path: Path) -> str:
    import stat

    return "fifo" if stat.S_ISFIFO(os.lstat(path).st_mode) else "other"


@pytest.mark.parametrize("stop", ["SIGTERM", "SIGINT"])
def test_sigterm_or_ctrl_c_stops_quietly_and_resume_finishes(tmp_path, photos, stop):
    src, recipe, env = slow_job(tmp_path, photos, 20)
    cmd = [sys.executable, "-m", "augexpand", "expand", "-r", str(recipe), str(src)]
    dst = tmp_path / "out"
    proc = subprocess.Popen([*cmd, str(dst), "-w", "2"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # noqa: PLW1509
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any((dst / "train").rglob("*.png")):
        time.sleep(0.02)  # stopped while the workers write
    proc.send_signal(getattr(signal, stop))
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + getattr(signal, stop), err
    assert "Traceback" not in err and "BrokenPipe" not in err and "Aborted!" not in err, err
    if stop == "SIGTERM":
        assert "stopped by SIGTERM" in err
    else:  # Ctrl-C: one line, as train and tune say it (was Click's "Aborted!", exit 1)
        assert err.strip().splitlines()[-1] == (f"Error: interrupted: the images made so far are kept in {dst}; run "
                                                f"the same command with --resume to finish")
    assert not (dst / "dataset.json").exists() and temp_files(dst) == []
    subprocess.run([*cmd, str(dst), "--resume", "-w", "2", "-q"], env=env, check=True)
    run(src, tmp_path / "whole", recipe)
    same_output(dst, tmp_path / "whole")


# --------------------------------------------------------------------------------------------------------------
# The layout: no empty class folders (torchvision's ImageFolder refuses them)


def test_no_empty_class_folder_in_val_or_train(small_src, tmp_path, tiny_recipe):
    dst = tmp_path / "out"
    summary = run(small_src, dst, tiny_recipe, val_fraction=0.2)
    assert summary["counts"]["val"] == {"cat": 1, "coffee": 1, "rocket": 0}
    assert sorted(p.name for p in (dst / "val").iterdir() if p.is_dir()) == ["cat", "coffee"]
    for split in ("train", "val"):
        for folder in (dst / split).iterdir():
            if folder.is_dir():
                assert any(folder.iterdir()), folder
    for r in read_metadata(dst / "val" / "metadata.jsonl"):
        assert np.array_equal(decode_image(dst / "val" / r["file_name"]), decode_image(small_src / r["sources"][0]))


def test_a_killed_workers_temporary_file_is_gone_when_the_run_ends(small_src, tmp_path, tiny_recipe, monkeypatch):
    import augexpand.rows

    real = augexpand.rows.write_output

    def leaves_a_temp(dst, split, folder, name, data, tag="", journal=None):
        # What a worker killed between creating its temporary file and the rename leaves (another process's pid)
        Path(dst, split, folder).mkdir(parents=True, exist_ok=True)
        Path(dst, split, folder, f".{tag}99999-dead.augexpand-tmp").write_bytes(b"half")
        return real(dst, split, folder, name, data, tag, journal)

    monkeypatch.setattr(augexpand.rows, "write_output", leaves_a_temp)
    dst = tmp_path / "out"
    run(small_src, dst, tiny_recipe)
    assert temp_files(dst) == [] and (dst / "dataset.json").exists()
    shard = run(small_src, tmp_path / "shard", tiny_recipe, shard=(1, 1))
    assert shard["shard"]["made"] == 45 and temp_files(tmp_path / "shard") == []


def test_a_class_that_gets_no_output_has_no_train_folder(small_src, tmp_path):
    # Only SMOTE images for the minority class: cat and coffee receive nothing, and get no (empty) folder.
    recipe = {"seed": 0, "copies": 0, "keep_originals": False, "output": {"size": 32, "format": "png"},
              "oversample": {"method": "smote", "sampling_strategy": "minority", "k_neighbors": 1}}
    dst = tmp_path / "out"
    summary = run(small_src, dst, recipe)
    assert summary["counts"]["train"] == {"cat": 0, "coffee": 0, "rocket": 3}
    assert sorted(p.name for p in (dst / "train").iterdir()) == ["metadata.jsonl", "rocket"]
    assert len(list((dst / "train" / "rocket").iterdir())) == 3
