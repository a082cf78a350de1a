"""Training on several processes, GPUs and machines with ``torchrun``: DistributedDataParallel around the same loop.

``torchrun --nproc_per_node N -m augexpand train DST --out RUN`` starts N copies of the command; torchrun's
environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``) makes :func:`setup` join a
process group: NCCL on CUDA (one GPU per process, ``cuda:LOCAL_RANK``), gloo on the CPU. Without torchrun (or
with one process) nothing here changes the single-process run.

The design, in the order a step meets it:

- **Data**: every rank computes the same epoch plan (a permutation from (seed, epoch) cut into batches of
  ``--batch-size``) and :class:`ShardedPlan` deals its batches out like torch's ``DistributedSampler``: rank r
  takes batches r, r + N, r + 2N, ... so one optimizer step consumes N batches, together the images N
  single-process steps would see, each with the same augmentation (drawn from (seed, epoch, batch)). Ranks that
  run out first repeat the epoch's first batches, so every rank takes the same number of steps (as
  ``DistributedSampler`` pads). ``--batch-size`` is per process: the global batch is N x ``--batch-size``.
- **Model**: wrapped in DDP (gradients averaged over ranks, so the soft-label loss is unchanged: each rank's
  loss is the mean over its batch). BatchNorm stays per process (see :func:`wrap_model`).
- **Writing**: only rank 0 writes to RUN (checkpoints, ``metrics.jsonl``, curves, summary, the decoded cache);
  the others wait on a barrier and then read what it wrote. A decision rank 0 makes alone (the run folder is
  refused, the lock is held) is broadcast, so every rank stops with the same error instead of hanging.
- **Validation**: each rank scores a shard of the validation batches and the confusion matrices are summed, so
  every rank sees the same accuracy and takes the same early-stopping decision.
"""

from __future__ import annotations

import datetime
import gc
import logging
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from augexpand.errors import AugexpandError, TrainingError

__all__ = ["Dist", "FollowerAbort", "ShardedPlan", "setup", "unwrap", "wrap_model"]

log = logging.getLogger(__name__)
T = TypeVar("T")


class FollowerAbort(TrainingError):
    """Raised on ranks other than 0 when rank 0 stopped with an error (rank 0 prints it; the others exit quietly)."""


@dataclass
class Dist:
    """This process's place in the run: rank, world size, the device it trains on. World size 1: no process group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device | None = None
    owns_group: bool = False  # whether setup() created the process group (and teardown() must destroy it)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def backend(self) -> str | None:
        return dist.get_backend() if self.enabled else None

    def barrier(self) -> None:
        if self.enabled:
            if self.backend == "nccl":
                dist.barrier(device_ids=[self.local_rank])
            else:
                dist.barrier()

    def on_main(self, fn: Callable[[], T], share: bool = True) -> T | None:
        """Run ``fn`` on rank 0 only, the others waiting; an AugexpandError there stops every rank.

        Rank 0 raises the error itself; the others raise :class:`FollowerAbort` with the same message. With
        ``share`` every rank gets rank 0's result (pickled); without, only rank 0 does (the others get None).
        """
        if not self.enabled:
            return fn()
        payload: list[Any] = [None]
        error: AugexpandError | None = None
        result = None
        if self.is_main:
            try:
                result = fn()
                payload[0] = ("ok", result if share else None)
            except AugexpandError as exc:
                error = exc
                payload[0] = ("error", str(exc))
        dist.broadcast_object_list(payload, src=0, device=self._object_device())
        status, value = payload[0]
        if error is not None:
            raise error
        if status == "error":
            raise FollowerAbort(value)
        return result if self.is_main else value

    def sync_buffers(self, model: nn.Module) -> None:
        """Give every rank rank 0's buffers (BatchNorm running statistics), e.g. before a sharded evaluation."""
        if self.enabled:
            for b in model.buffers():
                dist.broadcast(b, src=0)

    def _object_device(self) -> torch.device | None:
        return torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else None

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum of a few numbers over all ranks (float64)."""
        if not self.enabled:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device if self.backend == "nccl" else "cpu")
        dist.all_reduce(t)
        return t.tolist()

    def max(self, value: float) -> float:
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device if self.backend == "nccl" else "cpu")
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t.item())

    def teardown(self) -> None:
        if self.owns_group and dist.is_initialized():
            # What still holds the group (a DDP reducer in a reference cycle) goes now, while the interpreter is
            # whole: a gloo group freed during interpreter finalization can abort the process ("terminate called
            # without an active exception", SIGABRT: once in a CI run, at the end of a resumed 2-process training).
            gc.collect()
            dist.destroy_process_group()


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        raise TrainingError(f"the environment variable {name}={os.environ[name]!r} is not an integer "
                            "(torchrun sets it)") from None


def setup(device_name: str) -> Dist:
    """Join the process group torchrun describes (NCCL on CUDA, gloo on CPU); a lone process gets ``Dist()``.

    ``device_name`` is the ``--device`` option: ``auto``/``cuda`` train each rank on ``cuda:LOCAL_RANK`` when
    CUDA is present; ``cpu`` (or no GPU) uses gloo. ``cuda:N`` is refused under torchrun (each rank picks its own).
    """
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return Dist()
    local = _env_int("LOCAL_RANK", 0)
    if device_name.startswith("cuda:"):
        raise TrainingError(f"--device {device_name} cannot be used with torchrun: each process trains on "
                            "cuda:LOCAL_RANK", hint="use --device cuda or --device auto")
    if device_name == "mps":
        raise TrainingError("--device mps cannot be used with torchrun (no multi-process backend for it)")
    use_cuda = device_name in ("auto", "cuda") and torch.cuda.is_available()
    if device_name == "cuda" and not use_cuda:
        raise TrainingError("--device cuda asked for a CUDA GPU, but torch sees none", hint="use --device cpu")
    if use_cuda:
        if local >= torch.cuda.device_count():
            raise TrainingError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} CUDA device(s) here: "
                                "start at most one process per GPU (--nproc_per_node)")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    owns = False
    if not dist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        try:
            dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30),
                                     **({"device_id": device} if use_cuda else {}))
        except (RuntimeError, ValueError) as exc:
            first = next((s for s in str(exc).splitlines() if s.strip()), type(exc).__name__)
            raise TrainingError(f"cannot join the torchrun process group ({backend}): {first[:200]}") from None
        owns = True
    if dist.get_world_size() != world:
        raise TrainingError(f"WORLD_SIZE={world} but the process group has {dist.get_world_size()} processes")
    return Dist(dist.get_rank(), world, local, device, owns)


class ShardedPlan:
    """A rank's share of an ``EpochPlan``'s batches, dealt round-robin (rank r: batches r, r + N, ...).

    For training (``pad=True``) every rank yields ``ceil(batches / N)`` batches: the short ranks repeat the first
    batches of the epoch. For validation (``pad=False``) each batch goes to exactly one rank.
    """

    def __init__(self, plan, rank: int, world_size: int, pad: bool = True) -> None:
        self.plan, self.rank, self.world_size, self.pad = plan, rank, world_size, pad
        self.seed = plan.seed

    def set_epoch(self, epoch: int) -> None:
        self.plan.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int, np.ndarray]]:
        batches = list(self.plan)
        if self.pad:
            steps = math.ceil(len(batches) / self.world_size)
            batches = [batches[i % len(batches)] for i in range(steps * self.world_size)]
        yield from batches[self.rank::self.world_size]

    def __len__(self) -> int:
        n = len(self.plan)
        if self.pad:
            return math.ceil(n / self.world_size)
        return len(range(self.rank, n, self.world_size))


def wrap_model(model: nn.Module, ctx: Dist) -> nn.Module:
    """DistributedDataParallel around ``model`` (only its parameters that require grad are synchronised).

    BatchNorm: plain per-process BatchNorm by default. Each process normalises over its own ``--batch-size``
    images (64 by default: enough for stable statistics), and DDP copies rank 0's running statistics to the
    others at every forward, so the checkpoint rank 0 writes is the model every rank has. SyncBatchNorm would
    add an all-reduce to every BatchNorm layer of every forward (20 per ResNet-18 step, costly across machines)
    and runs only on GPUs; ``--sync-bn`` turns it on (converted before wrapping) for small per-GPU batches
    (below about 16). Call again after freezing or unfreezing the backbone: DDP registers the parameters that
    require grad when it is built.
    """
    if not ctx.enabled:
        return model
    ids = [ctx.device.index] if ctx.device is not None and ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper (what checkpoints hold), or the model itself."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
