"""The torchrun/NCCL code path of `augexpand train` on a machine with ONE GPU (a check, not a benchmark).

NCCL refuses two ranks on one GPU, so ``torchrun --nproc_per_node 2`` cannot run there. This joins a world-size-1
NCCL process group and forces ``Dist.enabled`` on, so that DDP, ``broadcast_object_list``, ``barrier(device_ids)``
and the all-reduces of a real training run all go through NCCL. Without a GPU it uses gloo.

    python bench/nccl_one_gpu.py DST RUN [EPOCHS]
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import sys

import torch
import torch.distributed as dist

import augexpand.train.distributed as DDP
from augexpand.train.config import make_config
from augexpand.train.loop import train

CUDA = torch.cuda.is_available()


def setup(device_name: str) -> DDP.Dist:
    device = torch.device("cuda", 0) if CUDA else torch.device("cpu")
    if CUDA:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if CUDA else "gloo", timeout=datetime.timedelta(minutes=2),
                            **({"device_id": device} if CUDA else {}))
    print("process group:", dist.get_backend(), "world", dist.get_world_size())
    return DDP.Dist(0, 1, 0, device, True)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29533", RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    DDP.Dist.enabled = property(lambda self: dist.is_initialized())
    DDP.setup = setup
    data, out = sys.argv[1], sys.argv[2]
    epochs = int(sys.argv[3]) if len(sys.argv) > 3 else 4
    config = make_config(data=data, out=out, epochs=epochs, device="cuda" if CUDA else "cpu", progress=False, seed=0)
    summary = train(config, overwrite=True)
    keys = ("processes", "best_val_acc", "model", "size", "steps", "images_per_s", "device")
    print("run:", json.dumps({k: summary.get(k) for k in keys}, default=str))
    print("group torn down:", not dist.is_initialized())


if __name__ == "__main__":
    main()
