"""``--executor ray``: the plan's tasks on Ray, the cluster in ``RAY_ADDRESS`` or a local Ray started for the run.

A pool of Ray actors, each holding one ``RowMaker``: the same stateful worker as the local process pool (the
recipe's pipeline built once, the partner group's decoded images kept between the pieces of a group). The parent
keeps two tasks in flight per actor and takes results back as they finish (``ray.wait``), so the progress bar, the
journal (``--resume``) and Ctrl-C behave as with the local pool. Ray Data (``map_batches`` with a stateful class)
would do the same work with more machinery between us and the rows: its blocks are tables, while a task here is
already a coarse, picklable partner group whose records must come back to one journal in the parent.

Workers write images into ``dst`` themselves, so ``dst`` must be on a filesystem every node sees (NFS, Lustre,
a mounted bucket); the parent writes the manifest and the card. A task whose worker is lost (the process or the
node dies) runs again on a fresh actor, at most ``ATTEMPTS`` times in all, then its rows are reported as failed:
never silently lost. A row's bytes depend only on (seed, row), so a re-run writes the same file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from augexpand.errors import AugexpandError
from augexpand.executors import local_workers
from augexpand.rows import RowContext, RowMaker

__all__ = ["ATTEMPTS", "CONNECT_TIMEOUT_S", "RayExecutor", "RayWorker"]

log = logging.getLogger("augexpand")

ATTEMPTS = 3  # runs of one task before its rows are reported as failed (a lost worker, a lost node)
IN_FLIGHT = 2  # tasks queued per actor: the next one is there when the current one ends
CONNECT_TIMEOUT_S = 10.0  # to reach RAY_ADDRESS before giving up (ray.init itself would retry for minutes)


class RayWorker:
    """One actor: a ``RowMaker`` that runs tasks (a partner group's rows) and returns their records."""

    def __init__(self, ctx: RowContext) -> None:
        self.maker = RowMaker(ctx)

    def run(self, task: tuple[object, list]) -> list[dict[str, Any]]:
        key, rows = task
        return self.maker.run_task(rows, key)

    def ready(self) -> bool:
        return True


def _import_ray():
    try:
        import ray
    except ImportError:
        raise AugexpandError("--executor ray needs Ray, which is not installed",
                             hint="pip install 'augexpand[ray]'") from None
    return ray


def _check_reachable(address: str) -> None:
    """Fail in seconds, with one line, when RAY_ADDRESS names no listening cluster (ray.init would hang)."""
    if address in ("auto", "local"):
        return
    try:  # a port that is not a number ('host:abc') is a ValueError of urlsplit's: one line as well
        parts = urlsplit(address if "://" in address else f"ray://{address}")
        host, port = parts.hostname, parts.port or (10001 if parts.scheme == "ray" and "://" in address else 6379)
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S) as conn:
            tls = os.environ.get("RAY_USE_TLS", "0").lower() not in ("0", "false", "")
            grpc = None if tls else _speaks_grpc(conn)
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise AugexpandError(f"cannot reach the Ray cluster at RAY_ADDRESS={address}: {reason}",
                             hint="start it (ray start --head) or unset RAY_ADDRESS for a local Ray") from None
    if grpc is False:  # ray.init would retry for minutes (a web server there: still waiting after 150 s)
        raise AugexpandError(f"RAY_ADDRESS={address} answers, but not as a Ray cluster (no gRPC there)",
                             hint="give the head node's GCS address (ray start --head prints it, e.g. host:6379)")


def _speaks_grpc(conn: socket.socket) -> bool | None:
    """Whether the server on ``conn`` answers HTTP/2's connection preface with a SETTINGS frame, as Ray's GCS and
    its client server (gRPC) do at once. None with TLS on (RAY_USE_TLS): not checked."""
    conn.settimeout(CONNECT_TIMEOUT_S)
    conn.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]))  # preface, SETTINGS
    head = b""
    try:
        while len(head) < 9:
            chunk = conn.recv(9 - len(head))
            if not chunk:
                break
            head += chunk
    except TimeoutError:
        return False
    return len(head) == 9 and head[3] == 4  # a frame header: 3 bytes of length, then its type (4: SETTINGS)


@contextlib.contextmanager
def _native_stderr_muted() -> Iterator[None]:
    """While Ray starts or joins a cluster, its C++ core writes retries and notices straight to file descriptor 2
    (one a second while a cluster does not answer): keep them off the terminal; our error says what failed."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class RayExecutor:
    """Runs tasks on a pool of ``RayWorker`` actors, one CPU each.

    ``workers``: actors (default: the CPUs of the cluster; with a local Ray, the cores here). A Ray this
    executor started is shut down by ``close``; one already running in this process (``ray.init`` in a
    notebook) or named by ``RAY_ADDRESS`` is left running.
    """

    worker_class = RayWorker

    def __init__(self, workers: int | None, ctx: RowContext) -> None:
        ray = _import_ray()
        self.ray = ray
        self.started = False
        if not ray.is_initialized():
            self._init(workers)
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        if workers is None:
            workers = cpus
        elif workers > cpus:  # an actor takes one CPU: the rest would wait for a CPU, and the run for them, for ever
            log.info("--workers %d: %d Ray workers, one per CPU of the Ray cluster", workers, cpus)
            workers = cpus
        self.workers = workers
        self._quiet_notices()
        self.actor = ray.remote(num_cpus=1, max_restarts=0)(self.worker_class)
        self.ctx_ref = ray.put(ctx)
        self.actors = [self.actor.remote(self.ctx_ref) for _ in range(workers)]
        ray.get([a.ready.remote() for a in self.actors])  # started (their pipeline built) before the clock runs

    def _init(self, workers: int | None) -> None:
        ray = self.ray
        address = os.environ.get("RAY_ADDRESS") or None
        quiet = {"log_to_driver": False, "logging_level": logging.ERROR, "configure_logging": True}
        logging.getLogger("ray").setLevel(logging.ERROR)
        if address:
            _check_reachable(address)
            try:
                with _native_stderr_muted():
                    ray.init(address=address, **quiet)
            except Exception as exc:  # noqa: BLE001 -- any failure to join is one line for the user
                raise AugexpandError(f"cannot join the Ray cluster at RAY_ADDRESS={address}: "
                                     f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        else:
            # A local Ray's workers inherit this environment: put this augexpand on their path (a source tree
            # that is not installed works too). A remote cluster needs augexpand installed on its nodes, or a
            # runtime_env (see the README).
            package_root = str(Path(__file__).resolve().parent.parent)
            path = os.environ.get("PYTHONPATH", "")
            os.environ["PYTHONPATH"] = os.pathsep.join([package_root, *([path] if path else [])])
            try:
                with _native_stderr_muted():
                    ray.init(num_cpus=local_workers(workers, quiet=True), include_dashboard=False, **quiet)
            finally:
                if path:
                    os.environ["PYTHONPATH"] = path
                else:
                    del os.environ["PYTHONPATH"]
        self.started = True

    def _quiet_notices(self) -> None:
        """Ray prints its notices (a worker died, ...) on stdout, where ``--json`` writes: while this executor runs,
        they go to the log (stderr) as one line each. (A private hook of Ray's; left alone if it is not there.)"""
        self._printer = None
        try:
            from ray._private import worker as ray_worker
        except ImportError:
            return
        if not hasattr(ray_worker, "print_to_stdstream"):
            return

        def to_log(data: dict, ignore_prefix: bool = False) -> None:
            for line in data.get("lines", []):
                first = str(line).strip().split(". ")[0]
                if first:
                    log.warning("Ray: %s", first.rstrip("."))

        self._printer = (ray_worker, ray_worker.print_to_stdstream)
        ray_worker.print_to_stdstream = to_log

    def run(self, tasks: list) -> Iterator[list[dict[str, Any]]]:
        ray = self.ray
        queue = list(reversed(tasks))  # pop() from the end: tasks go out in order
        pending: dict[Any, tuple[int, tuple, int]] = {}  # ref -> (actor slot, task, attempt)

        def submit(slot: int, task: tuple, attempt: int = 1) -> None:
            pending[self.actors[slot].run.remote(task)] = (slot, task, attempt)

        for slot in range(len(self.actors)):
            for _ in range(IN_FLIGHT):
                if queue:
                    submit(slot, queue.pop())
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)  # a timeout: Ctrl-C gets through
            for ref in ready:
                slot, task, attempt = pending.pop(ref)
                try:
                    results = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    if isinstance(exc, ray.exceptions.RayActorError):  # the worker died: a new one for the slot
                        self.actors[slot] = self.actor.remote(self.ctx_ref)
                    if attempt < ATTEMPTS:
                        submit(slot, task, attempt + 1)
                        continue
                    results = self._lost(task, exc)
                if queue:
                    submit(slot, queue.pop())
                yield results

    def _lost(self, task: tuple, exc: Exception) -> list[dict[str, Any]]:
        """Every row of a task that failed ATTEMPTS times, as failed rows (the summary names the first)."""
        ctx = self.ray.get(self.ctx_ref)
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return [{"row": r.index, "error": f"lost on Ray after {ATTEMPTS} attempts: {type(exc).__name__}: {reason}",
                 "source": ctx.rels[r.sources[0]], "unreadable": False} for r in task[1]]

    def close(self, terminate: bool = False) -> None:
        ray = self.ray
        for actor in self.actors:
            try:
                ray.kill(actor)
            except Exception:  # noqa: BLE001, S110 -- an actor already gone is what we want
                pass
        self.actors = []
        if getattr(self, "_printer", None) is not None:
            module, printer = self._printer
            module.print_to_stdstream = printer
            self._printer = None
        if self.started:
            ray.shutdown()
            self.started = False
