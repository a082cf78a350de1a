"""The augexpand command line: a thin Click layer over the library. Errors become one-line messages."""

from __future__ import annotations

import sys

import click

from augexpand import __version__
from augexpand.errors import AugexpandError

__all__ = ["cli", "main"]

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class _Group(click.Group):
    """A Click group that turns our domain errors into one-line ``Error: ...`` messages (exit 1)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except AugexpandError as exc:
            message = str(exc) + (f"; {exc.hint}" if exc.hint else "")
            raise click.ClickException(message) from None


@click.group(cls=_Group, context_settings=CONTEXT)
@click.version_option(__version__, "-V", "--version", prog_name="augexpand")
def cli() -> None:
    """Expand a small labelled ImageFolder into a larger one on disk, and fine-tune a CNN on it.

    \b
    Example:
      augexpand expand --recipe heavy --example dst/     # try it on the built-in photos
      augexpand expand --recipe heavy.yaml src/ dst/     # your own ImageFolder
      augexpand train dst/ --out runs/exp1
      augexpand evaluate runs/exp1 test/
    """


def _register_train_commands() -> None:
    from augexpand.train.cli import evaluate_command, train_command

    cli.add_command(train_command, "train")
    cli.add_command(evaluate_command, "evaluate")


_register_train_commands()


def main() -> None:
    cli(prog_name="augexpand")


if __name__ == "__main__":
    sys.exit(main())
