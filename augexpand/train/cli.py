"""The ``train`` and ``evaluate`` commands. Only Click at import time: torch is imported inside the commands."""

from __future__ import annotations

import click

__all__ = ["train_command", "evaluate_command"]


@click.command()
def train_command() -> None:
    """Fine-tune a classifier on an expanded dataset (not built yet)."""
    raise click.ClickException("train is not built yet")


@click.command()
def evaluate_command() -> None:
    """Score a trained run on an ImageFolder (not built yet)."""
    raise click.ClickException("evaluate is not built yet")
