"""Training throughput of the full data path against the same model fed from tensors already in memory.

In one run, on the same photo-like JPEGs (bench/_photos.py) and the same model, batch size and step count:

- decode: building the uint8 cache (OpenCV decode + fit to the training size, ``--workers`` processes);
- full path: ``augexpand.train.loop.train`` as `augexpand train` runs it (memory-mapped cache, whole-batch
  gathering, random translation and flip in the workers, uint8 to the device, normalisation there);
- no cache: the same, decoding every JPEG every epoch (``--no-cache``);
- bound: the same ``train_one_epoch`` over batches already in memory (already augmented, uint8, already on the
  device): what the model alone can do.

Bound and full path alternate (``--repeats``); each figure is images/s per epoch, the median over the epochs
after the first, and the best repeat of each is compared (on a shared machine, noise only ever slows a run down).
Prints a Markdown table and the ratio full / bound; asserts nothing.

    python bench/bench_train.py                      # CPU: smallcnn at 32x32, 2 workers (~2 minutes on 2 cores)
    python bench/bench_train.py --quick              # fewer images and epochs
    python bench/bench_train.py --gpu                # CUDA: resnet18 at 224x224 from 320x240 JPEGs, bf16/fp16
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from _photos import make_image_folder


def _steady(values: list[float]) -> float:
    """Median of the per-epoch figures after the first epoch (which pays for worker start-up)."""
    return statistics.median(values[1:] if len(values) > 1 else values)


def full_path(data: Path, run: Path, args, cache: bool) -> dict:
    from augexpand.train.config import make_config
    from augexpand.train.loop import train

    config = make_config(data=data, out=run, model=args.model, size=args.size, batch_size=args.batch_size,
                         epochs=args.epochs, workers=args.workers, device=args.device, cache=cache, progress=False,
                         lr=0.02, warmup_epochs=0.0, seed=0)
    summary = train(config, overwrite=True)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {"images_per_s": _steady([r["images_per_s"] for r in rows]), "per_epoch": [r["images_per_s"] for r in rows],
            "steps": summary["steps"], "device": summary["device"]}


def bound(cache_path: Path, split, args) -> dict:
    """The model alone: train_one_epoch over batches that are already augmented uint8 tensors on the device."""
    import torch

    from augexpand.train import data as D
    from augexpand.train.config import make_config
    from augexpand.train.loop import Runtime, _Schedule, build_optimizer, resolve_device, train_one_epoch
    from augexpand.train.models import build_model

    config = make_config(data=".", out=".", model=args.model, size=args.size, batch_size=args.batch_size,
                         lr=0.02, weight_decay=5e-4, head_lr_mult=1.0, freeze_epochs=0, device=args.device)
    device = resolve_device(args.device)
    rt = Runtime.create(device, config.amp, config.channels_last)
    torch.manual_seed(0)
    model = build_model(args.model, len(split.classes)).to(device)
    if rt.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, config)
    scaler = torch.amp.GradScaler(device.type, enabled=rt.amp_dtype == torch.float16)
    dataset = D.CachedBatches(cache_path, split, args.size, seed=0)
    plan = D.EpochPlan(len(split), args.batch_size, seed=0)
    batches = [tuple(t.to(device) for t in dataset[item]) for item in plan]  # in memory, on the device
    schedule = _Schedule(0, 10**9, 0)
    rates = []
    for _ in range(args.epochs):
        rates.append(train_one_epoch(model, batches, optimizer, scaler, rt, config, schedule, False)["images_per_s"])
    return {"images_per_s": _steady(rates), "per_epoch": rates}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu", action="store_true", help="ResNet-18 at 224x224 on CUDA (the GPU preset).")
    parser.add_argument("--quick", action="store_true", help="Fewer images and epochs.")
    parser.add_argument("--model", default=None)
    parser.add_argument("--size", type=int, default=None)
    parser.add_argument("--images", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--device", default=None)
    parser.add_argument("--repeats", type=int, default=2, help="Full-path runs (bound runs: one more).")
    parser.add_argument("--no-cache-epochs", type=int, default=2, help="Epochs of the --no-cache path (0: skip).")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "augexpand_bench_train")
    parser.add_argument("--json", type=Path, help="Also write the figures to this JSON file.")
    args = parser.parse_args()
    preset = ({"model": "resnet18", "size": 224, "images": 12800, "batch_size": 256, "epochs": 4, "workers": 12,
               "device": "cuda", "source": (320, 240)} if args.gpu else
              {"model": "smallcnn", "size": 32, "images": 8192, "batch_size": 128, "epochs": 4, "workers": 2,
               "device": "cpu", "source": (32, 32)})
    if args.quick:
        preset.update(images=preset["images"] // 4, epochs=3)
    for key, value in preset.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")

    import torch

    from augexpand.train import data as D

    w, h = preset["source"]
    data = make_image_folder(args.work / f"src_{w}x{h}_{args.images}", args.images, size=(w, h))
    run = args.work / f"run_{args.model}_{args.size}"
    print(f"# {args.model} at {args.size}x{args.size}, batch {args.batch_size}, {args.images} JPEGs of {w}x{h}, "
          f"{args.epochs} epochs, {args.workers} workers, device {args.device}, torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads", flush=True)

    # decode: the cache, built as train() builds it (train() then finds it and reuses it)
    _, _, classes = D.find_splits(data)
    split = D.read_split(data, classes)
    cache_path = run / "cache" / f"train_{args.size}.npy"
    for stale in (cache_path, cache_path.with_suffix(".json")):
        stale.unlink(missing_ok=True)
    start = time.perf_counter()
    cache_path, split = D.build_cache(split, args.size, cache_path, workers=args.workers)
    decode = len(split) / (time.perf_counter() - start)

    # bound and full path alternate, --repeats times each; the best of each is kept (noise only slows things down)
    bounds, fulls = [], []
    for _ in range(args.repeats):
        bounds.append(bound(cache_path, split, args))
        fulls.append(full_path(data, run, args, cache=True))
    bounds.append(bound(cache_path, split, args))
    full = max(fulls, key=lambda r: r["images_per_s"])
    best_bound = max(b["images_per_s"] for b in bounds)
    no_cache = full_path(data, args.work / "run_nocache", argparse.Namespace(**{**vars(args),
                         "epochs": args.no_cache_epochs}), cache=False) if args.no_cache_epochs else None
    limit = best_bound
    ratio = full["images_per_s"] / limit

    rows = [("decode into the uint8 cache (once)", decode, None),
            ("full data path (cache, workers)", full["images_per_s"], ratio),
            ("bound: tensors already in memory", limit, 1.0)]
    if no_cache:
        rows.insert(2, ("no cache: decode every epoch", no_cache["images_per_s"],
                        no_cache["images_per_s"] / limit))
    print("\n| path | images/s | of the bound |\n|---|---:|---:|")
    for name, rate, share in rows:
        print(f"| {name} | {rate:,.0f} | {'' if share is None else f'{share:.2f}'} |")

    def rates(values: list[float]) -> str:
        return ", ".join(f"{v:,.0f}" for v in values)

    print(f"\nbound per repeat: {rates([b['images_per_s'] for b in bounds])} images/s; full path per repeat: "
          f"{rates([f['images_per_s'] for f in fulls])}; best full run per epoch: {rates(full['per_epoch'])}")
    print(f"full / bound = {ratio:.3f} (target >= 0.9)")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "decode": decode,
                                         "full": fulls, "bound": bounds, "no_cache": no_cache, "ratio": ratio},
                                        indent=2))


if __name__ == "__main__":
    main()
