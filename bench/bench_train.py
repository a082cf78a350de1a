"""Training throughput of the full data path against the same model fed from tensors already in memory.

In one process, on the same photo-like JPEGs (bench/_photos.py) and the same model and batch size:

- decode: building the uint8 cache (OpenCV decode + fit to the training size, ``--workers`` processes);
- full data path: the training loop's own DataLoader over the memory-mapped cache (whole-batch gathering, random
  translation and flip in ``--workers`` processes, uint8 to the device, normalisation there);
- bound: the same ``train_one_epoch`` over the same batches already in memory (already augmented, uint8, already
  on the device): what the model alone can do.

Full and bound epochs alternate on one model, and the ratio is the median of the per-pair ratios, so that other
load on a shared machine hits both sides alike. For reference, `augexpand train` is also run end to end (cached,
and with ``--no-cache``, decoding every epoch). Prints a Markdown table; asserts nothing.

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


def end_to_end(data: Path, run: Path, args, cache: bool, epochs: int) -> dict:
    """`augexpand train` itself (``loop.train``): images/s per epoch from its metrics.jsonl."""
    from augexpand.train.config import make_config
    from augexpand.train.loop import train

    config = make_config(data=data, out=run, model=args.model, size=args.size, batch_size=args.batch_size,
                         epochs=epochs, workers=args.workers, device=args.device, cache=cache, progress=False,
                         lr=0.02, warmup_epochs=0.0, seed=0)
    train(config, overwrite=True)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {"images_per_s": _steady([r["images_per_s"] for r in rows]), "per_epoch": [r["images_per_s"] for r in rows]}


def paired(cache_path: Path, split, args) -> dict:
    """Alternate, epoch by epoch, one model trained from the full data path and from batches in memory.

    Both use the loop's own ``train_one_epoch``; the full path is the loop's own DataLoader over the memory-mapped
    cache (``--workers`` processes, gather + translate + flip in the workers, uint8 handed over, pinned on CUDA);
    the bound is a list of the same batches, already augmented and already on the device. Pairing each full epoch
    with the bound epoch next to it makes the ratio robust to other load on a shared machine.
    """
    import torch

    from augexpand.train import data as D
    from augexpand.train.config import make_config
    from augexpand.train.loop import Runtime, _Schedule, build_optimizer, make_loader, resolve_device, train_one_epoch
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
    dataset = D.CachedBatches(cache_path, split, args.size, seed=0, flip=True, crop_pad=0.125)
    plan = D.EpochPlan(len(split), args.batch_size, seed=0)
    loader = make_loader(dataset, plan, args.workers, pin=device.type == "cuda")
    in_memory = [tuple(t.to(device) for t in dataset[item]) for item in plan]
    # on CUDA, the path train takes when the cache fits: the cache in GPU memory, batches gathered and augmented there
    on_gpu = (D.DeviceBatches(cache_path, split, args.size, plan, device, seed=0, flip=True, crop_pad=0.125)
              if device.type == "cuda" else None)
    schedule = _Schedule(0, 10**12, 0)
    full, gpu, bound = [], [], []
    for epoch in range(args.epochs + 1):  # the first round warms up workers, kernels and caches: not counted
        plan.set_epoch(epoch)
        f = train_one_epoch(model, loader, optimizer, scaler, rt, config, schedule, False)["images_per_s"]
        g = train_one_epoch(model, on_gpu, optimizer, scaler, rt, config, schedule, False)["images_per_s"] \
            if on_gpu is not None else None
        b = train_one_epoch(model, in_memory, optimizer, scaler, rt, config, schedule, False)["images_per_s"]
        if epoch:
            full.append(f)
            bound.append(b)
            if g is not None:
                gpu.append(g)
    ratios = [f / b for f, b in zip(full, bound)]
    out = {"full": statistics.median(full), "bound": statistics.median(bound), "ratio": statistics.median(ratios),
           "full_per_epoch": full, "bound_per_epoch": bound, "ratios": ratios}
    if gpu:
        out.update(gpu=statistics.median(gpu), gpu_ratio=statistics.median([g / b for g, b in zip(gpu, bound)]),
                   gpu_per_epoch=gpu)
    return out


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
    logging.getLogger("augexpand").setLevel(logging.ERROR)  # "no validation split" is expected here

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

    # the ratio: full path and bound, alternating epoch by epoch in one process
    pair = paired(cache_path, split, args)
    # for reference: `augexpand train` end to end (cached), and without the cache (decoding every epoch)
    train_cached = end_to_end(data, run, args, cache=True, epochs=args.epochs)
    no_cache = end_to_end(data, args.work / "run_nocache", args, cache=False, epochs=args.no_cache_epochs) \
        if args.no_cache_epochs else None

    print("\n| path | images/s | of the bound |\n|---|---:|---:|")
    print(f"| decode into the uint8 cache (once, {args.workers} workers) | {decode:,.0f} | |")
    print(f"| full data path: cache + {args.workers} workers (paired epochs) | {pair['full']:,.0f} | "
          f"**{pair['ratio']:.2f}** |")
    if "gpu" in pair:
        print(f"| cache held on the GPU: gather + translate + flip there, no workers (paired epochs) | "
              f"{pair['gpu']:,.0f} | **{pair['gpu_ratio']:.2f}** |")
    print(f"| bound: the same batches already in memory (paired epochs) | {pair['bound']:,.0f} | 1.00 |")
    print(f"| `augexpand train` end to end, cached{' (on the GPU)' if 'gpu' in pair else ''} | {train_cached['images_per_s']:,.0f} | "
          f"{train_cached['images_per_s'] / pair['bound']:.2f} |")
    if no_cache:
        print(f"| `augexpand train --no-cache` (decode every epoch) | {no_cache['images_per_s']:,.0f} | "
              f"{no_cache['images_per_s'] / pair['bound']:.2f} |")

    def rates(values: list[float], fmt: str = ",.0f") -> str:
        return ", ".join(format(v, fmt) for v in values)

    print(f"\nper paired epoch: full {rates(pair['full_per_epoch'])}; bound {rates(pair['bound_per_epoch'])}; "
          f"ratio {rates(pair['ratios'], '.3f')}")
    print(f"full / bound = {pair['ratio']:.3f} (median of the paired epochs; target >= 0.9)")
    if "gpu" in pair:
        print(f"cache on the GPU: {rates(pair['gpu_per_epoch'])}; on the GPU / bound = {pair['gpu_ratio']:.3f}")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "decode": decode,
                                         "paired": pair, "train_cached": train_cached, "no_cache": no_cache},
                                        indent=2))


if __name__ == "__main__":
    main()
