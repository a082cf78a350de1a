"""The AugexpandError hierarchy: what the library raises, and what the CLI turns into one-line messages."""

from __future__ import annotations

__all__ = [
    "AugexpandError",
    "ConflictingOptionError",
    "DestinationError",
    "ExpandError",
    "ImageReadError",
    "RecipeError",
    "SourceError",
    "TrainingError",
    "TrainingInterrupted",
]


class AugexpandError(Exception):
    """Base of every error augexpand raises on purpose. The message (and its hint: what to do) is for the user."""

    hint: str | None = None

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if hint is not None:
            self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}; {self.hint}" if self.hint else self.message


class RecipeError(AugexpandError):
    """A recipe that cannot be used: YAML syntax, unknown transform, bad parameter or type."""


class SourceError(AugexpandError):
    """A source folder that cannot be used: missing, not an ImageFolder, no readable class."""


class DestinationError(AugexpandError):
    """A destination that must not be written: non-empty, overlapping the source, not ours to replace."""


class ImageReadError(AugexpandError):
    """One image file that cannot be decoded (zero bytes, truncated, not an image)."""


class TrainingError(AugexpandError):
    """A training or evaluation request that cannot be carried out (missing split, class mismatch, no GPU)."""


class ExpandError(AugexpandError):
    """Some planned images could not be made (the first failing row is named)."""


class ConflictingOptionError(TrainingError):
    """An option given on the command line that the file another option names contradicts (``--width 16`` with an
    ``--init`` run of width 8): a usage error, which the command line reports with exit status 2."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during a training: still a KeyboardInterrupt (whoever stops on one, as tune does, still does), with a
    message saying at which step and what was kept (``last.pt``, for ``--resume``). The command line prints it as
    one ``Error:`` line, exit status 130."""
