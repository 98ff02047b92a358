"""Every `mai` command shown in the README and docs/ parses: its subcommand exists and takes the
arguments and options written there (parsed by the real command line, not run)."""

import shlex
from pathlib import Path

import pytest
import typer

from mai.cli import app

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def shown_commands(page: Path) -> list[tuple[int, str]]:
    """(line number, command) of each `mai ...` line in the page's fenced code blocks."""
    commands, fenced, pending = [], False, None
    for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        text = line.strip().removeprefix("$ ")
        if pending is not None:
            pending = (pending[0], pending[1] + " " + text.removesuffix("\\"))
        elif fenced and text.startswith("mai "):
            pending = (number, text.removesuffix("\\"))
        if pending is not None and not text.endswith("\\"):
            commands.append(pending)
            pending = None
    return commands


def parse(command: str) -> None:
    """Parse `command` as the `mai` command line would; a TyperException says why it does not parse.

    A shell line may start several commands in the background (`mai serve ... & mai serve ... &`):
    each is parsed.
    """
    words = shlex.split(command, comments=True)
    starts = [i + 1 for i, word in enumerate(words) if word == "&"]
    for start, end in zip([0, *starts], [*starts, len(words) + 1], strict=True):
        if words[start : end - 1]:
            parse_one(words[start + 1 : end - 1])  # without the leading `mai` and the trailing `&`


def parse_one(words: list[str]) -> None:
    command = typer.main.get_command(app)
    context = None
    while hasattr(command, "resolve_command") and words:  # a group: the first word names its subcommand
        context = command.context_class(command, info_name=command.name, parent=context)
        _, command, words = command.resolve_command(context, words)
    command.make_context(command.name, words, parent=context)


def test_the_pages_show_commands():
    assert all(page.is_file() for page in PAGES) and len(PAGES) > 5
    assert sum(len(shown_commands(page)) for page in PAGES) > 40


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_command_shown_parses(page):
    problems = []
    for number, command in shown_commands(page):
        try:
            parse(command)
        except typer.TyperException as e:
            problems.append(f"{page.name}:{number}: {command}\n    {e.format_message()}")
    assert not problems, "\n".join(problems)


def test_a_wrong_command_does_not_parse():
    wrong_ones = (
        "mai trian runs/demo",
        "mai train runs/demo --resmue",
        "mai eval runs/demo --limit many",
        "mai generate",
    )
    for wrong in (*wrong_ones, "mai serve runs/a & mai serve runs/b --prot 8001 &"):
        with pytest.raises(typer.TyperException):
            parse(wrong)
    parse("mai eval runs/demo --limit 5 -t arc_easy")  # `mai eval RUN` means `mai eval run RUN`
    parse("mai serve runs/a & mai serve runs/b --port 8001 &")
