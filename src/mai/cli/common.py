"""What every `mai` subcommand shares: path arguments, config overrides, and writing its result to stdout."""

import sys
from pathlib import Path
from typing import Annotated

import typer

Overrides = Annotated[
    list[str] | None, typer.Option("--set", help="Override a config key: section.key=value (repeatable).")
]


def path_value(text: str) -> Path:
    """A path from the command line; an empty one would silently mean the current folder."""
    if not text:
        raise typer.BadParameter("an empty path; name a file or folder ('.' for the current one)")
    return Path(text)


RunArg = Annotated[Path, typer.Argument(parser=path_value, help="Run directory, e.g. runs/demo.")]


def write(text: str) -> None:
    """A command's result, on stdout (progress and notes go to stderr)."""
    sys.stdout.write(text)
    sys.stdout.flush()
