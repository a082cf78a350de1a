"""The training loop: resolve the config, cache the data, build the model, then ``train_one_epoch()`` and
``evaluate()`` once per epoch, writing checkpoints, ``metrics.jsonl`` and ``curves.png`` to the run folder.

Read ``train()`` top to bottom: each phase has a comment. The loss is soft-target cross-entropy,
``sum(-target * log_softmax(logits))``, so mixed images (mixup, CutMix, RICAP) train on their soft labels; with
one-hot targets it is the ordinary cross-entropy. Label smoothing blends the target with the uniform
distribution; knowledge distillation adds ``T^2 * KL(teacher_T || student_T)``.
"""

from __future__ import annotations

import errno
import gc
import json
import logging
import math
import os
import re
import socket
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from augexpand.errors import ConflictingOptionError, TrainingError, TrainingInterrupted
from augexpand.folder import is_temp_file, write_atomic, write_figure
from augexpand.formatting import json_text, plural
from augexpand.train import data as D
from augexpand.train import distributed as DDP
from augexpand.train.checkpoint import load_checkpoint, model_from_checkpoint, read_torch_file, save_checkpoint
from augexpand.train.config import (
    DEFAULT_EPOCHS,
    DEFAULT_FINAL_LR,
    DEFAULT_LR,
    DEFAULT_WEIGHT_DECAY,
    MAX_EPOCH_IMAGES,
    RESUMABLE_OVERRIDES,
    TrainConfig,
    load_config,
    read_config_mapping,
    save_config,
)
from augexpand.train.models import build_model, guess_resnet, head_parameter_names, load_backbone_weights
from augexpand.train.optim import AdaBound

__all__ = [
    "MEAN",
    "STD",
    "Runtime",
    "build_optimizer",
    "distillation_loss",
    "eval_batch_size",
    "evaluate",
    "load_checkpoint",
    "loader_workers",
    "lr_factor",
    "make_loader",
    "model_from_checkpoint",
    "plot_curves",
    "resolve_device",
    "set_backbone_frozen",
    "smooth_targets",
    "soft_cross_entropy",
    "train",
    "train_one_epoch",
]

log = logging.getLogger(__name__)

MEAN = (0.485, 0.456, 0.406)  # ImageNet statistics: what torchvision's pretrained weights expect
STD = (0.229, 0.224, 0.225)
MAX_AUTO_SIZE = 224  # the automatic training size is the data's median short side, at most this
RUN_FILES = ("best.pt", "last.pt", "config.yaml", "metrics.jsonl", "curves.png", "summary.json")
_CHECKPOINT_TMP = re.compile(r"\.(best|last)\.pt\.[0-9]+-[0-9a-f]{8}\.tmp")  # checkpoint.save_checkpoint's


# --------------------------------------------------------------------------------------------------------- losses

def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``sum(-target * log_softmax(logits))``; ``target`` rows are distributions."""
    return torch.sum(-target * F.log_softmax(logits, dim=-1), dim=-1).mean()


def smooth_targets(target: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Label smoothing on (soft) targets: ``(1 - eps) * target + eps / C``."""
    if smoothing <= 0:
        return target
    return target * (1 - smoothing) + smoothing / target.shape[-1]


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton's distillation term: ``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, batch mean."""
    t = temperature
    return F.kl_div(F.log_softmax(student / t, -1), F.log_softmax(teacher / t, -1), reduction="batchmean",
                    log_target=True) * (t * t)


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warmup over ``warmup`` steps, then a cosine from 1 to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / span)))


# --------------------------------------------------------------------------------------------------------- device

@dataclass
class Runtime:
    """Where and how tensors run: the device, mixed precision, memory format and input normalisation."""

    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool
    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def create(cls, device: torch.device, amp: bool, channels_last: bool) -> Runtime:
        amp_dtype = None
        if amp and device.type == "cuda":
            amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1) * 255
        std = torch.tensor(STD, device=device).view(1, 3, 1, 1) * 255
        # channels-last: 1.3-1.5x on CUDA with AMP, and about 1.15x with oneDNN on the CPU
        return cls(device, amp_dtype, channels_last and device.type in ("cuda", "cpu"), mean, std)

    def inputs(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, 3) from the loader -> normalised float (B, 3, H, W) on the device."""
        x = pixels.to(self.device, non_blocking=True).permute(0, 3, 1, 2)  # a channels-last view, no copy
        x = x.float() if self.channels_last else x.contiguous().float()
        return (x - self.mean) / self.std

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                              enabled=self.amp_dtype is not None)


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when torch sees a GPU, else the CPU; a GPU asked for but absent is a TrainingError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            raise TrainingError(f"--device {name} asked for a CUDA GPU, but torch ({torch.__version__}, {build}) "
                                "sees none", hint="use --device cpu, or --device auto to use a GPU only when present")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise TrainingError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) present")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise TrainingError("--device mps asked for Apple's GPU, but torch sees none", hint="use --device cpu")
    return torch.device(name)


# ---------------------------------------------------------------------------------------------------------- model

def set_backbone_frozen(model: nn.Module, frozen: bool) -> None:
    """Freeze (or unfreeze) every parameter but the head's, and hold BatchNorm statistics while frozen.

    Call after ``model.train()``: frozen BatchNorm layers are switched to eval mode.
    """
    head = head_parameter_names(model)
    for name, p in model.named_parameters():
        p.requires_grad_(name in head or not frozen)
    if frozen:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD (Nesterov momentum), AdamW or AdaBound over four groups: backbone/head x decayed/not decayed.

    Biases and normalisation weights are not decayed. The head's rate is ``head_lr_mult`` times the backbone's
    (AdaBound's final rate too). Each group keeps its peak rate in ``base_lr``; the schedule scales it every step.
    """
    head = head_parameter_names(model)
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        groups.setdefault((name in head, p.ndim > 1), []).append(p)
    params = []
    for (is_head, decay), ps in sorted(groups.items()):
        mult = config.head_lr_mult if is_head else 1.0
        group = {"params": ps, "lr": config.lr * mult, "base_lr": config.lr * mult,
                 "weight_decay": config.weight_decay if decay else 0.0,
                 "name": ("head" if is_head else "backbone") + ("" if decay else "_no_decay")}
        if config.optimizer == "adabound":
            group["final_lr"] = config.final_lr * mult
        params.append(group)
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0)
    if config.optimizer == "adabound":
        return AdaBound(params, lr=config.lr, betas=(config.momentum, 0.999), final_lr=config.final_lr,
                        gamma=config.gamma)
    return torch.optim.AdamW(params, lr=config.lr, betas=(config.momentum, 0.999))


def _set_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor


def _group_lr(optimizer: torch.optim.Optimizer, name: str) -> float:
    return next((g["lr"] for g in optimizer.param_groups if g["name"] == name), 0.0)


# --------------------------------------------------------------------------------------------------- one epoch

@dataclass
class _Schedule:
    step: int
    total: int
    warmup: int


def train_one_epoch(model: nn.Module, loader, optimizer: torch.optim.Optimizer, scaler, rt: Runtime,
                    config: TrainConfig, schedule: _Schedule, frozen: bool, teacher: nn.Module | None = None,
                    progress: Any = None) -> dict[str, float]:
    """One pass over the training batches (or until the step budget ends). Returns loss, accuracy, images/s."""
    model.train()
    set_backbone_frozen(DDP.unwrap(model), frozen)
    total_loss = torch.zeros((), device=rt.device)
    correct = torch.zeros((), device=rt.device, dtype=torch.long)
    seen = 0
    start = time.perf_counter()
    for pixels, target in loader:
        if schedule.step >= schedule.total:
            break
        # Learning rate for this step: warmup, then cosine
        _set_lr(optimizer, lr_factor(schedule.step, schedule.warmup, schedule.total))
        x = rt.inputs(pixels)
        y = target.to(rt.device, non_blocking=True)
        # Forward: soft-target cross-entropy (+ distillation from the teacher)
        with rt.autocast():
            logits = model(x)
        logits = logits.float()
        loss = soft_cross_entropy(logits, smooth_targets(y, config.label_smoothing))
        if teacher is not None:
            with torch.no_grad(), rt.autocast():
                t_logits = teacher(_teacher_input(x, teacher)).float()
            kd = distillation_loss(logits, t_logits, config.kd_temperature)
            loss = (1 - config.kd_weight) * loss + config.kd_weight * kd
        # Backward and step (the scaler only scales with float16 autocast)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        schedule.step += 1
        # Running statistics, kept on the device (no sync per step)
        total_loss += loss.detach() * len(y)
        correct += (logits.argmax(1) == y.argmax(1)).sum()
        seen += len(y)
        if progress is not None:
            progress.update(1)
    if rt.device.type == "cuda":
        torch.cuda.synchronize(rt.device)
    seconds = time.perf_counter() - start
    seen = max(seen, 1)
    return {"loss": total_loss.item() / seen, "acc": correct.item() / seen, "images": seen, "seconds": seconds,
            "images_per_s": seen / seconds if seconds > 0 else 0.0}


def _teacher_input(x: torch.Tensor, teacher: nn.Module) -> torch.Tensor:
    size = getattr(teacher, "input_size", None)
    if size and size != x.shape[-1]:
        return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x


EVAL_PIXELS = 256 * 224 * 224  # pixels in an evaluation batch, at most: 256 images at 224x224


def eval_batch_size(batch_size: int, size: int) -> int:
    """The evaluation batch at resolution ``size``: ``batch_size`` images, fewer when they would hold more than
    EVAL_PIXELS (256 images at 1024x1024 through a smallcnn's first layer are 34 GB)."""
    return max(1, min(batch_size, EVAL_PIXELS // (size * size)))


@torch.no_grad()
def evaluate(model: nn.Module, loader, rt: Runtime, num_classes: int) -> dict[str, Any]:
    """Loss, top-1 accuracy and the confusion matrix (rows: true class, columns: predicted) over a loader."""
    model.eval()
    total_loss = 0.0
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long, device=rt.device)
    seen = 0
    for pixels, target in loader:
        x = rt.inputs(pixels)
        y = target.to(rt.device, non_blocking=True)
        with rt.autocast():
            logits = model(x)
        logits = logits.float()
        decoded = y.sum(1) > 0  # an image that could not be decoded comes with an all-zero target
        if not bool(decoded.all()):
            logits, y = logits[decoded], y[decoded]
            if not len(y):
                continue
        total_loss += soft_cross_entropy(logits, y).item() * len(y)
        pairs = y.argmax(1) * num_classes + logits.argmax(1)
        confusion += torch.bincount(pairs, minlength=num_classes * num_classes).view(num_classes, num_classes)
        seen += len(y)
    confusion = confusion.cpu().numpy()
    return {"loss": total_loss / max(seen, 1), "acc": float(np.trace(confusion) / max(seen, 1)),
            "confusion": confusion, "images": seen}


# ---------------------------------------------------------------------------------------------------- run folder

class RunLock:
    """An exclusive lock on the run folder (``RUN/.lock``, flock): two runs, or two torchruns, never write one RUN.

    The kernel drops the lock when the process ends, however it ends, so a crashed run never leaves RUN locked.
    """

    NAME = ".lock"

    def __init__(self, out: Path) -> None:
        self.path = Path(out) / self.NAME
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            return self
        try:  # never through a link (the file it leads to was truncated and given our pid), nor blocking on a FIFO
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            reason = "it is a link" if exc.errno == errno.ELOOP else exc.strerror or exc
            raise TrainingError(f"cannot create the lock file {self.path}: {reason}; remove it") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise TrainingError(f"cannot create the lock file {self.path}: it is not a regular file; remove it")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise TrainingError(f"{self.path.parent} is being written by another training run ({holder})",
                                hint="wait for it to finish, or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None


def _foreign(out: Path) -> bool:
    """Whether the folder holds anything besides a lock and a decoded cache (a cache alone is reused)."""
    return bool({p.name for p in out.iterdir()} - {"cache", RunLock.NAME})


def _is_run(out: Path) -> bool:
    """Whether the folder's config.yaml is one that train wrote (a mapping with its data and out), not a file of
    the same name in a user's folder (which --overwrite would delete)."""
    try:
        saved = read_config_mapping(out / "config.yaml")
    except TrainingError:
        return False
    return {"data", "out", "model"} <= set(saved)


def _refuse_out_in_data(config: TrainConfig) -> None:
    """RUN is never inside the images the run reads (its curves.png would become an image of a class, its cache
    and checkpoints would clutter the dataset): not DST itself, not in DST's train/ or val/ split (or in DST when
    it is a plain ImageFolder), not in --val."""
    data = Path(config.data).resolve()
    out = Path(config.out).resolve()
    guarded = [data / "train", data / "val"] if (data / "train").is_dir() else [data]
    if config.val is not None:
        guarded.append(Path(config.val).resolve())
    for folder in guarded:
        if out == data or out == folder or folder in out.parents:
            raise TrainingError(f"--out {config.out} is inside {folder}, the images this run reads; they are never "
                                "written to: choose a folder outside them")


def _refuse_start_in_out(config: TrainConfig) -> None:
    """--overwrite empties RUN before --init, --teacher or --weights is read: one of them in RUN was deleted with the
    run, and the command then failed on it ("no checkpoint at RUN/best.pt"), the run lost."""
    out = Path(config.out).resolve()
    for option in ("init", "teacher", "weights"):
        given = getattr(config, option)
        if given is not None and (Path(given).resolve() == out or out in Path(given).resolve().parents):
            raise TrainingError(f"--{option} {given} is in --out {config.out}, which --overwrite empties first",
                                hint="copy it out of the run folder, or write the new run to another --out")


def _open_run(out: Path, resume: bool, overwrite: bool) -> RunLock:
    """Check that RUN may be written (refusals before anything is created), lock it, clear it on overwrite."""
    if out.exists() and not out.is_dir():
        raise TrainingError(f"--out {out} is a file, not a folder")
    if resume and not (out / "last.pt").is_file():
        raise TrainingError(f"nothing to resume in {out}: no last.pt", hint="start the run without --resume")
    if not resume and out.is_dir() and _foreign(out) and not _is_run(out):
        # refused before the lock file is made: a user's folder is left exactly as it was
        raise TrainingError(f"--out {out} is not empty and is not a training run; choose a new folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TrainingError(f"cannot create --out {out}: {exc.strerror or exc}") from None
    lock = RunLock(out).acquire()
    try:
        _check_run_entries(out)
        if not resume and _foreign(out):
            if not _is_run(out):
                raise TrainingError(f"--out {out} is not empty and is not a training run; choose a new folder")
            if not overwrite:
                resumable = (out / "last.pt").is_file()  # none: stopped before its first epoch ended
                raise TrainingError(f"{out} already holds a training run{'' if resumable else ' (without last.pt)'}",
                                    hint="use --resume to continue it or --overwrite to start again" if resumable
                                    else "use --overwrite to start it again")
            for name in RUN_FILES:
                (out / name).unlink(missing_ok=True)
            for p in out.glob("confusion_*.png"):  # what evaluate draws into RUN
                p.unlink()
            # the decoded cache stays: it is checked against the files and size before any reuse
        _remove_temporary_files(out)
    except BaseException:
        lock.release()
        raise
    return lock


def _check_run_entries(out: Path) -> None:
    """What the run writes (or --overwrite removes) is a file, a link or absent, and its cache a folder: a folder of a
    run file's name was found only when the file was written, after an epoch, as an OSError naming a temporary file."""
    for name in (*RUN_FILES, "cache", *(p.name for p in out.glob("confusion_*.png"))):
        try:
            mode = os.lstat(out / name).st_mode
        except OSError:
            continue
        ok = stat.S_ISDIR(mode) if name == "cache" else stat.S_ISREG(mode) or stat.S_ISLNK(mode)
        if not ok:
            kind = "a folder" if stat.S_ISDIR(mode) else "a file" if stat.S_ISREG(mode) else "not a regular file"
            raise TrainingError(f"{out / name} is {kind}, where the run keeps its {name}; move it away")


def _remove_temporary_files(out: Path) -> None:
    """What a killed run was writing when it died (a checkpoint: hundreds of MB for a ResNet-50 with its optimizer
    state), removed under the lock: no run writes them now. Regular files of our temporary names only."""
    for folder in (out, out / "cache"):
        try:
            if not stat.S_ISDIR(os.lstat(folder).st_mode):  # a link is never followed
                continue
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            if (_CHECKPOINT_TMP.fullmatch(entry.name) or is_temp_file(entry.name)) and \
                    entry.is_file(follow_symlinks=False):
                try:
                    os.unlink(entry.path)
                except OSError:
                    pass


def _resume_config(config: TrainConfig, explicit: set[str]) -> TrainConfig:
    saved = load_config(config.out / "config.yaml")
    changed = sorted(k for k in explicit - RESUMABLE_OVERRIDES - {"data", "out"}
                     if getattr(config, k) != getattr(saved, k))
    if Path(config.data).resolve() != Path(saved.data).resolve():
        changed.insert(0, "data")
    if changed:
        raise TrainingError(f"cannot change {', '.join(changed)} when resuming {config.out}",
                            hint=f"resume with the run's own settings (see {config.out}/config.yaml)")
    update = {k: getattr(config, k) for k in explicit & RESUMABLE_OVERRIDES}
    return saved.model_copy(update={**update, "progress": config.progress})


# ------------------------------------------------------------------------------------------------------ resolving

def _resolve_size(config: TrainConfig, train_split: D.Split, init_ckpt: dict | None) -> tuple[int, str]:
    """The training resolution, and where it came from (for the log, config.yaml's neighbour and the summary)."""
    if config.size is not None:
        return config.size, "--size"
    if init_ckpt is not None:
        return int(init_ckpt["size"]), f"the --init checkpoint {config.init}"
    source = D.source_resolution(config.data)
    if source is not None:  # the images the dataset was made from, not the (possibly enlarged) expansion
        median, count = source
        return min(MAX_AUTO_SIZE, median), (f"the median short side of the {plural(count, 'source image')} "
                                             f"({median} px) in {Path(config.data) / D.CARD}")
    median = D.probe_resolution(train_split)
    return min(MAX_AUTO_SIZE, median), f"the median short side of the training images ({median} px)"


def _resolve(config: TrainConfig, train_split: D.Split, init_ckpt: dict | None,
             explicit: set[str] = frozenset()) -> tuple[TrainConfig, str]:
    """Fill every ``auto``/``None`` of the config with the value this run will use (the length: see _length).

    An ``--init`` run fixes the model and its width: one given (in ``explicit``) that differs is refused.
    Returns the resolved config and where the training size came from.
    """
    update: dict[str, Any] = {}
    n = len(train_split)
    size, size_from = _resolve_size(config, train_split, init_ckpt)
    update["size"] = size
    model = config.model
    if init_ckpt is not None:
        init_name, init_width = init_ckpt["model_args"]["name"], init_ckpt["model_args"].get("width")
        leave = "leave it out to use the run's"
        if model not in ("auto", init_name):
            raise ConflictingOptionError(f"--model {model} does not match --init {config.init}, a {init_name}", leave)
        if init_width is not None and "width" in explicit and config.width != init_width:
            raise ConflictingOptionError(f"--width {config.width} does not match --init {config.init}, a {init_name} "
                                         f"of width {init_width}", leave)
        model = init_name
        if init_width is not None:
            update["width"] = init_width
    elif config.weights is not None and model == "auto":
        model = guess_resnet(config.weights)
        if model is None:
            raise TrainingError(f"cannot tell which model the weights in {config.weights} are for",
                                hint="pass --model resnet18, resnet34 or resnet50")
    elif model == "auto":
        model = "smallcnn" if size <= 64 else ("resnet18" if n < 100_000 else "resnet50")
    if config.size is None:  # said once the options are known to agree (a usage error is its one line)
        log.info("training size %dx%d from %s", size, size, size_from)
    if model.startswith("resnet") and size < 32:
        log.warning("training a %s at %dx%d: ResNets downsample 32x; --model smallcnn suits tiny images",
                    model, size, size)
    update["model"] = model
    if config.flip is None:  # no flip where mirror images are another class (digits, text)
        kept = D.orientation_kept(config.data)
        if kept is not None:  # the expansion decided
            if kept:
                log.info("no random flip: %s says orientation was kept (--flip turns it on)",
                         Path(config.data) / D.CARD)
        else:  # no expansion card: the training images decide, with the test of expand's `orientation: auto`
            from augexpand.orientation import decide_from_files, evidence

            decision = decide_from_files([train_split.root / f for f in train_split.files], train_split.labels,
                                         config.seed)
            kept = decision.keep
            log.info("%s random flip: %s (--flip/--no-flip decide instead)", "no" if kept else "with",
                     evidence(decision.card()))
        update["flip"] = not kept
    pretrained = config.pretrained
    update["lr"] = config.lr or DEFAULT_LR[(config.optimizer, pretrained)]
    update["weight_decay"] = config.weight_decay if config.weight_decay is not None else \
        DEFAULT_WEIGHT_DECAY[config.optimizer]
    if config.optimizer == "adabound":
        update["final_lr"] = config.final_lr or DEFAULT_FINAL_LR[pretrained]
    update["head_lr_mult"] = config.head_lr_mult or (10.0 if pretrained else 1.0)
    update["freeze_epochs"] = config.freeze_epochs if config.freeze_epochs is not None else (1 if pretrained else 0)
    if update["freeze_epochs"] and not pretrained:
        log.warning("--freeze-epochs %d without --weights or --init freezes a randomly initialised backbone",
                    update["freeze_epochs"])
    if config.workers is None:
        from augexpand.executors import default_workers

        cpus = default_workers()
        update["workers"] = min(cpus, 8) if (config.device != "cpu" and torch.cuda.is_available()) else min(cpus, 2)
    elif config.workers:
        update["workers"] = loader_workers(config.workers)
    return config.model_copy(update=update), size_from


def _length(config: TrainConfig, n: int, world_size: int = 1) -> tuple[int, int]:
    """(epochs, passes over the training set per epoch) for ``n`` training images on ``world_size`` processes.

    ``--epochs``/``--steps``/``--repeats`` given: as given (one pass per epoch). Otherwise DEFAULT_EPOCHS epochs,
    and a tiny set is passed over several times per epoch (each pass its own shuffle, the passes joined and cut
    into batches) so that the run takes at least ``min_steps`` optimizer steps: 50 images in batches of 64 make
    one step per epoch, 20 in all; 32 passes make 25 full batches per epoch, 500 steps in 20 epochs.
    Validation, checkpoints and metrics stay once per epoch.
    """
    def steps_per_epoch(repeats: int) -> int:
        return math.ceil(D.batch_count(n * repeats, config.batch_size) / world_size)

    repeats = config.repeats or 1
    if config.repeats is None and config.epochs is None and config.steps is None and config.min_steps:
        wanted = math.ceil(config.min_steps / DEFAULT_EPOCHS)
        low, high = 1, math.ceil(wanted * world_size * config.batch_size / max(n, 1)) + 1
        while low < high:  # the fewest passes that make `wanted` steps (steps grow with the passes)
            mid = (low + high) // 2
            low, high = (mid + 1, high) if steps_per_epoch(mid) < wanted else (low, mid)
        repeats = low
    if repeats > 1 and n * repeats > MAX_EPOCH_IMAGES:
        raise TrainingError(f"--repeats {repeats} passes over {n} images make epochs of {n * repeats:,} images; "
                            f"at most {MAX_EPOCH_IMAGES:,}")
    if config.epochs is not None:
        return config.epochs, repeats
    if config.steps is not None:  # --steps decides the length; the epochs it makes
        return math.ceil(config.steps / steps_per_epoch(repeats)), repeats
    return DEFAULT_EPOCHS, repeats


def _model_args(config: TrainConfig, num_classes: int) -> dict[str, Any]:
    args: dict[str, Any] = {"name": config.model, "num_classes": num_classes}
    if config.model == "smallcnn":
        args["width"] = config.width
    return args


GPU_CACHE_SHARE = 0.25  # of the free GPU memory, at most, for the decoded cache (the model and its batches need the rest)


def _fits_on_gpu(nbytes: int, device: torch.device) -> bool:
    """Whether a cache of ``nbytes`` may live in ``device``'s memory (said in the log either way)."""
    try:
        free, _ = torch.cuda.mem_get_info(device)
    except RuntimeError:  # a device that cannot say (some MIG and driver set-ups): the loader path, as on the CPU
        return False
    fits = nbytes <= GPU_CACHE_SHARE * free
    log.info("the decoded cache (%.2f GB) %s", nbytes / 1e9,
             "is held on the GPU: batches are gathered and augmented there" if fits else
             f"is over {GPU_CACHE_SHARE:.0%} of the GPU's free memory ({free / 1e9:.1f} GB): loader workers "
             "gather and augment batches")
    return fits


def loader_workers(requested: int) -> int:
    """Data-loading processes for ``requested``: at most one per core (``--workers 100000`` forked until the machine
    gave out; past the cores, torch's DataLoader warns in a paragraph, and they only take memory)."""
    from augexpand.executors import default_workers

    cores = default_workers()
    if requested > cores:
        log.info("--workers %d: at most one data-loading process per core, %d on this machine", requested, cores)
    return min(requested, cores)


def make_loader(dataset, plan: D.EpochPlan, workers: int, pin: bool) -> torch.utils.data.DataLoader:
    """The DataLoader of whole batches: ``plan`` yields each batch's indices, ``dataset`` makes the batch."""
    kwargs: dict[str, Any] = {}
    if workers:
        kwargs = {"persistent_workers": True, "prefetch_factor": 4, "worker_init_fn": D._worker_init}
    # A private generator for the loader's own seed draws: otherwise each epoch's iterator takes one from the global
    # RNG with 0 workers but not with persistent workers, and dropout would differ between --workers 0 and N.
    return torch.utils.data.DataLoader(dataset, batch_size=None, sampler=plan, num_workers=workers,
                                       pin_memory=pin, generator=torch.Generator().manual_seed(plan.seed), **kwargs)


# --------------------------------------------------------------------------------------------------------- curves

def plot_curves(metrics: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """Loss and accuracy per epoch, train vs val, as a PNG (a dotted line where the backbone unfreezes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [m["epoch"] for m in metrics]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax1.plot(epochs, [m["train_loss"] for m in metrics], label="train")
    ax2.plot(epochs, [m["train_acc"] for m in metrics], label="train")
    if any(m.get("val_loss") is not None for m in metrics):
        ax1.plot(epochs, [m.get("val_loss") for m in metrics], label="val")
        ax2.plot(epochs, [m.get("val_acc") for m in metrics], label="val")
    unfreeze = next((m["epoch"] for m in metrics if not m.get("frozen")), None)
    if unfreeze is not None and metrics[0].get("frozen"):
        for ax in (ax1, ax2):
            ax.axvline(unfreeze - 0.5, color="grey", linestyle=":", label="unfreeze")
    ax1.set(xlabel="epoch", ylabel="loss", title="loss")
    ax2.set(xlabel="epoch", ylabel="top-1 accuracy", title="accuracy", ylim=(0, 1.02))
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    try:
        write_figure(fig, path)
    finally:
        plt.close(fig)


# ---------------------------------------------------------------------------------------------------------- train

def train(config: TrainConfig, resume: bool = False, overwrite: bool = False,
          explicit: set[str] | None = None) -> dict[str, Any]:
    """Train as ``config`` says, writing the run folder ``config.out``. Returns the summary (also summary.json).

    ``explicit`` names the options the user gave on the command line: on ``resume`` only those in
    RESUMABLE_OVERRIDES may differ from the run's saved config. Under torchrun every process calls this; rank 0
    alone writes RUN (see :mod:`augexpand.train.distributed`).
    """
    ctx = DDP.setup(config.device)
    lock = None
    try:
        if not ctx.is_main:  # one voice: rank 0 logs and draws the progress bar
            logging.getLogger("augexpand").setLevel(logging.ERROR)
            config = config.model_copy(update={"progress": False})
        _refuse_out_in_data(config)
        if overwrite:
            _refuse_start_in_out(config)
        lock = ctx.on_main(lambda: _open_run(Path(config.out), resume, overwrite), share=False)
        try:
            return _train(config, ctx, resume, explicit or set())
        except TrainingInterrupted:
            raise
        except KeyboardInterrupt:  # before the first step: reading the data, decoding the cache
            out = Path(config.out)
            kept = (f"{out}/last.pt is kept: run again with --resume to continue" if resume else
                    "nothing was kept" + ("; start again with --overwrite" if out.is_dir() and _foreign(out) else ""))
            raise TrainingInterrupted(f"interrupted before training {'resumed' if resume else 'started'}: "
                                      f"{kept}") from None
    finally:
        if lock is not None:
            lock.release()
        ctx.teardown()


def _restore(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scaler,
             device: torch.device) -> dict[str, Any]:
    """Load ``last.pt`` into the model, optimizer, scaler and random generators (the CPU's, and the GPU's, which
    dropout draws from on CUDA, when the run was on one); a file that does not fit is one TrainingError."""
    ckpt = read_torch_file(path)
    keys = ("model", "optimizer", "scaler", "rng", "step", "epoch", "best_acc", "best_loss", "best_epoch",
            "bad_epochs")
    hint = f"start again with --overwrite (or delete {path})"
    if not isinstance(ckpt, dict) or not set(keys) <= set(ckpt):
        raise TrainingError(f"{path} is not the last.pt of a training run (no optimizer state)", hint=hint)
    try:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        torch.set_rng_state(ckpt["rng"])
        if device.type == "cuda" and "cuda_rng" in ckpt:  # a CPU run resumed on a GPU starts the GPU's afresh
            torch.cuda.set_rng_state(ckpt["cuda_rng"], device)
        state = {k: int(ckpt[k]) for k in ("step", "epoch", "best_epoch", "bad_epochs")}
        state.update({k: float(ckpt[k]) for k in ("best_acc", "best_loss")})
    except (RuntimeError, ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:  # int(inf): Overflow
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise TrainingError(f"{path} does not fit this run's model and optimizer: {first[:200]}", hint=hint) from None
    if state["step"] < 0 or state["epoch"] < 0:
        raise TrainingError(f"{path} has a negative step or epoch", hint=hint)
    return state


def _reduce_train(ctx: DDP.Dist, tr: dict[str, float]) -> dict[str, float]:
    """The epoch's training statistics over all ranks (loss and accuracy weighted by images)."""
    if not ctx.enabled:
        return tr
    loss, acc, images = ctx.sum([tr["loss"] * tr["images"], tr["acc"] * tr["images"], tr["images"]])
    seconds = ctx.max(tr["seconds"])
    images = max(images, 1)
    return {"loss": loss / images, "acc": acc / images, "images": images, "seconds": seconds,
            "images_per_s": images / seconds if seconds > 0 else 0.0}


def _reduce_eval(ctx: DDP.Dist, va: dict[str, Any]) -> dict[str, Any]:
    """Validation over all ranks' shards: the confusion matrices and loss sums added up."""
    if not ctx.enabled:
        return va
    flat = ctx.sum([va["loss"] * va["images"], va["images"], *va["confusion"].ravel().tolist()])
    images = int(flat[1])
    confusion = np.rint(np.asarray(flat[2:])).astype(np.int64).reshape(va["confusion"].shape)
    return {"loss": flat[0] / max(images, 1), "acc": float(np.trace(confusion) / max(images, 1)),
            "confusion": confusion, "images": images}


def _prefix(root: Path, data: Path) -> str:
    """``root`` (a split) as seen from the dataset folder ``data`` ("train/", "" for a plain ImageFolder); "" for
    a ``--val`` folder elsewhere: its files are named relative to it."""
    try:
        rel = Path(root).resolve().relative_to(Path(data).resolve()).as_posix()
    except (ValueError, OSError):
        return ""
    return "" if rel == "." else rel + "/"


def _train(config: TrainConfig, ctx: DDP.Dist, resume: bool, explicit: set[str]) -> dict[str, Any]:
    from tqdm import tqdm

    out = Path(config.out)
    if resume:
        config = _resume_config(config, explicit)

    # Data: splits, class list, soft targets
    train_root, val_root, classes = D.find_splits(config.data, config.val)
    train_split = D.read_split(train_root, classes, _prefix(train_root, config.data))
    val_split = D.read_split(val_root, classes, _prefix(val_root, config.data)) if val_root is not None else None
    if len(classes) == 1:
        log.warning("%s has a single class (%s): the model will learn nothing useful (it always predicts it); "
                    "a classifier needs at least two classes", train_root, classes[0])
    if val_split is None:
        log.warning("no validation split (%s/val does not exist and no --val): best.pt is the last epoch",
                    config.data)
        if config.patience is not None:
            raise TrainingError("--patience (early stopping) needs a validation split: pass --val DIR")

    # Resolve the config (auto values); saved once the epochs are known
    init_ckpt = load_checkpoint(config.init, finite=True) if config.init is not None else None
    t_ckpt = load_checkpoint(config.teacher, finite=True) if config.teacher is not None else None
    if t_ckpt is not None and list(t_ckpt["classes"]) != classes:  # before any image is decoded
        raise TrainingError(f"the teacher {config.teacher} was trained on classes {t_ckpt['classes']}, "
                            f"this run has {classes}; distillation needs the same classes")
    config, size_from = _resolve(config, train_split, init_ckpt, explicit)
    if config.sync_bn and not (ctx.enabled and ctx.device.type == "cuda"):
        raise TrainingError("--sync-bn needs torchrun on CUDA GPUs (SyncBatchNorm runs only there)")
    device = ctx.device if ctx.enabled else resolve_device(config.device)
    rt = Runtime.create(device, config.amp, config.channels_last)
    torch.manual_seed(config.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick the fastest kernels once

    if config.workers:
        # Loader workers are forked from this process: with OpenCV's thread pool running here (a parallel resize),
        # a child inherits its locks but not its threads and can wait for ever in cv2.setNumThreads (as the
        # expand pools did; executors.fork_safe_opencv). The images are decoded and augmented in the workers.
        import cv2

        cv2.setNumThreads(1)

    # The decoded uint8 cache at training resolution (built once by rank 0, reused by every epoch and --resume)
    size = config.size

    def cached(split: D.Split, name: str) -> tuple[Path, D.Split]:
        path = out / "cache" / f"{name}_{size}.npy"
        kwargs = {"workers": config.workers, "progress": config.progress, "desc": f"decode {name}"}
        built = ctx.on_main(lambda: D.build_cache(split, size, path, **kwargs), share=False)
        return built if ctx.is_main else D.build_cache(split, size, path, warn=False, **kwargs)  # rank 0's, reused

    if config.cache:
        train_cache, train_split = cached(train_split, "train")
        train_ds = D.CachedBatches(train_cache, train_split, size, config.seed, True, config.flip, config.crop_pad)
    else:  # files read as they are every epoch: leave out what their headers rule out
        train_split = ctx.on_main(lambda: D.readable(train_split))  # rank 0 reads and warns; every rank gets it
        train_ds = D.FileBatches(train_split, size, config.seed, True, config.flip, config.crop_pad)
    val_ds = None
    if val_split is not None:
        if config.cache:
            val_cache, val_split = cached(val_split, "val")
            val_ds = D.CachedBatches(val_cache, val_split, size, augment=False)
        else:
            val_split = ctx.on_main(lambda: D.readable(val_split))
            val_ds = D.FileBatches(val_split, size, augment=False)
    # Schedule length (in optimizer steps): a tiny set is passed over several times per epoch (see _length)
    epochs, repeats = _length(config, len(train_split), ctx.world_size)
    if repeats > 1 and config.repeats is None:
        log.info("%s make few optimizer steps: each epoch passes over them %d times, so the run takes at least "
                 "--min-steps %d steps (--epochs, --steps or --repeats set the length)",
                 plural(len(train_split), "image"), repeats, config.min_steps)
    config = config.model_copy(update={"epochs": epochs, "repeats": repeats})
    eval_batch = max(config.batch_size, eval_batch_size(256, size))
    plan = D.EpochPlan(len(train_split), config.batch_size, config.seed, repeats=config.repeats)
    if ctx.enabled:  # each rank takes every world_size-th batch of the same epoch plan
        plan = DDP.ShardedPlan(plan, ctx.rank, ctx.world_size)
    pin = device.type == "cuda"
    val_plan = None
    if val_ds is not None:
        val_plan = D.EpochPlan(len(val_split), eval_batch, config.seed, shuffle=False)
        if ctx.enabled:
            val_plan = DDP.ShardedPlan(val_plan, ctx.rank, ctx.world_size, pad=False)
    if config.cache and config.gpu_cache and device.type == "cuda" and _fits_on_gpu(
            D.DeviceBatches.nbytes(train_split, size) + (D.DeviceBatches.nbytes(val_split, size) if val_ds else 0),
            device):
        train_loader = D.DeviceBatches(train_cache, train_split, size, plan, device, config.seed, True, config.flip,
                                       config.crop_pad)
        val_loader = D.DeviceBatches(val_cache, val_split, size, val_plan, device, augment=False) if val_ds else None
    else:
        train_loader = make_loader(train_ds, plan, config.workers, pin)
        val_loader = make_loader(val_ds, val_plan, min(config.workers, 2), pin) if val_ds is not None else None
    steps_per_epoch = len(plan)
    total_steps = config.steps or config.epochs * steps_per_epoch
    epochs = math.ceil(total_steps / steps_per_epoch)
    warmup = min(round(config.warmup_epochs * steps_per_epoch), max(total_steps - 1, 0))
    schedule = _Schedule(0, total_steps, warmup)

    # Model: fresh, from torchvision weights, or from an earlier run (transfer: the head is replaced)
    model_args = _model_args(config, len(classes))
    args = dict(model_args)
    model = build_model(args.pop("name"), **args)
    if config.weights is not None:
        info = load_backbone_weights(model, config.weights)
        log.info("loaded %d tensors from %s (new %d-class head)", info["loaded"], config.weights, len(classes))
    elif init_ckpt is not None:
        same = list(init_ckpt["classes"]) == classes
        init_path = config.init / "best.pt" if Path(config.init).is_dir() else config.init
        info = load_backbone_weights(model, init_path, keep_head=same)
        log.info("initialised from %s (%s)", config.init,
                 "same classes: head kept" if same else f"{len(init_ckpt['classes'])} -> {len(classes)} classes: "
                                                          "new head")
    if config.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    if rt.channels_last:
        model.to(memory_format=torch.channels_last)
    if ctx.enabled:  # the same weights everywhere come from DDP's broadcast; dropout differs per rank
        torch.manual_seed(config.seed + 1_000_003 * ctx.rank)

    # Teacher for knowledge distillation (same classes, frozen)
    teacher = None
    if t_ckpt is not None:
        teacher = model_from_checkpoint(t_ckpt).to(device).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        if rt.channels_last:
            teacher.to(memory_format=torch.channels_last)

    # Optimizer
    optimizer = build_optimizer(model, config)
    scaler = torch.amp.GradScaler(device.type, enabled=rt.amp_dtype == torch.float16)

    if not resume:  # only now: a --weights or --teacher refused above leaves no run behind that needs --overwrite
        ctx.on_main(lambda: save_config(config, out / "config.yaml"), share=False)

    # Resume: weights, optimizer, step, best so far, metrics up to the checkpoint
    start_epoch, best_acc, best_loss, best_epoch, bad_epochs = 0, -1.0, math.inf, 0, 0
    metrics: list[dict[str, Any]] = []
    saved: tuple[int, int] | None = None  # (epoch, step) of last.pt, what Ctrl-C keeps
    if resume:
        state = _restore(out / "last.pt", model, optimizer, scaler, device)
        for group in optimizer.param_groups:  # resuming may change the step budget, not the peak rates
            group["base_lr"] = config.lr * (config.head_lr_mult if group["name"].startswith("head") else 1.0)
        schedule.step = state["step"]
        start_epoch = state["epoch"]  # epochs finished (1-based number of the last one)
        best_acc, best_loss, best_epoch, bad_epochs = (state["best_acc"], state["best_loss"], state["best_epoch"],
                                                       state["bad_epochs"])
        if ctx.enabled:
            torch.manual_seed(config.seed + 1_000_003 * ctx.rank + schedule.step)
        metrics = _read_metrics(out / "metrics.jsonl", start_epoch)
        saved = (start_epoch, schedule.step)
        log.info("resuming %s at epoch %d (step %d of %d)", out, start_epoch + 1, schedule.step, total_steps)

    def checkpoint(epoch: int, with_optimizer: bool) -> dict[str, Any]:
        ckpt = {"model": DDP.unwrap(model).state_dict(), "model_args": model_args, "classes": classes,
                "size": size, "mean": list(MEAN), "std": list(STD), "epoch": epoch + 1, "step": schedule.step,
                "config": config.model_dump(mode="json")}
        if with_optimizer:
            ckpt.update({"optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                         "rng": torch.get_rng_state(), "best_acc": best_acc, "best_loss": best_loss,
                         "best_epoch": best_epoch, "bad_epochs": bad_epochs})
            if device.type == "cuda":
                ckpt["cuda_rng"] = torch.cuda.get_rng_state(device)
        return ckpt

    # The epochs: train, validate, log, checkpoint, maybe stop early
    procs = (f", {ctx.world_size} processes ({ctx.backend}, global batch {ctx.world_size}x{config.batch_size})"
             if ctx.enabled else "")
    log.info("training %s at %dx%d on %d images (%d classes%s), %s of %s, on %s%s%s",
             config.model, size, size, len(train_split), len(classes), ", soft labels" if train_split.soft else "",
             plural(epochs, "epoch"), plural(steps_per_epoch, "step"), device,
             f" with {str(rt.amp_dtype).split('.')[-1]} autocast" if rt.amp_dtype else "", procs)
    started, resumed_at_step = time.perf_counter(), schedule.step
    stopped_early = False
    net, net_frozen = model, None  # net: the model as trained (DDP-wrapped under torchrun)
    try:
        for epoch in range(start_epoch, epochs):
            if schedule.step >= total_steps:
                break
            frozen = epoch < config.freeze_epochs
            if ctx.enabled and frozen != net_frozen:  # DDP syncs the parameters that require grad when built
                net = None
                gc.collect()  # the previous wrapper, and its gradient hooks, go first
                set_backbone_frozen(model, frozen)
                net, net_frozen = DDP.wrap_model(model, ctx), frozen
            plan.set_epoch(epoch)
            bar = tqdm(total=min(steps_per_epoch, total_steps - schedule.step), desc=f"epoch {epoch + 1}/{epochs}",
                       unit="step", leave=False, disable=not config.progress)
            with bar:
                tr = train_one_epoch(net, train_loader, optimizer, scaler, rt, config, schedule, frozen, teacher, bar)
                tr = _reduce_train(ctx, tr)
                va = None
                if val_loader is not None:
                    ctx.sync_buffers(model)
                    va = _reduce_eval(ctx, evaluate(model, val_loader, rt, len(classes)))
                bar.set_postfix_str(f"loss {tr['loss']:.3f} acc {tr['acc']:.3f}"
                                    + (f" val {va['acc']:.3f}" if va else ""))
            row = {"epoch": epoch + 1, "step": schedule.step, "frozen": frozen,
                   "train_loss": round(tr["loss"], 5), "train_acc": round(tr["acc"], 5),
                   "val_loss": round(va["loss"], 5) if va else None, "val_acc": round(va["acc"], 5) if va else None,
                   "lr_backbone": _group_lr(optimizer, "backbone"), "lr_head": _group_lr(optimizer, "head"),
                   "images_per_s": round(tr["images_per_s"], 1), "seconds": round(tr["seconds"], 3)}
            metrics.append(row)
            log.info("epoch %d/%d: loss %.4f acc %.4f%s, %.0f img/s%s", epoch + 1, epochs, tr["loss"], tr["acc"],
                     f", val loss {va['loss']:.4f} acc {va['acc']:.4f}" if va else "", tr["images_per_s"],
                     " (head only)" if frozen else "")
            # Best checkpoint: highest val accuracy, ties to the lower val loss (no val: the latest epoch)
            improved = va is None or va["acc"] > best_acc or (va["acc"] == best_acc and va["loss"] < best_loss)
            if improved:
                best_acc, best_loss = (va["acc"], va["loss"]) if va else (tr["acc"], tr["loss"])
                best_epoch, bad_epochs = epoch + 1, 0
                if ctx.is_main:
                    save_checkpoint(checkpoint(epoch, False), out / "best.pt")
            elif not frozen:
                bad_epochs += 1
            if ctx.is_main:
                write_atomic(out / "metrics.jsonl", "".join(json_text(m, indent=None) + "\n" for m in metrics))
                save_checkpoint(checkpoint(epoch, True), out / "last.pt")
                saved = (epoch + 1, schedule.step)
            if config.patience is not None and bad_epochs > config.patience:
                log.info("early stop: no val improvement for %d epochs (best %.4f at epoch %d)", bad_epochs,
                         best_acc, best_epoch)
                stopped_early = True
                break
    except KeyboardInterrupt:
        if saved is None:
            kept = "before the first epoch ended: nothing was kept; start again with --overwrite"
        else:
            kept = (f"{out}/last.pt (step {saved[1]}, the end of epoch {saved[0]}) is kept: run again with --resume "
                    f"to continue")
        raise TrainingInterrupted(f"interrupted at step {schedule.step} of {total_steps}"
                                  f"{', ' if saved is None else '; '}{kept}") from None
    seconds = time.perf_counter() - started

    # Curves and the summary (rank 0 writes; the others wait until it has)
    last = metrics[-1] if metrics else {}
    trained = [m for m in metrics if m["epoch"] > start_epoch]
    images = sum(m["images_per_s"] * m["seconds"] for m in trained)
    summary = {
        "run": str(out), "model": config.model, "size": size, "size_from": size_from, "device": str(device),
        "processes": ctx.world_size, "classes": classes, "train_images": len(train_split),
        "val_images": len(val_split) if val_split else 0,
        "epochs": last.get("epoch", 0), "steps": schedule.step, "resumed_at_step": resumed_at_step,
        "best_val_acc": best_acc if val_split else None, "best_epoch": best_epoch,
        "last_val_acc": last.get("val_acc"), "last_train_loss": last.get("train_loss"),
        "stopped_early": stopped_early, "seconds": round(seconds, 2),
        "images_per_s": round(images / max(sum(m["seconds"] for m in trained), 1e-9), 1) if trained else 0.0,
        # files left out (unreadable, or passed over by the walker), as dataset.json lists a source's
        "skipped": [{**s, "split": name} for name, split in (("train", train_split), ("val", val_split)) if split
                    for s in split.skipped],
    }
    if ctx.is_main:
        if metrics:
            plot_curves(metrics, out / "curves.png", title=f"{config.model} on {Path(config.data).name}")
        write_atomic(out / "summary.json", json_text(summary) + "\n", sync=True)  # a diverged loss (NaN) is null
    ctx.barrier()
    return summary


def _read_metrics(path: Path, upto_epoch: int) -> list[dict[str, Any]]:
    """The metrics.jsonl rows up to an epoch; unreadable lines, and rows without the numbers the curves draw, are
    dropped (the curves then start later). A null train loss is an epoch that diverged (NaN, written as null)."""
    def number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    rows = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                row = json.loads(line)
            except (ValueError, RecursionError):
                continue
            if (isinstance(row, dict) and isinstance(row.get("epoch"), int) and row["epoch"] <= upto_epoch
                    and "train_loss" in row and (row["train_loss"] is None or number(row["train_loss"]))
                    and number(row.get("train_acc"))
                    and all(row.get(k) is None or number(row[k]) for k in ("val_loss", "val_acc"))):
                rows.append({**row, "train_loss": math.nan if row["train_loss"] is None else row["train_loss"]})
    return rows
