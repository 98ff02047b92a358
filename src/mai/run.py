"""The run directory: its paths, atomic writes, checksums, and reading and writing its typed files.

This is the one module that knows the layout every stage shares (see docs/run-directory.md):

    runs/NAME/config.toml, data/manifest.json, data/shards/, data/work/, data/rejected/, tokenizer.json,
    checkpoints/step_N/ + checkpoints/latest, metrics.jsonl, samples.json, eval.json, report.md, *.png

The JSON files' models are in run_files.py; loading a model and tokenizer is in loading.py.
"""

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from pydantic import ValidationError

from mai.config import RunConfig, config_to_toml, read_toml, validate_config
from mai.errors import MaiError
from mai.run_files import CheckpointMeta, Manifest, MetricsRecord, RunFile


def default_mode(directory: bool = False) -> int:
    """The mode open() or mkdir() gives a new file or directory under the process's umask.

    tempfile makes its files 0600 and directories 0700; what we rename into place gets this mode
    instead, so that a run or an export can be read by whoever could read an ordinary file there.
    """
    umask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, fsync, then rename: a kill never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, default_mode())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str, remedy: str | None = None) -> None:
    """Raise unless `path` exists with this sha256; `remedy` says what to do instead of rerunning its stage."""
    if not path.is_file():
        raise MaiError(f"{path} is missing; {remedy or 'rerun the stage that writes it'}")
    if sha256_file(path) != expected:
        raise MaiError(
            f"{path} is corrupt (sha256 mismatch); {remedy or 'delete it and rerun the stage that writes it'}"
        )


def checkpoint_remedy(checkpoint: Path) -> str:
    return f"delete {checkpoint} to fall back to the checkpoint before it"


def make_directory(path: Path) -> None:
    """mkdir -p, with a one-line error when a file stands where a directory must be."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        in_the_way = next(p for p in (path, *path.parents) if p.exists() and not p.is_dir())
        raise MaiError(f"{in_the_way} is a file, so {path} cannot be a directory; choose another path") from None


RunFileT = TypeVar("RunFileT", bound=RunFile)


def write_json(path: Path, record: RunFile) -> None:
    """Write a run file atomically."""
    atomic_write_text(path, record.model_dump_json(indent=2, by_alias=True) + "\n")


def read_json(path: Path, model: type[RunFileT]) -> RunFileT:
    """The run file at `path`, checked against its model (a file edited, or from another version)."""
    if not path.is_file():
        raise MaiError(f"{path} is missing; {model.remedy}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MaiError(f"{path} is corrupt ({e}); {model.remedy}") from None
    record, problem = validate_run_file(data, model)
    if problem is not None:
        raise MaiError(f"{path} is not as mai writes it ({problem}); {model.remedy}")
    return record


def validate_run_file(data: Any, model: type[RunFileT]) -> tuple[RunFileT | None, str | None]:
    """`data` as a `model`, or None and the first thing that keeps it from being one."""
    try:
        return model.model_validate(data, strict=True), None
    except ValidationError as e:
        item = e.errors()[0]
        where = ".".join(map(str, item["loc"]))
        if not where:
            return None, "not a JSON object"
        return None, f"missing key {where!r}" if item["type"] == "missing" else f"{where}: {item['msg']}"


class TokenShards:
    """Memory-mapped shards indexed as one array: a slice reads only the shards it spans. Whole-array
    operations need np.asarray(tokens), which reads them all."""

    def __init__(self, arrays: list[np.ndarray]):
        self.arrays = arrays
        self.starts = np.cumsum([0] + [len(a) for a in arrays])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, index: int | slice):
        if not isinstance(index, slice):
            position = index + len(self) if index < 0 else index
            shard = int(np.searchsorted(self.starts, position, side="right")) - 1
            return self.arrays[shard][position - self.starts[shard]]
        start, stop, step = index.indices(len(self))
        if step != 1:
            raise IndexError("TokenShards takes contiguous slices")
        pieces = []
        shard = int(np.searchsorted(self.starts, start, side="right")) - 1
        while start < stop:
            offset = start - self.starts[shard]
            piece = self.arrays[shard][offset : offset + stop - start]
            pieces.append(piece)
            start += len(piece)
            shard += 1
        return np.concatenate(pieces) if pieces else self.arrays[0][:0]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        whole = np.concatenate(self.arrays)
        return whole if dtype is None else whole.astype(dtype)


class RunDir:
    """Paths of one run directory and the checks made when reading it."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    config_path = property(lambda self: self.path / "config.toml")
    data_dir = property(lambda self: self.path / "data")
    shards_dir = property(lambda self: self.path / "data" / "shards")
    manifest_path = property(lambda self: self.path / "data" / "manifest.json")
    tokenizer_path = property(lambda self: self.path / "tokenizer.json")
    checkpoints_dir = property(lambda self: self.path / "checkpoints")
    metrics_path = property(lambda self: self.path / "metrics.jsonl")
    samples_path = property(lambda self: self.path / "samples.json")
    eval_path = property(lambda self: self.path / "eval.json")
    quant_eval_path = property(lambda self: self.path / "quant_eval.json")
    report_path = property(lambda self: self.path / "report.md")
    synth_dir = property(lambda self: self.path / "synth")
    sft_dir = property(lambda self: self.path / "sft")  # `mai sft`'s run directory, inside this one
    sft_path = property(lambda self: self.path / "sft.json")

    def require(self) -> "RunDir":
        if not self.config_path.is_file():
            if not self.path.exists():
                raise MaiError(
                    f"run directory {self.path} does not exist; create it with `mai init {self.path} --preset tiny`"
                )
            if (self.path / "config.json").is_file():
                raise MaiError(
                    f"{self.path} is a transformers checkpoint, not a run directory: `mai serve`, `mai eval`, "
                    "`mai generate` and `mai chat` "
                    f"take it as it is, and `mai import hf {self.path} RUN` makes a run directory of it"
                )
            raise MaiError(f"{self.path} is not a run directory (no config.toml); create one with `mai init`")
        return self

    def read_config(self) -> RunConfig:
        data = read_toml(self.require().config_path)
        if not data:  # every key has a default, so an emptied file would silently describe another model
            raise MaiError(f"{self.config_path} is empty; restore it, or `mai init` a new run directory")
        return validate_config(data)

    def write_config(self, config: RunConfig) -> None:
        atomic_write_text(self.config_path, config_to_toml(config))

    def read_manifest(self) -> Manifest:
        if not self.manifest_path.is_file():
            raise MaiError(f"{self.path} has no prepared data; run `mai data prepare {self.path}`")
        return read_json(self.manifest_path, Manifest)

    def read_tokens(self, split: str) -> "np.ndarray | TokenShards":
        """All token ids of a split, memory-mapped from its shards after checking each sha256.

        Several shards are read as one array without concatenating them (TokenShards): training
        reads only its windows, and under torchrun each rank only its own share of them."""
        manifest = self.read_manifest()
        arrays = []
        for shard in manifest.shards:
            if shard.split == split:
                path = self.data_dir / shard.path
                verify_sha256(path, shard.sha256, f"rerun `mai data prepare {self.path}`, which rewrites it")
                arrays.append(np.memmap(path, dtype=manifest.dtype, mode="r"))
        if not arrays:
            raise MaiError(f"{self.manifest_path} lists no {split} shards; rerun `mai data prepare {self.path}`")
        return arrays[0] if len(arrays) == 1 else TokenShards(arrays)

    def checkpoint_dir(self, step: int) -> Path:
        return self.checkpoints_dir / f"step_{step:07d}"

    def newest_complete_checkpoint(self) -> Path | None:
        saved = sorted(p for p in self.checkpoints_dir.glob("step_*") if (p / "meta.json").is_file())
        return saved[-1] if saved else None

    def latest_checkpoint(self) -> Path | None:
        """The checkpoint named by checkpoints/latest, or None when training has not saved one.

        Without `latest` the newest complete step_N is the latest: a crash can come between a
        checkpoint's rename into place and the pointer's update, and a run whose pointer was deleted
        must not be trained over from step 0. So it is when `latest` names a step_N that was deleted,
        which is what a corrupt checkpoint's error advises.
        """
        latest = self.checkpoints_dir / "latest"
        if not latest.is_file():
            return self.newest_complete_checkpoint()
        name = latest.read_bytes().decode("utf-8", errors="replace").strip()
        path = self.checkpoints_dir / name
        if re.fullmatch(r"step_\d+", name) and not path.exists():
            return self.newest_complete_checkpoint()
        if not name.startswith("step_") or "/" in name or not path.is_dir():
            raise MaiError(
                f"{latest} names {name!r}, not a checkpoint of this run; write the name of one of its "
                f"step_N folders into it, or move {self.checkpoints_dir} away to start over"
            )
        return path


def read_checkpoint_meta(checkpoint: Path) -> CheckpointMeta:
    return read_json(checkpoint / "meta.json", CheckpointMeta)


def read_metrics(run: RunDir) -> list[MetricsRecord]:
    """Every complete metrics.jsonl record; a line torn by a kill mid-write is skipped."""
    if not run.metrics_path.is_file():
        return []
    records = []
    for line in run.metrics_path.read_text(errors="replace").splitlines():
        try:
            records.append(MetricsRecord.model_validate_json(line, strict=True))
        except ValidationError:
            continue
    return records


def metrics_line(record: MetricsRecord) -> str:
    return record.model_dump_json() + "\n"


def append_metrics(run: RunDir, record: MetricsRecord) -> None:
    with open(run.metrics_path, "a") as f:
        f.write(metrics_line(record))


def truncate_metrics(run: RunDir, step: int) -> None:
    """Drop records logged after `step` by a run that died before its next checkpoint."""
    kept = [r for r in read_metrics(run) if r.step <= step]
    atomic_write_text(run.metrics_path, "".join(map(metrics_line, kept)))
