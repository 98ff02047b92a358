"""eval.json, the record `mai eval` writes: finding it for a path the user named, and reading it checked.

Every reader (compare, the report, the pipeline) indexes the record directly, so a file missing a key
or holding the wrong type fails here, in one line naming the file, instead of as a KeyError later.
"""

import json
from pathlib import Path

from mai.errors import MaiError
from mai.run import FileShape, shape_problem


class Settings(FileShape):
    tasks: list[str]
    limit: int | None
    precision: str


class Bpb(FileShape):
    val_bpb: float


class TaskResult(FileShape):
    metric: str
    score: float
    baseline: float
    centered: float


class EvalRecord(FileShape):
    checkpoint: str
    settings: Settings
    bpb: Bpb | None
    tasks: dict[str, TaskResult]
    core: float | None


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


def read_eval(path: Path) -> dict:
    """The record at `path` (an eval.json, or a directory holding one), with every key its readers use."""
    file = eval_file(path)
    try:
        record = json.loads(file.read_text())
    except (OSError, ValueError) as e:
        problem = f"not readable as JSON: {e}"
    else:
        problem = shape_problem(record, EvalRecord)
    if problem is None:
        return record
    if (file.parent / "config.toml").is_file() and file.name == "eval.json":
        hint = f"rerun `mai eval {file.parent}` to rewrite it"
    else:
        hint = "expected an eval.json written by `mai eval`"
    raise MaiError(f"{file} is not an eval result ({problem}); {hint}")
