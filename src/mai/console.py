"""The console that progress and notes go to: stderr, so that stdout carries only a command's result."""

from rich.console import Console

console = Console(stderr=True)


def say(line: str) -> None:
    """One line as written: not wrapped at the console's width, no markup, no highlighting."""
    console.print(line, soft_wrap=True, markup=False, highlight=False)
