"""Wording shared by the library and the command line (the standard library only, so any module may import it)."""

from __future__ import annotations

__all__ = ["plural"]


def plural(n: int, word: str) -> str:
    """``1 split``, ``0 splits``, ``2 splits``."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"
