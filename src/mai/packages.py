"""Data shipped inside installed PyPI packages (corpora, benchmarks), located without importing them."""

import importlib.util
from pathlib import Path

from mai.errors import MaiError


def package_dir(module: str, needed_by: str, install: str) -> Path:
    """Folder of the installed package `module`, or a MaiError saying what needs it and how to install it.

    find_spec finds it without importing it: some are heavy, and only their files are wanted.
    """
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MaiError(f"{needed_by} needs the {module} package; install it with `{install}`")
    return Path(next(iter(spec.submodule_search_locations)))
