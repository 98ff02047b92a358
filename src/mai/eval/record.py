"""eval.json, the record `mai eval` writes: finding it for a path the user named, and reading it checked.

Every reader (compare, the report, the pipeline) indexes the record directly, so a file missing a key
or holding the wrong type fails here, in one line naming the file, instead of as a KeyError later.
"""

import json
from pathlib import Path

from mai.errors import MaiError

KEYS = ("checkpoint", "settings", "bpb", "tasks", "core")
SETTINGS = ("tasks", "limit", "precision")
TASK_NUMBERS = ("score", "baseline", "centered")


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
        problem = shape_problem(record)
    if problem is None:
        return record
    if (file.parent / "config.toml").is_file() and file.name == "eval.json":
        hint = f"rerun `mai eval {file.parent}` to rewrite it"
    else:
        hint = "expected an eval.json written by `mai eval`"
    raise MaiError(f"{file} is not an eval result ({problem}); {hint}")


def shape_problem(record) -> str | None:
    """What keeps `record` from being an eval record (a missing key, a wrong type), or None."""
    if not isinstance(record, dict):
        return "not a JSON object"
    missing = [key for key in KEYS if key not in record]
    if missing:
        return f"missing key {missing[0]!r}"
    if not isinstance(record["settings"], dict) or not isinstance(record["tasks"], dict):
        return "'settings' and 'tasks' must be objects"
    missing = [key for key in SETTINGS if key not in record["settings"]]
    if missing:
        return f"'settings' is missing key {missing[0]!r}"
    if record["core"] is not None and not _is_number(record["core"]):
        return "'core' is not a number"
    if record["bpb"] is not None and not (isinstance(record["bpb"], dict) and _is_number(record["bpb"].get("val_bpb"))):
        return "'bpb' has no number 'val_bpb'"
    for name, task in record["tasks"].items():
        if not isinstance(task, dict):
            return f"task {name!r} is not an object"
        if not isinstance(task.get("metric"), str):
            return f"task {name!r} has no 'metric' name"
        for key in TASK_NUMBERS:
            if not _is_number(task.get(key)):
                return f"task {name!r} has no number {key!r}"
    return None


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
