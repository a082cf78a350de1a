"""Reading and writing checkpoints safely: ``torch.load(weights_only=True)``, clear errors, bounded model arguments.

A checkpoint is a file anybody may hand to ``evaluate``, ``--init``, ``--teacher``, ``--weights`` or ``--resume``.
It is read with ``weights_only=True`` (tensors and plain values only: no pickled code can run), and what it says
is checked before anything is built from it: ``model_args`` must name a known model with arguments in range
(a crafted ``width=10**6`` would otherwise allocate terabytes), the classes must match the head, and every tensor
must have the shape the model expects (checked on torch's ``meta`` device, which allocates nothing). Every
failure is one :class:`TrainingError` line that names the file.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from augexpand.errors import TrainingError
from augexpand.train.data import MAX_CLASSES  # the bound of a dataset's classes is the bound of a head's

__all__ = [
    "MAX_CLASSES",
    "MAX_WIDTH",
    "check_tensors",
    "load_checkpoint",
    "model_from_checkpoint",
    "read_torch_file",
    "save_checkpoint",
    "validate_model_args",
]

log = logging.getLogger(__name__)

MAX_WIDTH = 256  # the small CNN's first-stage channels: 256 is already a 4.7M-parameter last stage
# The pickle in a torch.save archive holds the structure (names, numbers, the optimizer's settings); the tensors
# are entries of their own. A ResNet-50's last.pt with 1000 classes has 140 KB of it. 10 MB of pickled empty lists
# unpickle (weights_only too) into 780 MB over 17 s.
MAX_PICKLE_BYTES = 8 << 20
_SIZE_RANGE = (8, 1024)  # the training resolutions TrainConfig accepts


def read_torch_file(path: Path, what: str = "checkpoint") -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; anything that goes wrong is one TrainingError line.

    ``what`` names the file in messages ("checkpoint", "weights file").
    """
    path = Path(path)
    if not path.exists():
        raise TrainingError(f"{what} {path} does not exist")
    if not path.is_file():
        raise TrainingError(f"{what} {path} is not a file")
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise TrainingError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if size == 0:
        raise TrainingError(f"{what} {path} is empty (0 bytes); was it copied or written completely?")
    # torch.save writes a zip archive (PK\x03\x04); very old files are a bare pickle (protocol byte 0x80)
    if not (magic.startswith(b"PK\x03\x04") or magic[:1] == b"\x80"):
        raise TrainingError(f"{what} {path} is not a PyTorch file (torch.save writes a zip archive)")
    if magic.startswith(b"PK\x03\x04"):
        _check_archive(path, what)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling fails in many ways; all mean the same to the user
        text = str(exc)
        if "Weights only load failed" in text:
            raise TrainingError(f"{what} {path} holds Python objects besides tensors and plain values; refused "
                                "(checkpoints are read with weights_only=True, so a file cannot run code)") from None
        first = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
        if "central directory" in first or isinstance(exc, EOFError):
            first = "the file is truncated or damaged"
        elif magic.startswith(b"PK"):  # a zip that torch cannot read: cut short, or damaged on the way
            first = f"the file is truncated or damaged ({first[:120]})"
        raise TrainingError(f"cannot read {what} {path}: {first[:200]}") from None


def _check_archive(path: Path, what: str) -> None:
    """torch.save stores its entries uncompressed, each as large as it says: refuse a compressed entry (a zip bomb
    of a few MB can inflate to tens of GB inside torch.load) or entries that claim more bytes than the file has."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return  # torch.load names the damage
    if any(e.compress_type != zipfile.ZIP_STORED for e in entries):
        raise TrainingError(f"{what} {path} holds compressed entries, which torch.save never writes; refused")
    if sum(e.file_size for e in entries) > path.stat().st_size:
        raise TrainingError(f"{what} {path} claims more bytes than the file holds; refused")
    pickled = max((e.file_size for e in entries if e.filename.endswith(".pkl")), default=0)
    if pickled > MAX_PICKLE_BYTES:
        raise TrainingError(f"{what} {path} holds a pickle of {pickled / 2**20:.0f} MB besides its tensors, where "
                            f"train writes a few hundred KB; refused (unpickling it could take many GB)")


def _int_in(args: dict, key: str, low: int, high: int, where: str) -> int:
    value = args.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise TrainingError(f"{where}: model_args.{key} must be an integer in [{low}, {high}], got {value!r}")
    return value


def validate_model_args(args: Any, where: str) -> dict[str, Any]:
    """Check a checkpoint's ``model_args`` against the model registry and bounds; return a clean copy.

    Only the registered model names and their known arguments, each in range, pass.
    """
    from augexpand.train.models import MODELS

    if not isinstance(args, dict):
        raise TrainingError(f"{where}: model_args must be a mapping, got {type(args).__name__}")
    name = args.get("name")
    if name not in MODELS:
        raise TrainingError(f"{where}: model_args.name must be one of {', '.join(MODELS)}, got {name!r}")
    clean: dict[str, Any] = {"name": name, "num_classes": _int_in(args, "num_classes", 1, MAX_CLASSES, where)}
    allowed = {"name", "num_classes"}
    if name == "smallcnn":
        allowed |= {"width", "dropout"}
        if "width" in args:
            clean["width"] = _int_in(args, "width", 1, MAX_WIDTH, where)
        if "dropout" in args:
            dropout = args["dropout"]
            if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
                raise TrainingError(f"{where}: model_args.dropout must be a number in [0, 1), got {dropout!r}")
            clean["dropout"] = float(dropout)
    unknown = sorted(set(args) - allowed)
    if unknown:
        raise TrainingError(f"{where}: model_args has unknown key(s) {', '.join(map(repr, unknown))} for a {name}")
    return clean


def check_tensors(state: dict[str, torch.Tensor], where: str, finite: bool) -> bool:
    """Every tensor dense, with data, and real: a sparse, a ``meta`` (no data) or a complex tensor passes
    ``weights_only`` but is a RuntimeError listing every parameter inside ``load_state_dict``. Returns whether every
    weight is finite; with ``finite`` a NaN or infinite one is refused (a diverged run cannot start or teach one)."""
    for k, v in state.items():
        kind = ("sparse" if v.layout != torch.strided else "a meta tensor (no data)" if v.device.type == "meta"
                else f"of dtype {str(v.dtype).removeprefix('torch.')}" if v.is_complex() or v.dtype == torch.bool
                else None)
        if kind is not None:
            raise TrainingError(f"{where}: tensor {k!r} is {kind}; a state dict holds dense real tensors")
    bad = next((k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())), None)
    if bad is not None and finite:
        raise TrainingError(f"{where}: tensor {bad!r} holds NaN or infinite values (the run it comes from diverged); "
                            "these weights cannot start or teach a model")
    return bad is None


def _check_shapes(model_args: dict[str, Any], state: dict[str, torch.Tensor], where: str) -> None:
    from augexpand.train.models import build_model

    args = dict(model_args)
    with torch.device("meta"):  # shapes only: nothing is allocated
        own = build_model(args.pop("name"), **args).state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        detail = f"missing {missing[0]!r}" if missing else f"unexpected {unexpected[0]!r}"
        raise TrainingError(f"{where}: the weights do not fit its model_args ({detail})")
    for k, v in own.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise TrainingError(f"{where}: tensor {k!r} has shape {tuple(state[k].shape)}, "
                                f"its model_args give {tuple(v.shape)}")
        if v.is_floating_point() and not state[k].is_floating_point():  # integer weights
            raise TrainingError(f"{where}: tensor {k!r} is {str(state[k].dtype).removeprefix('torch.')}, "
                                f"its model_args give {str(v.dtype).removeprefix('torch.')}")


def load_checkpoint(path: Path, finite: bool = False) -> dict[str, Any]:
    """A checkpoint written by ``train`` (a run folder means its ``best.pt``), checked before anything is built.

    Checks: a mapping with ``model`` (tensors), ``model_args`` (see :func:`validate_model_args`), ``classes``
    (as many distinct names as the head has outputs), ``size`` (8-1024), and tensor shapes and kinds that fit the
    model. NaN or infinite weights (a diverged run's) are refused with ``finite`` (--init, --teacher), else a warning.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "best.pt"
    if not path.exists():
        raise TrainingError(f"no checkpoint at {path}; is {path.parent} a training run (augexpand train --out)?")
    ckpt = read_torch_file(path)
    if not isinstance(ckpt, dict) or not {"model", "model_args", "classes"} <= set(ckpt):
        raise TrainingError(f"{path} is not an augexpand training checkpoint (no model_args/classes)")
    where = f"checkpoint {path}"
    args = validate_model_args(ckpt["model_args"], where)
    classes = ckpt["classes"]
    if (not isinstance(classes, list) or not all(isinstance(c, str) for c in classes)
            or len(set(classes)) != len(classes) or len(classes) != args["num_classes"]):
        raise TrainingError(f"{where}: classes must be {args['num_classes']} distinct names (model_args.num_classes)")
    bad = next((c for c in classes if not 0 < len(c) <= 255 or "/" in c or "\0" in c or c in (".", "..")), None)
    if bad is not None:  # a class is a folder name: a 100,000-character one made every message that lists them
        raise TrainingError(f"{where}: class {bad[:40]!r}{'...' if len(bad) > 40 else ''} is not a folder name "
                            "(1-255 characters, no '/')")
    size = ckpt.get("size")
    if isinstance(size, bool) or not isinstance(size, int) or not _SIZE_RANGE[0] <= size <= _SIZE_RANGE[1]:
        raise TrainingError(f"{where}: size must be an integer in [{_SIZE_RANGE[0]}, {_SIZE_RANGE[1]}], got {size!r}")
    state = ckpt["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise TrainingError(f"{where}: 'model' is not a state dict (parameter names to tensors)")
    if not check_tensors(state, where, finite):
        log.warning("%s holds NaN or infinite weights (its run diverged): its predictions mean nothing", path)
    _check_shapes(args, state, where)
    return {**ckpt, "model_args": args}


def model_from_checkpoint(ckpt: dict[str, Any]) -> nn.Module:
    """Rebuild the model a checkpoint (from :func:`load_checkpoint`) describes and load its weights."""
    from augexpand.train.models import build_model

    args = dict(ckpt["model_args"])
    model = build_model(args.pop("name"), **args)
    model.load_state_dict(ckpt["model"])
    model.input_size = int(ckpt.get("size", 0)) or None
    return model


def save_checkpoint(obj: dict, path: Path) -> None:
    """``torch.save`` to a temporary name, then an atomic rename: a reader never sees half a file."""
    path = Path(path)
    # a new file of a name no one can guess, never through a link: the fixed ".best.pt.tmp" was opened through a
    # link in its place, and the file the link led to overwritten with the checkpoint
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        with open(fd, "wb") as f:
            torch.save(obj, f)
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        # torch's zip writer reports what stopped a write (a full disk, Ctrl-C) as a RuntimeError of its own when
        # it closes ("unexpected pos"), with the real cause as its context: that cause is raised instead
        failed = exc.__context__ if isinstance(exc, RuntimeError) else exc
        if isinstance(failed, OSError):
            raise OSError(failed.errno, failed.strerror or str(failed), str(path)) from None
        if isinstance(failed, KeyboardInterrupt):  # Ctrl-C while saving: the run's own interrupt handling
            raise KeyboardInterrupt from None
        raise
