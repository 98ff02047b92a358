"""eval.json, the record `mai eval` writes (run_files.EvalRecord): finding it for a path the user
named, and reading it checked, with a one-line error naming the file."""

import json
from pathlib import Path

from mai.errors import MaiError
from mai.run import validate_run_file
from mai.run_files import EvalRecord


def eval_file(path: Path) -> Path:
    """The eval.json that `path` names: the path itself, or the eval.json inside a directory."""
    if path.is_file():
        return path
    if not path.exists():
        raise MaiError(f"{path} does not exist; pass run directories or eval.json files")
    if (path / "eval.json").is_file():
        return path / "eval.json"
    if (path / "config.toml").is_file():
        raise MaiError(f"{path} has no eval.json yet; run `mai eval {path}` first")
    raise MaiError(f"{path} is neither a run directory nor an eval.json file")


def read_eval(path: Path) -> EvalRecord:
    """The record at `path` (an eval.json, or a directory holding one)."""
    file = eval_file(path)
    try:
        record, problem = validate_run_file(json.loads(file.read_text()), EvalRecord)
    except (OSError, ValueError) as e:
        record, problem = None, f"not readable as JSON: {e}"
    if record is not None:
        return record
    if (file.parent / "config.toml").is_file() and file.name == "eval.json":
        hint = f"rerun `mai eval {file.parent}` to rewrite it"
    else:
        hint = "expected an eval.json written by `mai eval`"
    raise MaiError(f"{file} is not an eval result ({problem}); {hint}")
