"""The destination folder: what may be written there, who writes it, and what a resumed run may keep.

``dst`` must not overlap the source; a non-empty ``dst`` is written only to resume or replace an earlier run of
ours. While a run is in progress ``dst/.augexpand`` holds ``run.json`` (the run's fingerprint), the journal of
finished rows (``journal.jsonl``, or ``journal-I-of-N.jsonl`` for shard I of N) and the lock files; the
orchestration removes it when the card is written.

The rules, each enforced here:

- **One writer.** A run holds an exclusive ``flock`` on ``.augexpand/lock`` from before its scan to its end; a shard
  of a job array holds it shared (shards run side by side) plus an exclusive lock on its own
  ``shard-I-of-N.lock``. A second run, or an ``--overwrite`` while any shard runs, is refused, naming the holder.
- **Only our files are removed.** ``--overwrite`` unlinks the files that the earlier run's manifest or journal lists
  (regular files only, found without following any link), its manifest, card and state, our temporary files, then
  the folders that this left empty. Anything else under ``dst`` stays.
- **Nothing is written through a link.** Images are written with ``openat`` from ``dst`` down, ``O_NOFOLLOW`` at
  every step, into an ``O_EXCL`` temporary file that is renamed into place; a class folder that is a link is an
  error, never followed.
- **What is kept is verified.** A journal record carries the size, inode, mtime and BLAKE2b hash of the file as
  written; ``--resume`` keeps a row only when the file at its path is a regular file of that size and identity
  (or, after a copy, that hash). Anything else (a truncated file, a user's file at an output path) is made again.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import socket
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Self

from augexpand import __version__
from augexpand.errors import DestinationError, ImageReadError
from augexpand.folder import ScanResult, display_name, is_temp_file, open_regular, write_atomic
from augexpand.manifest import CARD_NAME, METADATA_NAME, RecordStore, read_card
from augexpand.recipe import Recipe

__all__ = [
    "JOURNAL_ONLY",
    "STATE_DIR",
    "Destination",
    "OutputWriteError",
    "append_journal",
    "check_paths",
    "fingerprint",
    "parse_shard",
    "read_journal",
    "remove_temp_files",
    "write_output",
]

log = logging.getLogger("augexpand")

STATE_DIR = ".augexpand"  # inside dst while a run is in progress: run.json, the journals, the locks
SPLITS = ("train", "val")
JOURNAL_ONLY = ("split", "written")  # record keys kept in the journal, not in metadata.jsonl
# journal.jsonl (older runs), journal-<run tag>-<host>-<pid>.jsonl (one per worker process, on any machine that
# shares dst), and a shard's journal-<I>-of-<N>-<run tag>-<host>-<pid>.jsonl
_JOURNAL = re.compile(r"journal(-[0-9]+-of-[0-9]+)?(-[0-9a-f]+-[0-9a-f]+-[0-9]+)?\.jsonl")
_SHARD_LOCK = re.compile(r"shard-([0-9]+)-of-([0-9]+)\.lock")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CHUNK = 1 << 20
MAX_RECORD_LINE = 16 << 20  # a manifest or journal line longer than this is none of ours (800,000 classes)
_WRITE_HINT = "free some space (or fix the permissions), then run again with --resume"
MAX_SHARDS = 1_000_000  # a job array far larger than any scheduler runs; beyond 2**63 numpy could not even count it
_HOST = hashlib.blake2b(socket.gethostname().encode(), digest_size=3).hexdigest()  # in journal names


class OutputWriteError(DestinationError):
    """An output file could not be written (disk full, permission, a link where a folder should be)."""


def _inside(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def check_paths(src: Path, dst: Path) -> None:
    if _inside(dst, src):
        raise DestinationError(f"destination {dst} is {'the source' if dst == src else 'inside the source'} {src}; "
                               f"the source is never written to")
    if _inside(src, dst):
        raise DestinationError(f"destination {dst} contains the source {src}; choose a folder outside it")
    try:
        links = [e for e in os.scandir(src) if e.is_symlink() and not e.name.startswith(".")]
    except OSError:
        return  # the scan names what it cannot read
    for entry in links:  # a class folder link into dst: --overwrite would delete its images before they are read
        real = Path(os.path.realpath(entry.path))
        if _inside(real, dst) or (_inside(dst, real) and not _inside(src, real)):  # (one around src: not followed)
            raise DestinationError(f"the source's class folder {display_name(entry.name)!r} is a link to {real}, "
                                   f"{'inside' if _inside(real, dst) else 'around'} the destination {dst}; the "
                                   f"source is never written to: choose another destination")


def parse_shard(value: Any) -> tuple[int, int] | None:
    """``"I/N"`` or ``(I, N)`` -> (I, N) with 1 <= I <= N; None stays None. Raises ValueError with the reason."""
    if value is None:
        return None
    if isinstance(value, str):
        parts = value.strip().split("/")
        if len(parts) != 2 or not all(p.strip().isascii() and p.strip().isdigit() for p in parts):
            raise ValueError(f"expected I/N, e.g. 1/4 (shard I of N, counted from 1), got {value!r}")
        value = (int(parts[0]), int(parts[1]))
    if (not isinstance(value, (tuple, list)) or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
        raise ValueError(f"expected a shard (I, N) of two integers, got {value!r}")
    i, n = value
    if n < 1:
        raise ValueError(f"the number of shards must be at least 1, got {i}/{n}")
    if n > MAX_SHARDS:
        raise ValueError(f"at most {MAX_SHARDS:,} shards, got {n:,}")
    if not 1 <= i <= n:
        raise ValueError(f"shard index must be from 1 to {n} (counted from 1), got {i}/{n}")
    return (i, n)


def fingerprint(scan: ScanResult, recipe: Recipe, val_fraction: float) -> str:
    """What a resumed run (or another shard) must share with this one: recipe, split and the exact source files."""
    h = hashlib.sha256()
    h.update(json.dumps([__version__, recipe.resolved(), val_fraction], sort_keys=True, default=str).encode())
    for s in scan.sources:
        try:
            st = (scan.root / s.rel).stat()
            stamp = f"{st.st_size}\0{st.st_mtime_ns}"
        except OSError:  # gone (or unreadable) since the scan: its rows name it when they fail to decode it
            stamp = "gone"
        h.update(f"{s.rel}\0{stamp}\n".encode("utf-8", "surrogateescape"))  # any bytes a name holds
    return h.hexdigest()[:32]


# --------------------------------------------------------------------------------------------------------------
# Writing one output file (worker side)


def _open_folder(dst: str, parts: tuple[str, ...], create: bool = True) -> int:
    """A descriptor of dst/<parts...>, made if missing, reached without following any link below ``dst``."""
    fd = os.open(dst, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts:
            if create:
                try:
                    os.mkdir(part, dir_fd=fd)
                except FileExistsError:
                    pass
            try:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    where = os.path.join(dst, *parts[:parts.index(part) + 1])
                    raise OutputWriteError(f"{where} is a link or not a folder; augexpand writes only into real "
                                           f"folders inside the destination",
                                           hint="remove or rename it, then run again") from None
                raise
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_output(dst: str, split: str, folder: str, name: str, data: bytes | Path, tag: str = "",
                 journal: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Write ``dst/split/folder/name`` atomically: an ``O_EXCL|O_NOFOLLOW`` temporary file, then a rename, never
    through a link. ``data``: the bytes, or a file to copy. Returns what the journal records of the file (size,
    inode, mtime, BLAKE2b), after calling ``journal`` with it *before* the rename (a rename keeps inode and mtime):
    so every file that reaches its name is in a journal, and ``--overwrite`` can find it."""
    try:
        fd = _open_folder(dst, (split, folder))
    except OSError as exc:
        raise OutputWriteError(f"cannot write {os.path.join(dst, split, folder)}: {exc.strerror or exc}",
                               hint=_WRITE_HINT) from None
    if isinstance(data, (bytes, bytearray, memoryview)):
        chunks = (memoryview(data),)
    else:
        try:
            source = open(data, "rb")  # noqa: SIM115 -- closed by the generator below
        except OSError as exc:
            os.close(fd)
            raise ImageReadError(f"cannot read {data}: {exc.strerror or exc}") from None
        chunks = _chunks_of(source)
    tmp = f".{tag}{os.getpid()}-{secrets.token_hex(4)}.augexpand-tmp"
    digest = hashlib.blake2b(digest_size=16)
    try:
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666, dir_fd=fd)
        try:
            size = 0
            for chunk in chunks:
                digest.update(chunk)
                size += len(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(out, view):]
            st = os.fstat(out)
        finally:
            os.close(out)
        written = {"size": size, "blake2b": digest.hexdigest(), "ino": st.st_ino, "mtime_ns": st.st_mtime_ns}
        if journal is not None:
            journal(written)
        os.replace(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
    except BaseException as exc:
        try:
            os.unlink(tmp, dir_fd=fd)
        except OSError:
            pass
        if isinstance(exc, OSError):
            in_the_way = exc.errno in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST)  # a folder at the file's name
            raise OutputWriteError(f"cannot write {os.path.join(dst, split, folder, name)}: "
                                   f"{'a folder stands at that name' if in_the_way else exc.strerror or exc}",
                                   hint="move it away (it is no file of augexpand's), then run again with --resume"
                                   if in_the_way else _WRITE_HINT) from None
        raise
    finally:
        os.close(fd)
    return written


def append_journal(prefix: str, tag: str, record: dict[str, Any]) -> None:
    """Append a record to this process's journal, ``<prefix><tag><host>-<pid>.jsonl`` (one file per worker process,
    also across machines sharing dst, so no two processes append to one file; a line cut short by a kill is skipped
    when read)."""
    line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
    fd = os.open(f"{prefix}{tag}{_HOST}-{os.getpid()}.jsonl",
                 os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    try:
        end = os.lseek(fd, 0, os.SEEK_END)
        try:
            view = memoryview(line)
            while view:  # a full disk writes what fits and says so only at the next write
                view = view[os.write(fd, view):]
        except BaseException:
            os.ftruncate(fd, end)  # no half line: the file it was for does not get its name
            raise
    finally:
        os.close(fd)


def _chunks_of(f):
    with f:
        while chunk := f.read(_CHUNK):
            yield chunk


def _read_chunks(path: Path):
    return _chunks_of(open(path, "rb"))


def remove_temp_files(dst: Path, tag: str | None = None) -> int:
    """Remove our temporary files from ``dst/{train,val}/<class>/`` (a run's own, by ``tag``, or every one)."""
    removed = 0
    for split in SPLITS if tag is not None else ("", *SPLITS):  # "": dst itself (the card's temporary file)
        try:
            split_fd = _open_folder(str(dst), (split,) if split else (), create=False)
        except (OSError, DestinationError):
            continue
        try:
            for folder in [None, *(os.listdir(split_fd) if split else ())]:
                try:
                    fd = os.dup(split_fd) if folder is None else os.open(folder, _DIR_FLAGS, dir_fd=split_fd)
                except OSError:
                    continue
                try:
                    for name in os.listdir(fd):
                        if is_temp_file(name) and (tag is None or name.startswith(f".{tag}")):
                            try:
                                os.unlink(name, dir_fd=fd)
                                removed += 1
                            except OSError:
                                pass
                finally:
                    os.close(fd)
        finally:
            os.close(split_fd)
    return removed


# --------------------------------------------------------------------------------------------------------------
# Reading what an earlier run wrote


def _safe_name(file_name: Any) -> tuple[str, str] | None:
    """``"class/name.jpg"`` -> (class, name), or None for anything that is not exactly that (``..``, ``/abs``)."""
    if not isinstance(file_name, str):
        return None
    parts = file_name.split("/")
    if len(parts) != 2 or any(p in ("", ".", "..") or "\0" in p for p in parts):
        return None
    return parts[0], parts[1]


def _valid_record(record: Any) -> bool:
    return (isinstance(record, dict) and isinstance(record.get("row"), int) and record.get("split") in SPLITS
            and _safe_name(record.get("file_name")) is not None)


def _iter_lines(path: Path, bad: list[int] | None = None) -> Iterator[Any]:
    """The JSON values of a JSON-lines file, one at a time (not following a link); ``bad[0]`` counts the lines that
    could not be read (cut short by an interruption, or damaged)."""
    try:
        f = open_regular(path, follow=False)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise DestinationError(f"cannot read {path}: {exc.strerror or exc}") from None
    with f:
        while raw := f.readline(MAX_RECORD_LINE + 1):
            if len(raw) > MAX_RECORD_LINE and not raw.endswith(b"\n"):  # not ours: read past, never held whole
                while raw and not raw.endswith(b"\n"):
                    raw = f.readline(_CHUNK)
                raw = b"\0"  # counted below as a line that could not be read
            if not raw.strip():
                continue
            try:
                yield json.loads(raw.decode("utf-8"))
            except (ValueError, RecursionError):  # RecursionError: a line of thousands of nested brackets
                if bad is not None:
                    bad[0] += 1


def _read_lines(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The JSON objects of a JSON-lines file (not following a link) and how many lines could not be read."""
    bad = [0]
    good = list(_iter_lines(path, bad))
    return good, bad[0]


def read_journal(path: Path) -> tuple[dict[int, dict[str, Any]], int]:
    """The journal's records by row, and how many of its lines were unreadable or malformed (skipped)."""
    records, bad = _read_lines(path)
    done: dict[int, dict[str, Any]] = {}
    for record in records:
        if _valid_record(record):
            done[record["row"]] = record
        else:
            bad += 1
    return done, bad


def _journals(state: Path) -> list[Path]:
    try:
        return sorted(state / name for name in os.listdir(state) if _JOURNAL.fullmatch(name))
    except OSError:
        return []


def _as_planned(record: dict[str, Any], planned: tuple[str, str, str]) -> bool:
    folder, name = _safe_name(record["file_name"])
    return (record["split"], record.get("op"), name) == planned and record.get("label") == folder


class _Checker:
    """Whether the file at a record's path is the one the record says was written (lstat; hash only if needed)."""

    def __init__(self, dst: Path) -> None:
        self.dst = dst
        self.folders: dict[tuple[str, str], bool] = {}

    def _real_folder(self, split: str, folder: str) -> bool:
        key = (split, folder)
        if key not in self.folders:
            try:
                ok = all(stat.S_ISDIR(os.lstat(p).st_mode) for p in (self.dst / split, self.dst / split / folder))
            except OSError:
                ok = False
            self.folders[key] = ok
        return self.folders[key]

    def __call__(self, record: dict[str, Any]) -> bool:
        folder, name = _safe_name(record["file_name"])
        if not self._real_folder(record["split"], folder):
            return False
        path = self.dst / record["split"] / folder / name
        try:
            st = os.lstat(path)
        except OSError:
            return False
        if not stat.S_ISREG(st.st_mode):
            return False
        written = record.get("written")
        if not isinstance(written, dict):  # a finished run's manifest: no journal to compare with
            return st.st_size > 0
        if st.st_size != written.get("size"):
            return False
        if st.st_ino == written.get("ino") and st.st_mtime_ns == written.get("mtime_ns"):
            return True
        digest = hashlib.blake2b(digest_size=16)  # another inode: a copy of the folder, or someone else's file
        try:
            for chunk in _read_chunks(path):
                digest.update(chunk)
        except OSError:
            return False
        return digest.hexdigest() == written.get("blake2b")


# --------------------------------------------------------------------------------------------------------------
# The destination of one run


class Destination:
    """The destination of one run: refusals, the lock, resume's verified records, overwrite's removals, the end.

    ``Destination(dst, ...)`` checks and locks (use it as a context manager, or call ``release``). Nothing is
    created in a folder that is refused.
    """

    def __init__(self, dst: Path, resume: bool = False, overwrite: bool = False,
                 shard: tuple[int, int] | None = None) -> None:
        self.dst = Path(dst)
        self.resume, self.overwrite, self.shard = resume, overwrite, shard
        self.state = self.dst / STATE_DIR
        self.created: list[Path] = []  # what this run made before writing anything (removed again on failure)
        self.started = False  # run.json written: from then on, a failure leaves the state for --resume
        self.tag = secrets.token_hex(3) + "-"  # prefix of this run's temporary files and journals
        # Each worker process journals the files it writes: <journal>-<tag><pid>.jsonl
        self.journal = str(self.state / ("journal-" if shard is None else "journal-{}-of-{}-".format(*shard)))
        self._fds: list[int] = []
        try:
            self._check()
            try:
                self._create()
                self._lock()
                self._check()  # again, under the lock: another run may have finished meanwhile
            except BaseException:
                self.release(failed=True)
                raise
        except OSError as exc:  # e.g. a folder above dst that this user may not look into
            raise DestinationError(f"cannot use destination {self.dst}: {exc.strerror or exc}"
                                   + (f" ({exc.filename})" if exc.filename else "")) from None

    # -- refusals -----------------------------------------------------------------------------------------------

    def _ours(self) -> bool:
        if read_card(self.dst) is not None:
            return True
        try:
            return stat.S_ISDIR(os.lstat(self.state).st_mode)
        except OSError:
            return False

    def _check(self) -> None:
        dst = self.dst
        for parent in dst.parents:
            if os.path.lexists(parent):
                if not parent.is_dir():
                    raise DestinationError(f"destination {dst} is under {parent}, which is a file, not a folder")
                break
        if os.path.lexists(dst) and not dst.is_dir():
            raise DestinationError(f"destination {dst} exists and is not a folder")
        if not dst.exists():
            return
        try:
            entries = [e for e in os.listdir(dst) if not (e == STATE_DIR and self._only_lock())]
        except OSError as exc:
            raise DestinationError(f"cannot read destination {dst}: {exc.strerror or exc}") from None
        if not _writable(dst):
            raise DestinationError(f"destination {dst} is not writable (permission denied)")
        if not entries:
            return
        if self.shard is not None or self.resume:
            if not self._ours():
                raise DestinationError(f"cannot {'write a shard' if self.shard else 'resume'} into {dst}: it is not "
                                       f"empty and was not written by augexpand (no {CARD_NAME} or {STATE_DIR} of "
                                       f"ours)")
            return
        if self.overwrite:
            if not self._ours():
                raise DestinationError(f"refusing to overwrite {dst}: it is not empty and was not written by "
                                       f"augexpand (no {CARD_NAME} of ours); nothing was deleted")
            return
        raise DestinationError(f"destination {dst} is not empty",
                               hint="use --resume to finish an earlier run there, or --overwrite to replace it")

    def _only_lock(self) -> bool:
        """A state folder holding nothing but lock files (a run that died before it started) counts as empty."""
        try:
            return all(n == "lock" or _SHARD_LOCK.fullmatch(n) for n in os.listdir(self.state))
        except OSError:
            return False

    # -- creation and the lock ---------------------------------------------------------------------------------

    def _create(self) -> None:
        missing = [p for p in (self.dst, *self.dst.parents) if not os.path.lexists(p)]
        try:
            self.dst.mkdir(parents=True, exist_ok=True)
            self.created += reversed(missing)
            try:
                self.state.mkdir()
                self.created.append(self.state)
            except FileExistsError:  # an earlier run's, or a shard's that starts at the same time
                pass
        except OSError as exc:
            where = exc.filename or self.dst
            raise DestinationError(f"cannot create destination {where}: {exc.strerror or exc}") from None
        if not stat.S_ISDIR(os.lstat(self.state).st_mode):
            raise DestinationError(f"{self.state} is a link or not a folder; it is augexpand's state folder",
                                   hint="remove it, then run again")

    def _open_lock(self, name: str, exclusive: bool) -> int:
        """Open and flock ``state/name``; make sure the locked file is still the one at that path."""
        path = self.state / name
        for _ in range(10):
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
            except OSError as exc:
                raise DestinationError(f"cannot lock destination {self.dst}: {exc.strerror or exc}") from None
            try:
                fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return -1
            try:
                same = os.fstat(fd).st_ino == os.lstat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return fd
            os.close(fd)  # removed by a run that just finished: lock the new one
        raise DestinationError(f"cannot lock destination {self.dst}: its lock file keeps changing")

    def _lock(self) -> None:
        me = f"pid {os.getpid()} on {socket.gethostname()}"
        fd = self._open_lock("lock", exclusive=self.shard is None)
        if fd < 0:
            raise DestinationError(f"{self.dst} is being written by {self._holders()}; one run writes a "
                                   f"destination at a time (shards of one plan aside)",
                                   hint="wait for it to finish (or stop it), then run again; nothing was deleted")
        self._fds.append(fd)
        if self.shard is None:
            _write_fd(fd, me)
            return
        i, n = self.shard
        fd = self._open_lock(f"shard-{i}-of-{n}.lock", exclusive=True)
        if fd < 0:
            who = _read_holder(self.state / f"shard-{i}-of-{n}.lock")
            raise DestinationError(f"shard {i}/{n} of {self.dst} is already running ({who})")
        self._fds.append(fd)
        _write_fd(fd, me)

    def _holders(self) -> str:
        """Who holds the destination's lock: the shards that run (their own locks say), or the one run."""
        shards = []
        try:
            names = sorted(os.listdir(self.state))
        except OSError:
            names = []
        for name in names:
            m = _SHARD_LOCK.fullmatch(name)
            if not m:
                continue
            try:
                fd = os.open(self.state / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                shards.append(f"shard {m[1]}/{m[2]} ({_read_holder(self.state / name)})")
            finally:
                os.close(fd)
        if shards:
            return ", ".join(shards)
        return f"another augexpand run ({_read_holder(self.state / 'lock')})"

    def release(self, failed: bool = False) -> None:
        """Unlock, removing this run's temporary files (a worker that was killed, or the run that was stopped, left
        them). After a failure before anything was written, also remove what this run created (folders, locks)."""
        if self._fds and (self.started or failed):
            remove_temp_files(self.dst, self.tag)
        if failed and not self.started:
            if self.shard is None and self._fds:  # held alone: no other run can be using the lock file
                _unlink_quiet(self.state / "lock")
            elif self.shard is not None and len(self._fds) == 2:
                _unlink_quiet(self.state / "shard-{}-of-{}.lock".format(*self.shard))
            for path in reversed(self.created):
                _rmdir_quiet(path)
        for fd in self._fds:
            os.close(fd)
        self._fds = []

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind, exc, tb) -> None:
        self.release(failed=kind is not None)

    # -- before the run ----------------------------------------------------------------------------------------

    def check_folders(self, classes: list[str]) -> None:
        """Refuse a ``train``/``val``/class folder that is a link or a file: it is never written through."""
        for split in SPLITS:
            for k, path in enumerate((self.dst / split, *(self.dst / split / c for c in classes))):
                if os.path.lexists(path) and (path.is_symlink() or not path.is_dir()):
                    kind = "a link" if path.is_symlink() else "not a folder"
                    raise DestinationError(f"{path} is {kind}; augexpand writes only into real folders inside the "
                                           f"destination", hint="remove or rename it, then run again")
                if k == 0 and not path.is_dir():
                    break

    def _recorded(self, manifest: bool, journals: list[Path], bad: list[int]) -> Iterator[dict[str, Any]]:
        """The earlier run's records, one at a time: its manifest's (with ``manifest``), then the journals'.
        ``bad[0]`` counts the lines that could not be read or are not records."""
        files = [(self.dst / split / METADATA_NAME, split) for split in SPLITS] if manifest else []
        for path, split in [*files, *((journal, None) for journal in journals)]:
            for r in _iter_lines(path, bad):
                if isinstance(r, dict) and split is not None:
                    r = {**r, "split": split}
                if _valid_record(r):
                    yield r
                else:
                    bad[0] += 1

    def remove_previous(self) -> int:
        """``--overwrite``: remove what the earlier run wrote (its manifest and journals say what), nothing else.
        Returns how many image files were removed."""
        if not self.overwrite:
            return 0
        bad = [0]
        removed = 0
        folders: set[tuple[str, str]] = set()
        for r in self._recorded(True, _journals(self.state), bad):
            folder, name = _safe_name(r["file_name"])
            folders.add((r["split"], folder))
            removed += _unlink_regular(self.dst, (r["split"], folder), name)
        if bad[0]:
            log.warning("%d line(s) of the earlier run's manifest or journal could not be read: the files they "
                        "name (if any) are left in place", bad[0])
        remove_temp_files(self.dst)
        card = read_card(self.dst) or {}
        classes = card.get("classes") if isinstance(card.get("classes"), list) else []
        folders |= {(s, c) for s in SPLITS for c in classes if isinstance(c, str) and _safe_name(f"{c}/x")}
        for split in SPLITS:
            _unlink_regular(self.dst, (split,), METADATA_NAME)
        for split, folder in sorted(folders):
            _rmdir_at(self.dst, (split,), folder)
        for split in SPLITS:
            _rmdir_at(self.dst, (), split)
        for name in os.listdir(self.state):
            if _JOURNAL.fullmatch(name) or name == "run.json" or _SHARD_LOCK.fullmatch(name):
                _unlink_quiet(self.state / name)
        _unlink_regular(self.dst, (), CARD_NAME)
        return removed

    def _previous(self) -> str | None:
        """The fingerprint of the run ``dst`` holds (its card's, or its run.json's), None if it holds none."""
        card = read_card(self.dst)
        if card is not None and card.get("fingerprint"):
            return card["fingerprint"]
        run_file = self.state / "run.json"
        if not os.path.lexists(run_file):
            return None
        try:
            with open_regular(run_file, follow=False) as f:
                previous = json.loads(f.read(1 << 20).decode("utf-8")).get("fingerprint")
        except (OSError, ValueError, AttributeError, RecursionError):
            previous = None
        if not isinstance(previous, str):
            raise DestinationError(f"{run_file} is damaged: cannot tell which plan {self.dst} holds",
                                   hint="use --overwrite to start it again")
        return previous

    def _same_plan(self, previous: str | None, run_id: str) -> None:
        if previous is None or previous == run_id:
            return
        if self.shard is not None:
            raise DestinationError(f"refusing shard {self.shard[0]}/{self.shard[1]}: {self.dst} holds a run of "
                                   f"another plan (a different source, recipe, seed or split)",
                                   hint="give every shard the same source, recipe and options, or another DST")
        raise DestinationError(f"cannot resume into {self.dst}: it was made from a different source, recipe, seed "
                               f"or split", hint="use --overwrite to start it again")

    def kept(self, run_id: str, n_rows: int,
             planned: Callable[[int], tuple[str, str, str]] | None = None) -> tuple[RecordStore, bool]:
        """The rows a run may keep (verified), after checking that ``dst`` holds a run of the same plan.
        ``planned(row)``: the (split, op, file name) the plan gives the row; a record that says otherwise (a line
        edited to name another row's file, or another row's number), or whose label is not its folder, is not kept.

        A shard reads its own journal (and a whole run's); a run without ``--shard`` reads every journal. Returns
        (records by row, whether ``dst`` held a run of ours to continue). The records stream from the files into
        a compact store (each as its JSON text): a million sources' journals are never all dicts at once."""
        done = RecordStore()
        previous = self._previous()
        if previous is None:
            return done, False
        self._same_plan(previous, run_id)
        finished = read_card(self.dst) is not None  # a finished run: its manifest lists every row
        journals = _journals(self.state)
        if self.shard is not None:  # other shards may be writing theirs right now: a shard reads its own
            journals = [j for j in journals if _JOURNAL.fullmatch(j.name)[1] in (None, "-{}-of-{}".format(*self.shard))]
        check = _Checker(self.dst)
        rejected: set[int] = set()
        bad = [0]
        for r in self._recorded(finished, journals, bad):
            row = r["row"]
            if not 0 <= row < n_rows or row in done:
                continue
            if check(r) and (planned is None or _as_planned(r, planned(row))):
                done[row] = r
                rejected.discard(row)
            else:
                rejected.add(row)
        if bad[0]:
            log.warning("%d unreadable line(s) in the manifest or journal of %s were skipped: those images are made "
                        "again", bad[0], self.dst)
        if rejected:
            log.warning("%d file(s) missing or not as the journal recorded them (truncated, replaced, or a link): "
                        "made again", len(rejected))
        if self.shard is None:  # nobody else writes here now: any temporary file is a dead run's
            remove_temp_files(self.dst)
        return done, True

    def start(self, run_id: str) -> None:
        """Record the plan (``run.json``; a shard checks it against the one there) before the first image."""
        run_file = self.state / "run.json"
        text = json.dumps({"tool": "augexpand", "fingerprint": run_id}) + "\n"
        if self.shard is None:
            write_atomic(run_file, text, sync=True)
        else:  # shards may start at once: the first writes run.json whole (a link), the others compare
            tmp = self.state / f".run.{self.tag}{os.getpid()}.augexpand-tmp"
            tmp.write_text(text, encoding="utf-8")
            try:
                os.link(tmp, run_file)
            except FileExistsError:
                self._same_plan(self._previous(), run_id)
            finally:
                tmp.unlink()
        self.started = True

    def finish(self) -> None:
        """The card is written: remove the state folder's files (ours only: a file the user put there stays, and the
        folder with it) and unlock."""
        remove_temp_files(self.dst, self.tag)
        try:
            names = os.listdir(self.state) if stat.S_ISDIR(os.lstat(self.state).st_mode) else []
        except OSError:
            names = []
        for name in names:
            if (_JOURNAL.fullmatch(name) or _SHARD_LOCK.fullmatch(name) or name in ("run.json", "lock")
                    or is_temp_file(name)):
                _unlink_quiet(self.state / name)
        _rmdir_quiet(self.state)
        for fd in self._fds:
            os.close(fd)
        self._fds = []


def _writable(path: Path) -> bool:
    return os.access(path, os.W_OK | os.X_OK)


def _write_fd(fd: int, text: str) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, (text + "\n").encode(), 0)


def _read_holder(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        text = ""
    return text or "pid unknown"


def _unlink_quiet(path: Path) -> None:
    try:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            os.unlink(path)
    except OSError:
        pass


def _rmdir_quiet(path: Path) -> None:
    try:
        os.rmdir(path)
    except OSError:
        pass


def _unlink_regular(dst: Path, folders: tuple[str, ...], name: str) -> int:
    """Unlink dst/<folders>/name if it is a regular file, reached without following any link. Returns 1 if so."""
    try:
        fd = _open_folder(str(dst), folders, create=False)
    except (OSError, DestinationError):
        return 0
    try:
        if stat.S_ISREG(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
            os.unlink(name, dir_fd=fd)
            return 1
    except OSError:
        pass
    finally:
        os.close(fd)
    return 0


def _rmdir_at(dst: Path, folders: tuple[str, ...], name: str) -> None:
    """Remove the folder dst/<folders>/name if it is empty (rmdir never follows a link, nor removes a full folder)."""
    try:
        fd = _open_folder(str(dst), folders, create=False)
    except (OSError, DestinationError):
        return
    try:
        os.rmdir(name, dir_fd=fd)
    except OSError:
        pass
    finally:
        os.close(fd)
