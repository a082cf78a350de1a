"""The soft-label manifest (``metadata.jsonl``, one object per image) and the dataset card (``dataset.json``)."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from augexpand.folder import open_regular, write_atomic

__all__ = [
    "CARD_NAME",
    "METADATA_NAME",
    "TOOL",
    "RecordStore",
    "is_our_card",
    "read_card",
    "read_metadata",
    "write_card",
    "write_metadata",
]

CARD_NAME = "dataset.json"
METADATA_NAME = "metadata.jsonl"
TOOL = "augexpand"
FORMAT_VERSION = 1
CARD_BYTES = 1 << 30  # a card larger than this is not one of ours (a million skipped files take ~100 MB)


def write_metadata(path: Path, records: Iterable[dict[str, Any]]) -> int:
    """Write records as JSON lines, atomically, as a stream (one line in memory at a time). Returns how many
    were written."""
    written = 0

    def lines() -> Iterator[str]:
        nonlocal written
        for r in records:
            written += 1
            yield json.dumps(r, ensure_ascii=False, separators=(", ", ": ")) + "\n"

    write_atomic(path, lines(), sync=True)
    return written


def read_metadata(path: Path) -> list[dict[str, Any]]:
    """Read a metadata.jsonl file."""
    with open_regular(path) as f:
        return [json.loads(line.decode("utf-8")) for line in f if line.strip()]


def write_card(dst: Path, card: dict[str, Any]) -> None:
    """Write the dataset card, atomically, stamped with the tool and format version."""
    card = {"tool": TOOL, "format_version": FORMAT_VERSION, **card}
    write_atomic(dst / CARD_NAME, json.dumps(card, indent=2, ensure_ascii=False) + "\n", sync=True)


def read_card(dst: Path) -> dict[str, Any] | None:
    """The dataset card of an augexpand output folder, or None if there is none (or it is not ours)."""
    path = Path(dst) / CARD_NAME
    try:
        with open_regular(path) as f:
            # as much as the file holds (and one byte more, to see it grew): read(CARD_BYTES + 1) allocated 1 GB
            # up front for a card of kilobytes, a MemoryError under a memory limit of 1 GB
            text = f.read(min(os.fstat(f.fileno()).st_size, CARD_BYTES) + 1)
        if len(text) > CARD_BYTES:
            return None
        card = json.loads(text.decode("utf-8"))
    except (OSError, ValueError, RecursionError):  # RecursionError: thousands of nested brackets
        return None
    return card if is_our_card(card) else None


def is_our_card(card: Any) -> bool:
    """Whether a parsed dataset.json was written by augexpand."""
    classes = card.get("classes") if isinstance(card, dict) else None
    return (isinstance(card, dict) and card.get("tool") == TOOL and isinstance(classes, list)
            and all(isinstance(c, str) for c in classes))


class RecordStore:
    """The records of a run by row, each kept as its JSON text (~500 bytes, against ~2 kB as a dict: about 3 GB
    rather than 12 for the 6.5 million rows of a million sources with ``heavy``); a dict again when read."""

    def __init__(self, records: dict[int, dict[str, Any]] | None = None) -> None:
        self.text: dict[int, str] = {}
        self.splits: Counter = Counter()
        for row, r in (records or {}).items():
            self[row] = r

    def __setitem__(self, row: int, record: dict[str, Any]) -> None:
        old = self.text.get(row)
        if old is not None:
            self.splits[json.loads(old)["split"]] -= 1
        self.text[row] = json.dumps(record, ensure_ascii=False, separators=(",", ":"))
        self.splits[record["split"]] += 1

    def __getitem__(self, row: int) -> dict[str, Any]:
        return json.loads(self.text[row])

    def __len__(self) -> int:
        return len(self.text)

    def __iter__(self) -> Iterator[int]:
        return iter(self.text)

    def __contains__(self, row: object) -> bool:
        return row in self.text

    def count(self, split: str) -> int:
        return self.splits[split]

    def values(self) -> Iterator[dict[str, Any]]:
        return (json.loads(t) for t in self.text.values())

    def in_order(self) -> Iterator[dict[str, Any]]:
        """The records by row number."""
        return (json.loads(self.text[i]) for i in sorted(self.text))
