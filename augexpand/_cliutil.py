"""Command-line helpers shared by ``augexpand/cli.py`` and ``augexpand/train/cli.py`` (Click only, no logic).

Both command modules import from here, so neither imports the other's helpers (no import circle).
"""

from __future__ import annotations

import logging
from pathlib import Path

import click

__all__ = ["CONTEXT", "EchoHandler", "max_pixels_option", "printable", "require_path", "setup_logging"]

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def max_pixels_option(f):
    return click.option("--max-pixels", type=click.IntRange(min=1), default=89_478_485, show_default=True,
                        metavar="N", help="Skip (and name) any image whose header claims more pixels than this: a "
                        "decompression bomb is a tiny file that claims 30000x30000. The default is Pillow's "
                        "limit.")(f)


class EchoHandler(logging.Handler):
    """Writes through click.echo to whatever stderr is now (so CliRunner captures it too)."""

    def emit(self, record: logging.LogRecord) -> None:
        level = {"INFO": "note"}.get(record.levelname, record.levelname.lower())
        click.echo(printable(f"{level}: {record.getMessage()}"), err=True)


def printable(text: str) -> str:
    """Text for the terminal: non-ASCII as is (like the manifest), a byte of a non-UTF-8 path as %XX (never a
    UnicodeEncodeError)."""
    from augexpand.folder import display_name

    return display_name(text)


def setup_logging(quiet: bool) -> None:
    """Library messages (skipped files, notes) go to stderr, one line each: ``warning: skipped a.jpg: ...``."""
    logger = logging.getLogger("augexpand")
    if not any(isinstance(h, EchoHandler) for h in logger.handlers):
        logger.addHandler(EchoHandler())
        logger.propagate = False
    logger.setLevel(logging.WARNING if quiet else logging.INFO)


def require_path(path: Path | None, hint: str, folder: bool = True) -> None:
    """A missing (or, where a folder is needed, non-folder) path given on the command line is a usage error: exit 2."""
    if path is None:
        return
    if not path.exists():
        raise click.BadParameter(f"{path} does not exist", param_hint=hint)
    if folder and not path.is_dir():
        raise click.BadParameter(f"{path} is not a folder", param_hint=hint)
