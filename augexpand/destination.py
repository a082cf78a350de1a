"""The destination folder: what may be written there, the run's state, and what a resumed run may keep.

``dst`` must not overlap the source; a non-empty ``dst`` is written only to resume or replace an earlier run of
ours. While a run is in progress ``dst/.augexpand`` holds ``run.json`` (the run's fingerprint) and the journal of
finished rows, so that ``--resume`` redoes nothing; the orchestration removes it when the card is written.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from augexpand import __version__
from augexpand.errors import DestinationError
from augexpand.folder import ScanResult
from augexpand.manifest import CARD_NAME, read_card
from augexpand.recipe import Recipe

__all__ = ["STATE_DIR", "check_paths", "fingerprint", "prepare_destination", "read_journal"]

STATE_DIR = ".augexpand"  # inside dst while a run is in progress: run.json and the journal


def _inside(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def check_paths(src: Path, dst: Path) -> None:
    if _inside(dst, src):
        raise DestinationError(f"destination {dst} is {'the source' if dst == src else 'inside the source'} {src}; "
                               f"the source is never written to")
    if _inside(src, dst):
        raise DestinationError(f"destination {dst} contains the source {src}; choose a folder outside it")


def _ours(dst: Path) -> bool:
    return read_card(dst) is not None or (dst / STATE_DIR / "run.json").is_file()


def prepare_destination(dst: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to write into a folder that is not empty, unless resuming or overwriting an earlier run of ours."""
    if dst.exists() and not dst.is_dir():
        raise DestinationError(f"destination {dst} exists and is not a folder")
    if not dst.exists() or not any(dst.iterdir()):
        return
    if resume:
        if not _ours(dst):
            raise DestinationError(f"cannot resume into {dst}: it was not written by augexpand "
                                   f"(no {CARD_NAME} or {STATE_DIR}/run.json of ours)")
        return
    if overwrite:
        if not _ours(dst):
            raise DestinationError(f"refusing to overwrite {dst}: it is not empty and was not written by augexpand "
                                   f"(no {CARD_NAME} of ours); nothing was deleted")
        for name in ("train", "val", CARD_NAME, STATE_DIR):
            path = dst / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
        return
    raise DestinationError(f"destination {dst} is not empty",
                           hint="use --resume to finish an earlier run there, or --overwrite to replace it")


def fingerprint(scan: ScanResult, recipe: Recipe, val_fraction: float) -> str:
    """What a resumed run must share with the interrupted one: recipe, split and the exact source files."""
    h = hashlib.sha256()
    h.update(json.dumps([__version__, recipe.resolved(), val_fraction], sort_keys=True, default=str).encode())
    for s in scan.sources:
        st = (scan.root / s.rel).stat()
        h.update(f"{s.rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))  # any bytes a name holds
    return h.hexdigest()[:32]


def read_journal(path: Path) -> dict[int, dict[str, Any]]:
    done: dict[int, dict[str, Any]] = {}
    if not path.exists():
        return done
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:  # the line an interruption cut short
                continue
            done[record["row"]] = record
    return done
