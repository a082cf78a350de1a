"""Command-line helpers shared by ``augexpand/cli.py`` and ``augexpand/train/cli.py`` (Click only, no logic).

Both command modules import from here, so neither imports the other's helpers (no import circle).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import click

from augexpand.formatting import json_text  # the --json output (NaN as null), shared with the files train writes

__all__ = ["CONTEXT", "EchoHandler", "Interrupted", "json_option", "json_text", "max_pixels_option", "printable",
           "printable_strings", "require_output_file", "require_path", "setup_logging"]

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class Interrupted(click.ClickException):
    """Ctrl-C: one ``Error:`` line saying what was kept, and exit status 130 (128 + SIGINT, what a shell reports and
    tune exits with) instead of Click's bare "Aborted!" (exit 1)."""

    exit_code = 130


def max_pixels_option(f):
    return click.option("--max-pixels", type=click.IntRange(min=1), default=89_478_485, show_default=True,
                        metavar="N", help="Skip (and name) any image whose header claims more pixels than this: a "
                        "decompression bomb is a tiny file that claims 30000x30000. The default is Pillow's "
                        "limit.")(f)


def json_option(f):
    """``--json``, worded the same in every command (warnings and progress still go to stderr)."""
    return click.option("--json", "as_json", is_flag=True, help="Print a machine-readable JSON summary on stdout.")(f)


class EchoHandler(logging.Handler):
    """Writes through click.echo to whatever stderr is now (so CliRunner captures it too)."""

    def emit(self, record: logging.LogRecord) -> None:
        level = {"INFO": "note"}.get(record.levelname, record.levelname.lower())
        click.echo(printable(f"{level}: {record.getMessage()}", one_line=True), err=True)


# Control characters a file or folder name may hold: on a terminal an escape sequence in a hostile name would
# retitle the window or clear the screen, a carriage return would overwrite the line, a newline split a message.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # all but tab and newline
_CONTROL_ONE_LINE = re.compile("[\x00-\x1f\x7f-\x9f]")


def printable(text: str, one_line: bool = False) -> str:
    """Text for the terminal: non-ASCII as is (like the manifest), a byte of a non-UTF-8 path as %XX (never a
    UnicodeEncodeError), a control character as %XX too (``one_line``: a newline and a tab as well)."""
    from augexpand.folder import display_name

    control = _CONTROL_ONE_LINE if one_line else _CONTROL
    return control.sub(lambda m: f"%{ord(m.group()):02X}", display_name(text))


def printable_strings(value: Any) -> Any:
    """``value`` (JSON-like: dicts, lists, strings, numbers) with every string ``printable(..., one_line=True)``."""
    if isinstance(value, str):
        return printable(value, one_line=True)
    if isinstance(value, dict):
        return {printable_strings(k): printable_strings(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [printable_strings(v) for v in value]
    return value


def setup_logging(quiet: bool) -> None:
    """Library messages (skipped files, notes) go to stderr, one line each: ``warning: skipped a.jpg: ...``."""
    logger = logging.getLogger("augexpand")
    if not any(isinstance(h, EchoHandler) for h in logger.handlers):
        logger.addHandler(EchoHandler())
        logger.propagate = False
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    # Pillow logs what it refuses in a header ('More samples per pixel than can be decoded: 256'), which Python
    # printed for want of a handler: the scan names the file once, in its own line
    pillow = logging.getLogger("PIL")
    if not pillow.handlers:
        pillow.addHandler(logging.NullHandler())


def require_path(path: Path | None, hint: str, folder: bool = True) -> None:
    """A missing (or, where a folder is needed, non-folder) path given on the command line is a usage error: exit 2."""
    if path is None:
        return
    if not path.exists():
        raise click.BadParameter(f"{path} does not exist", param_hint=hint)
    if folder and not path.is_dir():
        raise click.BadParameter(f"{path} is not a folder", param_hint=hint)


def require_output_file(path: Path | None, hint: str, suffixes: tuple[str, ...] = (), inside: Path | None = None,
                        what: str = "the source") -> None:
    """A file the command will write, checked before any work: a file name (not a folder) in an existing folder,
    ending in one of ``suffixes``, and never inside ``inside`` (images the command reads are never written to).
    A usage error (exit 2) otherwise."""
    if path is None:
        return
    if path.is_dir():
        raise click.BadParameter(f"{path} is a folder; give a file name", param_hint=hint)
    from augexpand.errors import DestinationError
    from augexpand.folder import refuse_special

    try:
        refuse_special(path)  # a device or a FIFO would be replaced by a regular file
    except DestinationError as exc:
        raise click.BadParameter(exc.message, param_hint=hint) from None
    if suffixes and path.suffix.lower() not in suffixes:
        expected = ", ".join(suffixes[:-1]) + f" or {suffixes[-1]}" if len(suffixes) > 1 else suffixes[0]
        raise click.BadParameter(f"the file name must end in {expected}, got {path.name!r}", param_hint=hint)
    parent = path.parent
    if not parent.is_dir():
        raise click.BadParameter(f"{parent} {'is not a folder' if parent.exists() else 'does not exist'}",
                                 param_hint=hint)
    if not os.access(parent, os.W_OK):
        raise click.BadParameter(f"cannot write into {parent} (no permission, or a read-only file system)",
                                 param_hint=hint)
    if inside is not None and Path(inside).resolve() in path.resolve().parents:
        raise click.BadParameter(f"{path} would be written inside {what} {inside}; its images are never written to",
                                 param_hint=hint)
