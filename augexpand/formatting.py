"""Wording and JSON shared by the library and the command line (the standard library only, so any module may
import it)."""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["json_text", "plural"]


def plural(n: int, word: str) -> str:
    """``1 split``, ``0 splits``, ``2 splits``."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def json_text(value: Any, indent: int | None = 2) -> str:
    """``value`` as strict JSON, a NaN or an infinity (the loss of a training that diverged) written as null: what
    --json prints and every JSON file train writes (summary.json, metrics.jsonl with ``indent=None``), so that jq,
    pandas or JSON.parse can read it (json.dumps would write NaN, which is not JSON)."""
    def finite(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: finite(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [finite(x) for x in v]
        return v

    return json.dumps(finite(value), indent=indent, allow_nan=False)
