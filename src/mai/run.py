"""The run directory: its paths, atomic writes, checksums, and loading a model and tokenizer from it.

This is the one module that knows the layout every stage shares (see DESIGN.md):

    runs/NAME/config.toml, data/manifest.json, data/shards/, data/work/, data/rejected/, tokenizer.json,
    checkpoints/step_N/ + checkpoints/latest, metrics.jsonl, samples.json, report.md, *.png
"""

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ValidationError

from mai.config import ModelConfig, RunConfig, config_to_toml, read_toml, validate_config
from mai.errors import MaiError


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


class FileShape(BaseModel):
    """The keys and types that mai reads from a JSON file it writes; the file may hold more."""

    remedy: ClassVar[str] = "delete it and rerun the stage that writes it"


class Shard(FileShape):
    split: str
    path: str
    sha256: str


class PipelineStep(FileShape):
    step: str
    documents_in: int
    documents_out: int
    chars_out: int | None
    reasons: dict[str, int]


class SourceTotals(FileShape):
    documents: int
    bytes: int
    train_tokens: int
    val_tokens: int


class TokenCounts(FileShape):
    train: int
    val: int


class BytesPerToken(FileShape):
    train: float
    val: float


class Manifest(FileShape):
    """data/manifest.json, written last by `mai data prepare`."""

    remedy: ClassVar[str] = "delete it and rerun `mai data prepare`"

    sources: dict[str, SourceTotals]
    mixture: dict[str, float]
    val_documents: list[str]
    dtype: Literal["uint16", "uint32"]
    tokenizer_sha256: str
    bytes_per_token: BytesPerToken
    tokens: TokenCounts
    shards: list[Shard]
    steps: list[PipelineStep]


class CheckpointMeta(FileShape):
    """checkpoints/step_N/meta.json; an imported checkpoint has no data position or training state."""

    remedy: ClassVar[str] = "restore it, or delete this checkpoint's folder to fall back to the checkpoint before it"

    model: dict[str, Any]
    model_sha256: str
    tokenizer_sha256: str | None
    step: int
    data: dict[str, int] | None = None
    train_state_sha256: str | None = None


class Sample(FileShape):
    prompt: str
    text: str


class Samples(FileShape):
    """samples.json, the report's completions of the config's prompts."""

    remedy: ClassVar[str] = "delete it; `mai run` writes it again"

    checkpoint: str
    temperature: float
    top_k: int
    samples: list[Sample]


def read_json(path: Path, shape: type[FileShape] | None = None) -> Any:
    """The JSON at `path`, checked against `shape` when given (a file edited or from another version)."""
    if not path.is_file():
        raise MaiError(f"{path} is missing; {shape.remedy if shape else 'rerun the stage that writes it'}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MaiError(f"{path} is corrupt ({e}); {(shape or FileShape).remedy}") from None
    problem = shape_problem(data, shape) if shape is not None else None
    if problem is not None:
        raise MaiError(f"{path} is not as mai writes it ({problem}); {shape.remedy}")
    return data


def shape_problem(data: Any, shape: type[FileShape]) -> str | None:
    """What keeps `data` from having `shape` (the first missing key or wrong type), or None."""
    if not isinstance(data, dict):
        return "not a JSON object"
    try:
        shape.model_validate(data, strict=True)
    except ValidationError as e:
        error = e.errors()[0]
        where = ".".join(map(str, error["loc"]))
        return f"missing key {where!r}" if error["type"] == "missing" else f"{where}: {error['msg']}"
    return None


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
    report_path = property(lambda self: self.path / "report.md")

    def require(self) -> "RunDir":
        if not self.config_path.is_file():
            if not self.path.exists():
                raise MaiError(
                    f"run directory {self.path} does not exist; create it with `mai init {self.path} --preset tiny`"
                )
            if (self.path / "config.json").is_file():
                raise MaiError(
                    f"{self.path} is a transformers checkpoint, not a run directory: `mai serve` and `mai eval` "
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

    def read_manifest(self) -> dict:
        if not self.manifest_path.is_file():
            raise MaiError(f"{self.path} has no prepared data; run `mai data prepare {self.path}`")
        return read_json(self.manifest_path, Manifest)

    def read_tokens(self, split: str) -> np.ndarray:
        """All token ids of a split, memory-mapped from its shards after checking each sha256."""
        manifest = self.read_manifest()
        arrays = []
        for shard in manifest["shards"]:
            if shard["split"] == split:
                path = self.data_dir / shard["path"]
                verify_sha256(path, shard["sha256"], f"rerun `mai data prepare {self.path}`, which rewrites it")
                arrays.append(np.memmap(path, dtype=manifest["dtype"], mode="r"))
        if not arrays:
            raise MaiError(f"{self.manifest_path} lists no {split} shards; rerun `mai data prepare {self.path}`")
        return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)

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


def load_tokenizer(run: RunDir, vocab_size: int | None = None):
    """The run's tokenizer; with vocab_size, ids beyond the model's embedding are an error."""
    from mai.tokenizer import Tokenizer

    if not run.tokenizer_path.is_file():
        raise MaiError(f"{run.path} has no tokenizer.json; run `mai data prepare {run.path}`")
    tokenizer = Tokenizer.load(run.tokenizer_path)
    if vocab_size is not None and tokenizer.vocab_size > vocab_size:
        raise MaiError(
            f"{run.tokenizer_path} has {tokenizer.vocab_size} tokens but the model has vocab_size {vocab_size}; "
            "use the tokenizer this model was trained with, or set model.vocab_size to match"
        )
    return tokenizer


def save_tokenizer(tokenizer, directory: Path) -> None:
    """Write tokenizer.json and tokenizer_config.json (BOS/EOS, chat template) into `directory`."""
    atomic_write_text(directory / "tokenizer.json", tokenizer.backend.to_str())
    atomic_write_json(directory / "tokenizer_config.json", tokenizer.hf_config())


def save_safetensors(path: Path, state: dict, metadata: dict[str, str] | None = None) -> None:
    """safetensors' save_file, renamed into place when complete and given the default mode
    (safetensors makes its files 0600)."""
    from safetensors.torch import save_file

    tmp = path.with_name(f".{path.name}.tmp")
    try:
        save_file(state, tmp, metadata=metadata)
        tmp.chmod(default_mode())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_model_weights(directory: Path, model, config: ModelConfig, tokenizer_sha256: str | None) -> dict:
    """Write model.safetensors into `directory`; return the metadata that load_model_weights checks."""
    path = directory / "model.safetensors"
    state = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
    save_safetensors(path, state)
    return {"model": config.model_dump(), "model_sha256": sha256_file(path), "tokenizer_sha256": tokenizer_sha256}


def load_model_weights(checkpoint: Path, model, config: ModelConfig) -> dict:
    """Load a checkpoint's weights into `model` after checking config and checksum; return its metadata."""
    from safetensors.torch import load_file

    meta = read_json(checkpoint / "meta.json", CheckpointMeta)
    if meta["model"] != config.model_dump():
        changed = sorted(k for k in meta["model"] if meta["model"][k] != config.model_dump().get(k))
        raise MaiError(
            f"{checkpoint} was trained with a different model config ({', '.join(changed)} differ); "
            "model settings cannot change once a run has checkpoints: restore them or start a new run directory"
        )
    path = checkpoint / "model.safetensors"
    verify_sha256(path, meta["model_sha256"], checkpoint_remedy(checkpoint))
    model.load_state_dict(load_file(path))
    return meta


def check_tokenizer_matches(run: RunDir, expected_sha256: str | None, user: str) -> None:
    """The run's tokenizer.json must be the one `user` (a model, or the shards) was made with."""
    if expected_sha256 and sha256_file(run.tokenizer_path) != expected_sha256:
        raise MaiError(
            f"{run.tokenizer_path} is not the tokenizer {user} (sha256 differs); "
            "restore the original tokenizer.json, or rerun from `mai data prepare` in a new run directory"
        )


def load_model(run: RunDir, device: str = "cpu"):
    """The latest checkpoint's model (eval mode), its run config and its tokenizer, checked against each other."""
    import torch  # here, not at the top: every data-pipeline worker imports this module, 1.5 s sooner without it

    from mai.model.transformer import Transformer

    config = run.read_config()
    checkpoint = run.latest_checkpoint()
    if checkpoint is None:
        raise MaiError(f"{run.path} has no checkpoint; train it with `mai train {run.path}`")
    tokenizer = load_tokenizer(run, config.model.vocab_size)
    with torch.device("meta"):
        model = Transformer(config.model)
    model.to_empty(device=device)
    model.init_weights()  # fills the non-persistent RoPE tables; the weights are replaced below
    meta = load_model_weights(checkpoint, model, config.model)
    check_tokenizer_matches(run, meta.get("tokenizer_sha256"), "this model was trained with")
    return model.eval(), config, tokenizer


def read_metrics(run: RunDir) -> list[dict]:
    """Every complete metrics.jsonl record; a line torn by a kill mid-write is skipped."""
    if not run.metrics_path.is_file():
        return []
    records = []
    for line in run.metrics_path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            records.append(record)
    return records


def append_metrics(run: RunDir, record: dict) -> None:
    with open(run.metrics_path, "a") as f:
        f.write(json.dumps(record) + "\n")


def truncate_metrics(run: RunDir, step: int) -> None:
    """Drop records logged after `step` by a run that died before its next checkpoint."""
    kept = [r for r in read_metrics(run) if r["step"] <= step]
    atomic_write_text(run.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))
