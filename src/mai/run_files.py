"""The JSON files of the run directory, one pydantic model each: the stage that writes a file builds
its model and the stages that read it get the model back, so both sides share one definition.

    data/manifest.json          Manifest       `mai data prepare`, written last
    checkpoints/step_N/meta.json CheckpointMeta `mai train`, `mai import hf`
    samples.json                Samples        `mai run`
    eval.json                   EvalRecord     `mai eval`
    quant_eval.json             QuantEval      `mai quant-eval`
    metrics.jsonl               MetricsRecord  `mai train`, one per logged step
    synth/responses.jsonl       SynthRecord    `mai synth`, one per teacher reply
    synth/summary.json          SynthSummary   `mai synth`

Reading checks types strictly (a "10" where a step
goes is an error, as an edit or another version of mai could leave it) and ignores keys it does not
know; `remedy` says what to do about a bad file.
"""

import base64
import hashlib
import json
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from mai.config import ModelConfig


def optional(**field) -> Any:
    """A field that may be absent: None, and left out of the file when it is."""
    return Field(None, exclude_if=lambda value: value is None, **field)


class RunFile(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    remedy: ClassVar[str] = "delete it and rerun the stage that writes it"


class Shard(RunFile):
    split: Literal["train", "val"]
    path: str = Field(description="Relative to data/.")
    tokens: int
    sha256: str


class PipelineStep(RunFile):
    """One reading or dropping step of the data pipeline (a row of `mai data stats`)."""

    step: str
    documents_in: int
    documents_out: int
    chars_out: int | None = None
    reasons: dict[str, int] = Field(description="The most frequent drop reasons and their counts.")


class SourceTotals(RunFile):
    documents: int
    bytes: int
    train_tokens: int
    val_tokens: int


class Splits(RunFile):
    train: int
    val: int


class SplitRatios(RunFile):
    train: float
    val: float


class Manifest(RunFile):
    """data/manifest.json: complete, checksummed data; written last by `mai data prepare`."""

    remedy: ClassVar[str] = "delete it and rerun `mai data prepare`"

    sources: dict[str, SourceTotals]
    mixture: dict[str, float]
    val_documents: list[str]
    dtype: Literal["uint16", "uint32"]
    vocab_size: int
    tokenizer_sha256: str
    bytes_per_token: SplitRatios
    tokens: Splits
    shards: list[Shard]
    steps: list[PipelineStep]
    pipeline: dict[str, Any] = Field(description="The [data] settings the shards were made with.")
    seconds: float


class DataPosition(RunFile):
    """Where training's window sampler stands: epoch and index into its shuffled order."""

    epoch: int
    index: int


class CheckpointMeta(RunFile):
    """checkpoints/step_N/meta.json; an imported checkpoint has no data position or training state."""

    remedy: ClassVar[str] = "restore it, or delete this checkpoint's folder to fall back to the checkpoint before it"

    model: ModelConfig
    model_sha256: str | None = optional(description="sha256 of model.safetensors; a sharded checkpoint has none.")
    sharded: dict[str, str] | None = optional(
        description="A distributed checkpoint's files under sharded/ (torch.distributed.checkpoint), with their sha256."
    )
    tokenizer_sha256: str | None = None
    step: int
    data: DataPosition | None = optional()
    train_state_sha256: str | None = optional()
    imported_from: str | None = optional()

    @property
    def weights_sha256(self) -> str:
        """What identifies these weights: model.safetensors' sha256, or for a sharded checkpoint a hash of its files'."""
        if self.model_sha256 is not None:
            return self.model_sha256
        return hashlib.sha256(json.dumps(sorted(self.sharded.items())).encode()).hexdigest()


class Sample(RunFile):
    prompt: str
    text: str = Field(description="The prompt and its completion.")


class QuantEvalRow(RunFile):
    """One precision's cost in quality and what it buys: ours ("mai") or a GGUF file run by llama.cpp."""

    name: str
    runtime: Literal["mai", "llama.cpp"]
    bpb: float
    kl: float = Field(description="mean KL divergence (nats) of next-token distributions from mai's fp32")
    weights_bytes: int = Field(description="bytes of weights in memory")
    disk_bytes: int | None = optional(description="size of the file on disk")
    tokens_per_s: float | None = optional(description="greedy decoding at batch 1")


class QuantEval(RunFile):
    """quant_eval.json: each precision's held-out bits per byte, KL from fp32, size and speed."""

    remedy: ClassVar[str] = "delete it; `mai quant-eval` writes it again"

    checkpoint: str
    tokens: int
    decode_tokens: int
    rows: list[QuantEvalRow]
    created: str


class Samples(RunFile):
    """samples.json: the report's completions of the config's prompts."""

    remedy: ClassVar[str] = "delete it; `mai run` writes it again"

    checkpoint: str
    temperature: float
    top_k: int
    samples: list[Sample]


class EvalSettings(RunFile):
    tasks: list[str]
    limit: int | None = None
    precision: Literal["fp32", "bf16", "int8", "int4"]
    device: str | None = None


class BpbResult(RunFile):
    val_bpb: float
    val_loss: float | None = None
    tokens: int | None = None
    bytes: int | None = None
    seconds: float | None = None


class TaskResult(RunFile):
    """One task's summary; `score` is its `metric`, and the metrics of its kind are there too."""

    metric: str
    score: float
    baseline: float
    centered: float = Field(description="(score − baseline) / (1 − baseline): 0 at chance, 1 perfect.")
    kind: str | None = None
    source: str | None = None
    examples: int | None = None
    acc: float | None = optional()
    acc_norm: float | None = optional()
    exact_match: float | None = optional()
    pass_at_1: float | None = optional(alias="pass@1")
    sandbox: str | None = optional(description="code tasks: the sandbox's isolation layers")
    seconds: float | None = None
    examples_per_s: float | None = None


class EvalRecord(RunFile):
    """eval.json, written by `mai eval` beside the model it scored (the keys its readers need come first)."""

    remedy: ClassVar[str] = "rerun `mai eval` to rewrite it"

    checkpoint: str = Field(description="The checkpoint's folder name, or 'imported' for a model directory.")
    settings: EvalSettings
    bpb: BpbResult | None = None
    tasks: dict[str, TaskResult]
    core: float | None = None
    model: str | None = Field(None, description="The path evaluated.")
    model_sha256: str | None = None
    created: str | None = None


class MetricsRecord(RunFile):
    """One line of metrics.jsonl: a logged training step, with validation figures when it measured them."""

    step: int
    loss: float | None = optional()
    lr: float | None = optional()
    grad_norm: float | None = optional()
    tokens: int | None = optional()
    tokens_per_s: float | None = optional()
    flops_per_s: float | None = optional()
    val_loss: float | None = optional()
    val_bpb: float | None = optional()


class SftAnswers(RunFile):
    """Greedy answers to the held-out prompts, and the share that ended with an end-of-turn token."""

    texts: list[str]
    end_of_turn_rate: float


class SftExchange(RunFile):
    prompt: str = Field(description="The held-out conversation's last message before the answer.")
    before: str = Field(description="The base model's answer.")
    after: str = Field(description="The fine-tuned model's answer.")


class SftRecord(RunFile):
    """sft.json in RUN/sft/: what fine-tuning on conversations changed, on held-out conversations."""

    remedy: ClassVar[str] = "delete it; `mai sft --resume` writes it again"

    base: str = Field(description="The model fine-tuned: a run, transformers directory or .gguf file.")
    checkpoint: str
    base_val_loss: float = Field(description="Held-out loss per assistant token of the base model.")
    val_loss: float = Field(description="Held-out loss per assistant token after fine-tuning.")
    before: SftAnswers
    after: SftAnswers
    exchanges: list[SftExchange]


class SynthRecord(RunFile):
    """One teacher reply (a line of synth/responses.jsonl; samples.jsonl adds `text`, rejected.jsonl `reason`)."""

    remedy: ClassVar[str] = "delete the line and rerun `mai synth`, which asks for that sample again"

    id: str = Field(description="Hash of the seed fields, prompt, teacher and sampling settings.")
    index: int = Field(description="Position in the plan.")
    seed: dict[str, str | int] = Field(description="topic, audience, format, difficulty, replica.")
    messages: list[dict[str, str]]
    teacher: str
    params: dict[str, Any] = Field(description="Every sampling setting of the request, its seed included.")
    response: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    cost: float
    attempts: int
    seconds: float
    logprobs: dict[str, Any] | None = optional(description="Top-k log-probabilities in encode_logprobs' form.")
    text: str | None = optional(description="samples.jsonl: what the data pipeline reads.")
    reason: str | None = optional(description="rejected.jsonl: the gate that rejected it.")


class SynthSummary(RunFile):
    """synth/summary.json: what the last `mai synth` left."""

    planned: int
    done: int
    kept: int
    rejected: int
    tokens: int = Field(description="Prompt and completion tokens of every reply in the cache.")
    cost: float
    stopped_at_cap: bool


def encode_logprobs(entries: list, k: int) -> dict:
    """OpenAI's per-token logprobs (chosen token, then its top-k) in a compact form: the distinct
    token byte strings once (base64), and (T, k+1) arrays of indexes into them (uint32) and of
    log-probabilities (float16), each base64. Missing alternatives are -inf."""
    strings: dict[bytes, int] = {}
    ids = np.zeros((len(entries), k + 1), dtype=np.uint32)
    values = np.full((len(entries), k + 1), -np.inf, dtype=np.float16)

    def index(item) -> int:
        raw = bytes(item.bytes) if item.bytes is not None else item.token.encode()
        return strings.setdefault(raw, len(strings))

    for t, entry in enumerate(entries):
        row = [entry, *[alt for alt in entry.top_logprobs][:k]]
        for j, item in enumerate(row):
            ids[t, j], values[t, j] = index(item), item.logprob
    return {
        "k": k,
        "tokens": [base64.b64encode(s).decode() for s in strings],
        "ids": base64.b64encode(ids.tobytes()).decode(),
        "values": base64.b64encode(values.tobytes()).decode(),
    }


def decode_logprobs(record: dict) -> tuple[list[bytes], np.ndarray, np.ndarray]:
    """encode_logprobs' form back: (token byte strings, ids (T, k+1), log-probabilities (T, k+1) float32)."""
    k = record["k"]
    ids = np.frombuffer(base64.b64decode(record["ids"]), dtype=np.uint32).reshape(-1, k + 1)
    values = np.frombuffer(base64.b64decode(record["values"]), dtype=np.float16).reshape(-1, k + 1)
    return [base64.b64decode(s) for s in record["tokens"]], ids, values.astype(np.float32)
