"""Running a plan's tasks: the seam between planning and making images.

The parent plans once; an executor takes picklable tasks (a partner group's rows, with the group's key) and yields,
in any order, each task's manifest records. Every executor runs the same ``RowMaker`` code, and a row's bytes
depend only on (seed, row), so the output is the same for every executor and worker count. An engine adapter
(Ray, a job-array shard) is one small class with the methods of ``Executor``, never a second way of making images.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from augexpand.errors import AugexpandError
from augexpand.plan import Row
from augexpand.rows import RowContext, RowMaker

__all__ = [
    "EXECUTORS",
    "Executor",
    "LocalExecutor",
    "Task",
    "WorkerDied",
    "default_workers",
    "fork_safe_opencv",
    "local_workers",
    "make_executor",
    "probe_here",
    "probe_map",
    "stop_pool",
]

EXECUTORS = ("local", "ray")

log = logging.getLogger("augexpand")

PARALLEL_SCAN_FILES = 500  # probe image headers in parallel from this many files on
WORKERS_PER_CORE = 4  # local worker processes at most, per core: more only costs memory (a pipeline and a cache each)

Task = tuple[object, list[Row]]  # (the partner group's key, its rows)


class Executor(Protocol):
    """What the orchestration needs from an engine."""

    workers: int  # how many tasks run at once (the summary reports it)

    def run(self, tasks: list[Task]) -> Iterator[list[dict[str, Any]]]:
        """Run every task; yield each task's records (or ``{"row", "error", ...}`` failures) as it finishes."""

    def close(self, terminate: bool = False) -> None:
        """Release the workers (``terminate``: at once, on an error or Ctrl-C)."""


def default_workers() -> int:
    """All the cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def local_workers(requested: int | None, quiet: bool = False) -> int:
    """How many processes to run on this machine for ``requested`` (None: one per core): at most WORKERS_PER_CORE
    per core, said (unless ``quiet``) when fewer than asked (``--workers 100000`` would fork 100000 processes)."""
    cores = default_workers()
    if requested is None:
        return cores
    cap = WORKERS_PER_CORE * cores
    if requested > cap and not quiet:
        log.info("--workers %d: at most %d worker processes on this machine (%d per core; more would only take "
                 "memory)", requested, cap, WORKERS_PER_CORE)
    return max(1, min(requested, cap))


# The one RowMaker of a worker process (the local pool's initializer sets it).
_MAKER: RowMaker | None = None


def _init_worker(ctx: RowContext, decoded: dict | None = None) -> None:
    global _MAKER
    _MAKER = RowMaker(ctx, decoded)


def _leave_signals_to_parent() -> None:
    """A pool worker leaves Ctrl-C and SIGTERM to the parent, which stops it (SIGTERM, default action: quietly;
    not the parent's own handler, inherited by the fork, which would report a stop that is only the pool's end),
    and dies with it."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _die_with_parent()


_POOL_MAKER = 0  # the thread that forks a pool's first workers (threading.get_ident; a fork keeps it)


def _pool(method: str, workers: int, initializer: Callable, initargs: tuple = ()):
    """A multiprocessing pool whose first workers die with this process (see _die_with_parent)."""
    import multiprocessing as mp
    import threading

    global _POOL_MAKER
    _POOL_MAKER = threading.get_ident()
    return mp.get_context(method).Pool(workers, initializer=initializer, initargs=initargs)


def _die_with_parent() -> None:
    """SIGKILL this worker when its parent ends (Linux). A parent killed at once (``kill -9``, the out-of-memory
    killer) left its workers to finish their task for nobody, each printing two BrokenPipeError tracebacks when it
    handed its result to the dead parent. What they were writing is a temporary file; --resume removes it.

    The signal comes when the *thread* that forked the worker ends. So only a worker forked by the thread that made
    the pool: one forked later, to replace a worker that died, comes from the pool's own thread, which ends when the
    pool is terminated, and killed then while it waits for a task (holding the task queue's lock), it would leave
    ``Pool.terminate`` waiting for that lock for ever."""
    import threading

    if not sys.platform.startswith("linux") or threading.get_ident() != _POOL_MAKER:
        return
    import ctypes
    import multiprocessing as mp
    import signal

    try:
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    parent = mp.parent_process()
    if parent is not None and os.getppid() != parent.pid:  # the parent died before the prctl
        os._exit(1)


def _init_pool_worker(ctx: RowContext, decoded: dict | None = None) -> None:
    _leave_signals_to_parent()
    _init_worker(ctx, decoded)


@contextmanager
def fork_safe_opencv() -> Iterator[None]:
    """Fork with OpenCV's thread pool stopped. A parent that ran a parallel OpenCV call (a resize of a planning
    thumbnail) has pool threads that a forked child does not inherit, only their locks: the child's first
    ``cv2.setNumThreads`` or parallel call then waits for ever (5 hangs in 12 tries of a 2-worker pool here).
    One thread while the children are forked, the parent's setting back afterwards."""
    cv2 = sys.modules.get("cv2")
    if cv2 is None:
        yield
        return
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(threads)


class WorkerDied(AugexpandError):
    """A worker process of a local pool ended while the run needed it (killed for memory, crashed)."""


def _exit_reason(code: int) -> str:
    import signal

    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (most often the system's out-of-memory killer)" if -code == signal.SIGKILL else ""
        return f"was killed by {name}{hint}"
    return f"exited with status {code}"


class _Watched:
    """A multiprocessing pool whose workers are watched: a pool replaces a worker that dies, but the task it held
    is lost and its result never comes, so a plain wait would last for ever. Waits here poll, and a worker that
    ended is one :class:`WorkerDied` error (the rows already made are journaled: ``--resume`` continues)."""

    POLL_S = 1.0

    def __init__(self, pool) -> None:
        self.pool = pool
        self.procs = list(pool._pool)  # the pool's own Process objects (CPython's Pool keeps them in _pool)

    def check(self) -> None:
        for proc in self.procs:
            code = proc.exitcode
            if code is not None:
                raise WorkerDied(f"a worker process (pid {proc.pid}) {_exit_reason(code)}; the images made so far "
                                 "are kept", hint="run again with --resume, with fewer --workers if memory ran out")

    def unordered(self, fn: Callable, items: list) -> Iterator[Any]:
        results = self.pool.imap_unordered(fn, items, chunksize=1)
        import multiprocessing as mp

        for _ in range(len(items)):
            while True:
                try:
                    yield results.next(timeout=self.POLL_S)
                    break
                except mp.TimeoutError:
                    self.check()

    def map(self, fn: Callable, items: list, chunksize: int) -> list:
        result = self.pool.map_async(fn, items, chunksize=chunksize)
        while not result.ready():
            result.wait(self.POLL_S)
            if not result.ready():
                self.check()
        return result.get()


STOP_GRACE_S = 2.0  # how long a terminated pool's workers get to end on SIGTERM before they are SIGKILLed


def stop_pool(pool, terminate: bool = False) -> None:
    """Close a pool (its workers finish what they hold) or terminate it (SIGTERM), and wait for its workers.

    A SIGTERM can be lost: a worker forked (to replace one that died) while the parent has a Python SIGTERM
    handler of its own drops a signal that lands before the child's interpreter has re-initialised its signal
    state, then waits on the task queue's lock, which ``Pool.terminate`` holds, for ever; and so did the parent,
    joining it. So the terminate runs in a thread, and every worker still alive after STOP_GRACE_S is SIGKILLed,
    which no process can drop."""
    if not terminate:
        pool.close()
        pool.join()
        return
    import threading

    stopper = threading.Thread(target=pool.terminate, name="augexpand-pool-stop", daemon=True)
    stopper.start()
    stopper.join(STOP_GRACE_S)
    while stopper.is_alive():
        for proc in list(pool._pool):  # CPython's Pool keeps its Process objects there
            if proc.exitcode is None:
                proc.kill()
        stopper.join(0.2)
    pool.join()


def _run_task(task: Task) -> list[dict[str, Any]]:
    assert _MAKER is not None
    key, rows = task
    return _MAKER.run_task(rows, key)


def _call(item: tuple[Callable, Any]) -> Any:
    fn, arg = item
    return fn(arg)


class LocalExecutor:
    """A process pool on this machine, or the current process when one worker is asked for (no start-up, no IPC)."""

    def __init__(self, workers: int, ctx: RowContext, decoded: dict | None = None) -> None:
        """``decoded``: source index -> image already decoded at its plan scale (the rows use it, not decode it):
        shared with forked workers as it is, never sent to spawned ones."""
        self.pool = None
        self.maker: RowMaker | None = None
        self.workers = workers
        if workers > 1:
            method = "fork" if sys.platform.startswith("linux") else "spawn"
            shared = decoded if method == "fork" else None
            with fork_safe_opencv():
                self.pool = _pool(method, workers, _init_pool_worker, (ctx, shared))
            self.watched = _Watched(self.pool)
        else:  # this executor's own maker, not the module's: two runs in two threads write each its own dst
            self.maker = RowMaker(ctx, decoded)

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterable[Any]:
        if self.pool is None:
            return map(fn, items)
        return self.watched.map(fn, list(items), chunksize=8)

    def run(self, tasks: list[Task]) -> Iterator[list[dict[str, Any]]]:
        if self.pool is None:
            maker = self.maker
            return (maker.run_task(rows, key) for key, rows in tasks)
        return self.watched.unordered(_run_task, tasks)

    def close(self, terminate: bool = False) -> None:
        if self.pool is not None:
            stop_pool(self.pool, terminate)


def probe_here(workers: int, items: int, min_items: int = PARALLEL_SCAN_FILES) -> bool:
    """Whether ``probe_map`` runs a pass over ``items`` files in this process (not in a pool)."""
    return workers < 2 or items < min_items or not sys.platform.startswith("linux")


def probe_map(workers: int, min_items: int = PARALLEL_SCAN_FILES) -> Callable[[Callable, list[Path]], list]:
    """A map for the planning passes over files (the scan's header probes, SMOTE's descriptors): in a short-lived
    process pool when there are ``min_items`` or more (the probes cost ~0.2 ms a file, worth spreading over the
    cores from a few hundred files on), else in this process."""

    def run(fn: Callable, paths: list[Path]) -> list:
        if probe_here(workers, len(paths), min_items):
            return list(map(fn, paths))
        with fork_safe_opencv():
            pool = _pool("fork", workers, _leave_signals_to_parent)
        try:
            return _Watched(pool).map(fn, paths, chunksize=64)
        finally:
            stop_pool(pool, terminate=True)  # as `with pool:` does, but never waiting for ever

    return run


def make_executor(kind: str, workers: int | None, ctx: RowContext, decoded: dict | None = None) -> Executor:
    """The executor named ``kind`` (one of EXECUTORS), its workers ready to make rows of ``ctx``. ``workers``:
    how many (None: every core here; for Ray, every CPU of the cluster). ``decoded``: images planning decoded
    already, for local workers (Ray's decode their own)."""
    if kind == "local":
        return LocalExecutor(local_workers(workers), ctx, decoded)
    if kind == "ray":
        from augexpand.ray_executor import RayExecutor

        return RayExecutor(workers, ctx)
    raise AugexpandError(f"unknown executor {kind!r}: expected one of {', '.join(EXECUTORS)}")
