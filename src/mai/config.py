"""Typed configuration for every stage, TOML presets, and `key.sub=value` overrides.

A run is described by a preset (a TOML file in `mai/presets/`, or a path to one) plus overrides.
Every model forbids unknown keys, so a typo is an error that lists the valid keys, and the fully
resolved config is what the run directory stores as `config.toml`. Each field's description is
its documentation: `mai config show --explain` prints it with the field's type, default and bounds
(config_docs.py).

The data stage reads some of these settings; which of its steps a change redoes is declared on the
field (`redo(...)`): the pipeline by default for [data], the tokenizer for [tokenizer].
"""

import difflib
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.fields import FieldInfo

from mai.errors import MaiError
from mai.packages import CORPORA
from mai.precision import Precision

DataStep = Literal["pipeline", "tokenizer", "shards"]


def redo(step: DataStep | None) -> dict:
    """Field metadata: a change of this setting redoes the data stage from `step` on (None: nothing,
    the setting says only how and where tasks run)."""
    return {"redo": step}


def redone_step(field: FieldInfo, default: DataStep | None) -> DataStep | None:
    """The data step a change of `field` redoes from (see redo)."""
    extra = field.json_schema_extra
    return extra["redo"] if isinstance(extra, dict) and "redo" in extra else default


class Section(BaseModel):
    """A config table: unknown keys are errors, values must have their type, and nothing changes after parsing."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class ModelConfig(Section):
    """Shapes of a decoder-only Llama-family transformer.

    The upper bounds lie far beyond any published model; they keep a typo such as n_layers=1e9 from
    hanging `mai model info` or overflowing a tensor's size.
    """

    vocab_size: int = Field(
        4096,
        gt=0,
        le=2**22,
        description="Token vocabulary size; the tokenizer is trained to it.",
        json_schema_extra=redo("tokenizer"),
    )
    d_model: int = Field(256, gt=0, le=2**17, description="Residual stream width.")
    n_layers: int = Field(6, gt=0, le=4096, description="Number of transformer blocks.")
    n_heads: int = Field(4, gt=0, description="Query heads; head_dim = d_model / n_heads.")
    n_kv_heads: int | None = Field(
        None, gt=0, description="Key/value heads (grouped-query attention); default n_heads."
    )
    ffn_dim: int | None = Field(
        None, gt=0, le=2**20, description="SwiGLU hidden width; default 8/3·d_model rounded up to ffn_multiple_of."
    )
    ffn_multiple_of: int = Field(256, gt=0, le=2**20, description="Rounding for the derived ffn_dim.")
    max_seq_len: int = Field(256, gt=0, le=2**24, description="Longest sequence the RoPE tables and KV cache cover.")
    rope_theta: float = Field(10000.0, gt=0, description="RoPE base frequency.")
    norm_eps: float = Field(1e-5, gt=0, description="RMSNorm epsilon.")
    qk_norm: bool = Field(False, description="RMSNorm on queries and keys per head (as OLMo 2, Qwen 3).")
    tie_embeddings: bool = Field(True, description="Share the token embedding with the output head.")
    init_std: float = Field(0.02, gt=0, description="Std of the normal init of embeddings and input projections.")

    @model_validator(mode="after")
    def _check_heads(self) -> "ModelConfig":
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.n_heads % self.kv_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must be divisible by n_kv_heads ({self.kv_heads})")
        if self.head_dim % 2:
            raise ValueError(f"head_dim ({self.head_dim}) must be even for RoPE")
        return self

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def hidden_dim(self) -> int:
        if self.ffn_dim is not None:
            return self.ffn_dim
        m = self.ffn_multiple_of
        return m * ((8 * self.d_model // 3 + m - 1) // m)


SourceKind = Literal["corpus", "text", "html", "warc", "jsonl", "parquet", "synth"]
# A teacher's text has passed `mai synth`'s own gates; the web rules would misjudge exercises and dialogue.
QUALITY_BY_KIND = {
    "corpus": "none",
    "text": "web",
    "html": "web",
    "warc": "web",
    "jsonl": "web",
    "parquet": "web",
    "synth": "none",
}


class SourceConfig(Section):
    """One input of the data pipeline."""

    name: str = Field(description="Label of this source in the manifest, stats and rejected files.")
    kind: SourceKind = Field(
        "corpus",
        description=f"corpus: a built-in offline corpus named `name` ({', '.join(CORPORA)}); "
        "text/html: a directory of files; warc: WARC/WET files (gzip ok); jsonl/parquet: records with a text field; "
        "synth: the samples `mai synth` wrote (this run's synth/ folder, unless path names another).",
    )
    path: str | None = Field(None, description="File or directory to read (not for corpus; optional for synth).")
    glob: str | None = Field(None, description="Files to take under path, e.g. '**/*.py' (default: all).")
    text_key: str = Field("text", description="jsonl/parquet: the field holding the text.")
    quality: Literal["web", "code", "none"] | None = Field(
        None, description="Rules to apply: web (Gopher, C4, FineWeb), code, or none; default by kind (corpus: none)."
    )
    weight: float = Field(
        1.0,
        ge=0,
        description="Mixture weight: each document is repeated this many times on average.",
        json_schema_extra=redo("shards"),
    )
    max_mb: float | None = Field(None, gt=0, description="Cap on the raw text taken from a corpus, in MB.")

    @model_validator(mode="after")
    def _check_source(self) -> "SourceConfig":
        if self.kind == "corpus" and self.name not in CORPORA:
            raise ValueError(
                f"unknown data source {self.name!r}; choose from {', '.join(CORPORA)}, "
                "or give your own data a kind and a path"
            )
        if self.kind not in ("corpus", "synth") and not self.path:
            raise ValueError(f"source {self.name!r} of kind {self.kind} needs a path")
        return self

    @property
    def rules(self) -> str:
        return self.quality or QUALITY_BY_KIND[self.kind]


class DataConfig(Section):
    """The data pipeline: sources, filters, deduplication, decontamination, split and shards."""

    sources: list[SourceConfig] = Field(
        [SourceConfig(name="shakespeare")], description="Inputs; a bare name means a built-in corpus."
    )
    languages: list[str] = Field(["en"], description="Language codes kept (py3langid); code sources are exempt.")
    language_threshold: float = Field(0.65, ge=0, le=1, description="Minimum language-ID probability to keep.")
    pii: bool = Field(True, description="Replace e-mail addresses and IP addresses with <EMAIL> and <IP>.")
    exact_dedup: bool = Field(True, description="Drop documents whose normalised text repeats another's.")
    minhash_dedup: bool = Field(True, description="Drop near-duplicates: MinHash, 5-grams, 14 bands × 8 rows.")
    decontaminate: bool = Field(True, description="Drop documents sharing a 13-gram with a registered eval set.")
    val_fraction: float = Field(
        0.05,
        gt=0,
        lt=0.5,
        description="Fraction of documents held out for validation.",
        json_schema_extra=redo("shards"),
    )
    seed: int = Field(0, description="Seed of the document split and mixture sampling.")
    shard_tokens: int = Field(2**24, gt=0, description="Tokens per shard file.", json_schema_extra=redo("shards"))
    tasks: int = Field(4, gt=0, description="Pipeline tasks (input shards); outputs depend on this, not on workers.")
    workers: int = Field(
        2, ge=0, description="Tasks run at once on this machine (0: one per core).", json_schema_extra=redo(None)
    )
    executor: Literal["local", "slurm", "ray"] = Field(
        "local", description="datatrove executor to run tasks on.", json_schema_extra=redo(None)
    )
    executor_options: dict[str, str | int | float | bool] = Field(
        {},
        description="Extra keyword arguments of the executor, e.g. partition and time for slurm.",
        json_schema_extra=redo(None),
    )

    @model_validator(mode="before")
    @classmethod
    def _bare_source_names(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("sources"), list):
            data = dict(data, sources=[{"name": s} if isinstance(s, str) else s for s in data["sources"]])
        return data

    @model_validator(mode="after")
    def _check_source_names(self) -> "DataConfig":
        names = [s.name for s in self.sources]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(
                f"source name {', '.join(map(repr, repeated))} is used twice; each source needs its own name, "
                "which labels its stats, rejects and mixture weight"
            )
        return self


class TokenizerConfig(Section):
    """Byte-level BPE training."""

    sample_mb: float = Field(2.0, gt=0, description="Training text sampled for BPE merges, in MB.")
    copy_from: str | None = Field(
        None,
        description="Take this model's tokenizer instead of training one: a run directory, a transformers "
        "directory or a .gguf file (a teacher's, so that a student can be distilled from it).",
    )


class TrainConfig(Section):
    """Optimisation, schedule, logging and checkpoint cadence."""

    steps: int = Field(200, gt=0, description="Optimizer steps.")
    batch_size: int = Field(16, gt=0, description="Sequences per micro-batch.")
    seq_len: int = Field(256, gt=1, description="Tokens per training sequence (≤ model.max_seq_len).")
    grad_accum: int = Field(1, gt=0, description="Micro-batches per optimizer step.")
    lr: float = Field(3e-3, gt=0, description="Peak learning rate.")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Final learning rate as a fraction of the peak.")
    warmup_steps: int = Field(20, ge=0, description="Linear warmup steps.")
    schedule: Literal["cosine", "wsd"] = Field(
        "cosine", description="Decay after warmup: cosine or warmup-stable-decay."
    )
    decay_fraction: float = Field(0.2, gt=0, le=1, description="wsd only: final fraction of steps spent decaying.")
    weight_decay: float = Field(0.1, ge=0, description="AdamW weight decay on matrices (not norms or embeddings).")
    beta1: float = Field(0.9, ge=0, lt=1, description="AdamW's first-moment decay.")
    beta2: float = Field(0.95, ge=0, lt=1, description="AdamW's second-moment decay.")
    grad_clip: float = Field(1.0, ge=0, description="Max global gradient norm; 0 disables clipping.")
    loss_chunk: int = Field(
        0,
        ge=0,
        description="Tokens whose logits the loss computes at once, recomputed in the backward (0: all).",
    )
    seed: int = Field(1337, description="Seed of init, data order and sampling.")
    precision: Precision = Field(
        "auto", description="auto: bf16 autocast on CUDA or on CPUs with native bf16 matmul, else fp32."
    )
    compile: bool = Field(
        False, description="torch.compile model and loss (needs a C++ compiler on CPU; ~30 s to start)."
    )
    threads: int = Field(0, ge=0, description="CPU threads for torch; 0 keeps torch's default.")
    log_every: int = Field(10, gt=0, description="Steps between metrics.jsonl records.")
    eval_every: int = Field(100, gt=0, description="Steps between validation loss/bpb measurements.")
    eval_batches: int = Field(8, gt=0, description="Validation micro-batches per measurement.")
    checkpoint_every: int = Field(100, gt=0, description="Steps between checkpoints (the last step always saves).")
    keep_checkpoints: int = Field(2, gt=0, description="Most recent checkpoints kept on disk.")

    @model_validator(mode="after")
    def _check_warmup(self) -> "TrainConfig":
        if self.warmup_steps >= self.steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must be below steps ({self.steps})")
        return self


class SampleConfig(Section):
    """Samples written into the report at the end of a run."""

    prompts: list[str] = Field(["ROMEO:", "The king"], description="Prompts completed in the report.")
    max_new_tokens: int = Field(80, gt=0, description="Tokens generated per prompt.")
    temperature: float = Field(0.8, ge=0, description="Sampling temperature; 0 is greedy.")
    top_k: int = Field(50, ge=0, description="Sample among the k most likely tokens; 0 disables.")


SYNTH_TEMPLATES = {
    "textbook": (
        "Write a {difficulty} textbook section about {topic} for {audience}. Explain the key ideas clearly, "
        "with one worked example."
    ),
    "exercise": ("Write one {difficulty} exercise about {topic} for {audience}, then its complete worked solution."),
    "chat": "I am {audience}. Can you explain {topic} to me? Keep it {difficulty}.",
}


class SynthConfig(Section):
    """`mai synth`: a data set written by a teacher model behind any OpenAI-compatible endpoint.

    Prompts are the combinations topics × audiences × formats × difficulties (each format a
    template); a list may be inline or the path of a file with one item per line. A sample's id
    hashes its seed fields, template, teacher and every sampling setting, so changing any of them
    makes new samples instead of reusing cached ones.
    """

    base_url: str = Field("http://127.0.0.1:8000/v1", description="The teacher's OpenAI-compatible API.")
    model: str = Field("mai", description="The teacher's model name at that API.")
    api_key_env: str = Field(
        "OPENAI_API_KEY", description="Environment variable holding the API key (unset: none is sent)."
    )
    samples: int = Field(64, gt=0, description="Samples to generate (the prompt grid repeats with new seeds).")
    topics: list[str] | str = Field(
        ["photosynthesis", "the water cycle", "prime numbers", "gravity", "volcanoes", "the French Revolution"],
        description="Topics, or a file of them.",
    )
    audiences: list[str] | str = Field(
        ["a child", "a high-school student", "a university student"], description="Readers, or a file of them."
    )
    formats: list[str] = Field(list(SYNTH_TEMPLATES), description="Formats to write; each needs a template.")
    difficulties: list[str] | str = Field(["simple", "detailed"], description="Levels, or a file of them.")
    templates: dict[str, str] = Field(
        SYNTH_TEMPLATES, description="Prompt per format, with {topic}, {audience} and {difficulty}."
    )
    system_prompt: str = Field("", description="System message of every request (empty: none).")
    temperature: float = Field(0.8, ge=0, le=2, description="The teacher's sampling temperature.")
    top_p: float = Field(1.0, gt=0, le=1, description="The teacher's nucleus sampling.")
    max_tokens: int = Field(256, gt=0, description="Most tokens the teacher writes per sample.")
    seed: int = Field(0, description="Seed of the prompt order and of each request's sampling seed.")
    top_logprobs: int = Field(
        0, ge=0, le=20, description="Record this many log-probabilities per token (OpenAI allows 20), for distillation."
    )
    stream: bool = Field(False, description="Request server-sent events (a cut stream is retried).")
    concurrency: int = Field(8, gt=0, description="Requests in flight at once.")
    requests_per_minute: int = Field(0, ge=0, description="Request rate limit (0: none).")
    tokens_per_minute: int = Field(0, ge=0, description="Token rate limit, prompt plus completion (0: none).")
    timeout: float = Field(120.0, gt=0, description="Seconds before a request is abandoned and retried.")
    max_retries: int = Field(8, ge=0, description="Retries of a request (429, 5xx, timeouts, dropped connections).")
    retry_base_seconds: float = Field(1.0, gt=0, description="First backoff; it doubles per retry, with jitter.")
    max_total_tokens: int = Field(0, ge=0, description="Spending cap in tokens over the run's lifetime (0: none).")
    max_cost: float = Field(0.0, ge=0, description="Spending cap in money (0: none); needs the prices.")
    input_price_per_million: float = Field(0.0, ge=0, description="Price of a million prompt tokens.")
    output_price_per_million: float = Field(0.0, ge=0, description="Price of a million completion tokens.")
    min_words: int = Field(20, ge=0, description="Gate: fewer words than this is rejected as too_short.")
    max_repetition: float = Field(
        0.3, gt=0, le=1, description="Gate: share of repeated word 3-grams above this is rejected as repetitive."
    )
    near_duplicate: float = Field(
        0.8,
        gt=0,
        le=1,
        description="Gate: MinHash Jaccard with an earlier sample at or above this is a near_duplicate.",
    )
    decontaminate: bool = Field(True, description="Gate: a 13-gram shared with a registered eval set is rejected.")

    @model_validator(mode="after")
    def _check_templates(self) -> "SynthConfig":
        missing = [f for f in self.formats if f not in self.templates]
        if missing:
            raise ValueError(f"synth.formats {missing} have no template; add them to synth.templates")
        if self.max_cost and not (self.input_price_per_million or self.output_price_per_million):
            raise ValueError("synth.max_cost needs synth.input_price_per_million and output_price_per_million")
        return self


class DistillConfig(Section):
    """`mai distill`: train the run's model from a teacher's token distributions, mixed with cross-entropy.

    teacher is a run directory, a transformers directory or a .gguf file (run over the data once,
    its top-k cached; top_k = 0 runs it live on full logits), or "synth": the top-k
    log-probabilities `mai synth` recorded from an API teacher, trained on the synthetic samples.
    """

    teacher: str = Field("", description='Local teacher path, or "synth" for the API log-probabilities.')
    loss: Literal["forward_kl", "reverse_kl", "jsd"] = Field("forward_kl", description="Divergence to the teacher.")
    alpha: float = Field(0.9, ge=0, le=1, description="Weight of the divergence; 1 − alpha weighs cross-entropy.")
    temperature: float = Field(1.0, gt=0, description="Softens both distributions; the divergence is scaled by T².")
    jsd_beta: float = Field(0.5, gt=0, lt=1, description="jsd only: the mixture's teacher weight.")
    top_k: int = Field(20, ge=0, description="Teacher tokens kept per position in the cache (0: full logits, live).")


class SftConfig(Section):
    """`mai sft`: fine-tune a pretrained model on conversations into a chat model, in RUN/sft/.

    Conversations are JSONL lines in OpenAI's format, {"messages": [{"role": "system" | "user" |
    "assistant", "content": "..."}, ...]}; the loss is on the assistant's tokens alone (their text
    and end-of-turn token). The schedule, batch and cadence here replace [train]'s; the rest of
    [train] (precision, compile, seed, optimizer betas, weight decay, clipping) still applies.
    """

    init_from: str = Field(
        "", description="Model to fine-tune: a run, transformers directory or .gguf file (empty: this run's)."
    )
    data: list[str] = Field(
        [],
        description="Conversation JSONL files; 'synth' takes this run's `mai synth` samples, "
        "'shakespeare-dialogues' turns of speech from the plays (offline, for the demo).",
    )
    held_out: int = Field(32, gt=0, description="Conversations held out for the validation loss and answer checks.")
    packing: bool = Field(
        True, description="Pack conversations into each row, attending only within their own (false: one per row)."
    )
    steps: int = Field(100, gt=0, description="Optimizer steps.")
    batch_size: int = Field(8, gt=0, description="Rows per micro-batch.")
    seq_len: int = Field(0, ge=0, description="Tokens per row (0: train.seq_len); longer conversations are cut to it.")
    lr: float = Field(3e-4, gt=0, description="Peak learning rate (fine-tuning wants less than pretraining).")
    warmup_steps: int = Field(10, ge=0, description="Linear warmup steps.")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="Final learning rate as a fraction of the peak.")
    eval_every: int = Field(50, gt=0, description="Steps between held-out loss measurements.")
    checkpoint_every: int = Field(50, gt=0, description="Steps between checkpoints (the last step always saves).")
    answer_tokens: int = Field(64, gt=0, description="Most tokens of each held-out answer, before and after.")

    @model_validator(mode="after")
    def _check_warmup(self) -> "SftConfig":
        if self.warmup_steps >= self.steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must be below steps ({self.steps})")
        return self

    def train_settings(self, train: TrainConfig) -> TrainConfig:
        """[train] with this section's schedule, batch and cadence."""
        mine = {
            "steps",
            "batch_size",
            "seq_len",
            "lr",
            "warmup_steps",
            "min_lr_ratio",
            "eval_every",
            "checkpoint_every",
        }
        settings = self.model_dump(include=mine) | {"seq_len": self.seq_len or train.seq_len}
        return TrainConfig(**train.model_dump(exclude=mine | {"grad_accum"}), **settings)


class ParallelConfig(Section):
    """How `mai train` spreads over processes under torchrun (train/parallel.py); one process ignores it.

    The processes form a mesh dp_replicate × dp_shard × tp. Tensor parallelism splits each block's
    attention heads and MLP columns over tp processes (keep it within a node); FSDP2 shards
    parameters, gradients and optimizer state over dp_shard, and dp_replicate copies that shard
    group (HSDP). Each data-parallel rank reads batch_size / (dp_replicate · dp_shard) of every
    micro-batch, so a step sees the same tokens at any layout. `mai plan` suggests these values.
    """

    dp_replicate: int = Field(1, gt=0, description="Data-parallel replicas of a shard group (HSDP); 1: plain FSDP.")
    dp_shard: int = Field(-1, ge=-1, description="FSDP2 shard degree; -1: every process tp and dp_replicate leave.")
    tp: int = Field(1, gt=0, description="Tensor-parallel degree (splits heads and MLP columns).")
    activation_checkpoint: Literal["none", "selective", "full"] = Field(
        "none",
        description="Recompute in the backward: full blocks, or selective (keep matmul and attention outputs).",
    )
    param_dtype: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="FSDP2's compute dtype of gathered parameters; auto follows train.precision."
    )
    reduce_dtype: Literal["fp32", "bf16"] = Field("fp32", description="dtype of FSDP2's gradient reductions.")
    timeout_s: int = Field(600, gt=0, description="Seconds a collective waits for a lost process before failing.")

    def shard_degree(self, world_size: int, what: str) -> int:
        """dp_shard for `world_size` processes (resolving -1); an error unless the mesh uses them all."""
        shard = self.dp_shard if self.dp_shard != -1 else world_size // (self.tp * self.dp_replicate)
        if self.dp_replicate * shard * self.tp != world_size:
            raise MaiError(
                f"parallel.dp_replicate × dp_shard × tp ({self.dp_replicate} × {shard} × {self.tp}) must equal the "
                f"{world_size} {what}; set parallel.dp_shard = -1 to use every one that tp and dp_replicate leave",
                parameter="parallel.dp_shard",
            )
        return shard


class RunConfig(Section):
    """Everything one run needs; saved fully resolved as the run's config.toml."""

    preset: str = Field("custom", description="Name of the preset this config started from.")
    model: ModelConfig = Field(ModelConfig(), description=ModelConfig.__doc__.splitlines()[0])
    data: DataConfig = Field(DataConfig(), description=DataConfig.__doc__)
    tokenizer: TokenizerConfig = Field(TokenizerConfig(), description=TokenizerConfig.__doc__)
    train: TrainConfig = Field(TrainConfig(), description=TrainConfig.__doc__)
    sample: SampleConfig = Field(SampleConfig(), description=SampleConfig.__doc__)
    synth: SynthConfig = Field(SynthConfig(), description=SynthConfig.__doc__.splitlines()[0])
    distill: DistillConfig = Field(DistillConfig(), description=DistillConfig.__doc__.splitlines()[0])
    sft: SftConfig = Field(SftConfig(), description=SftConfig.__doc__.splitlines()[0])
    parallel: ParallelConfig = Field(ParallelConfig(), description=ParallelConfig.__doc__.splitlines()[0])

    @model_validator(mode="after")
    def _check_seq_len(self) -> "RunConfig":
        if self.train.seq_len > self.model.max_seq_len:
            raise ValueError(
                f"train.seq_len ({self.train.seq_len}) exceeds model.max_seq_len ({self.model.max_seq_len})"
            )
        if self.sft.seq_len > self.model.max_seq_len:
            raise ValueError(f"sft.seq_len ({self.sft.seq_len}) exceeds model.max_seq_len ({self.model.max_seq_len})")
        return self


def preset_names() -> list[str]:
    return sorted(
        p.name.removesuffix(".toml") for p in resources.files("mai.presets").iterdir() if p.name.endswith(".toml")
    )


def load_config(preset: str, overrides: list[str] = ()) -> RunConfig:
    """Resolve a preset name or TOML path plus `a.b=value` overrides into a validated RunConfig."""
    data = _read_preset(preset)
    for override in overrides:
        _apply_override(data, override)
    return validate_config(data)


def apply_overrides(config: RunConfig, overrides: list[str]) -> RunConfig:
    data = config.model_dump(exclude_none=True)
    for override in overrides:
        _apply_override(data, override)
    return validate_config(data)


def validate_config(data: dict[str, Any]) -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise MaiError(_describe_validation_error(e)) from None


def config_to_toml(config: RunConfig) -> str:
    """The fully resolved config as TOML (None values are omitted: they mean 'derived')."""
    return tomli_w.dumps(config.model_dump(exclude_none=True))


def read_toml(path: Path) -> dict[str, Any]:
    """A TOML file, or a one-line error saying why it cannot be read as one."""
    if path.is_dir():
        raise MaiError(f"{path} is a directory, not a TOML file")
    if not path.is_file():
        raise MaiError(f"{path} does not exist")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise MaiError(f"{path} is not a TOML file (not UTF-8 text)") from None
    except tomllib.TOMLDecodeError as e:
        raise MaiError(f"{path}: invalid TOML: {e}") from None


def _read_preset(preset: str) -> dict[str, Any]:
    """A built-in preset by name (which wins over a same-named path), or a TOML file."""
    names = preset_names()
    if preset in names:
        data = tomllib.loads(resources.files("mai.presets").joinpath(f"{preset}.toml").read_text())
    elif Path(preset).suffix == ".toml" or Path(preset).exists():
        data = read_toml(Path(preset))
    else:
        raise MaiError(f"unknown preset {preset!r}; choose one of: {', '.join(names)} (or a path to a .toml file)")
    data.setdefault("preset", Path(preset).stem)
    return data


def _apply_override(data: dict[str, Any], override: str) -> None:
    key, sep, raw = override.partition("=")
    if not sep or not key.strip():
        raise MaiError(f"override {override!r} must look like section.key=value (e.g. model.n_layers=4)")
    parts = key.strip().split(".")
    _check_key_path(parts)
    node = data
    for i, part in enumerate(parts[:-1]):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise MaiError(f"config section {'.'.join(parts[: i + 1])!r} is {node!r}, not a table of keys")
    node[parts[-1]] = _parse_value(raw.strip())


def _check_key_path(parts: list[str]) -> None:
    """Reject unknown keys before validation so the message can list the valid ones."""
    model: type[BaseModel] = RunConfig
    for i, part in enumerate(parts):
        fields = model.model_fields
        if part not in fields:
            where = ".".join(parts[:i]) or "the top level"
            hint = difflib.get_close_matches(part, list(fields), n=1)
            guess = f" Did you mean {hint[0]!r}?" if hint else ""
            raise MaiError(f"unknown config key {'.'.join(parts)!r}: {where} has {', '.join(fields)}.{guess}")
        annotation = fields[part].annotation
        is_section = isinstance(annotation, type) and issubclass(annotation, BaseModel)
        if i < len(parts) - 1 and not is_section:
            raise MaiError(f"config key {'.'.join(parts[: i + 1])!r} is a value, not a section")
        if i == len(parts) - 1 and is_section:
            raise MaiError(
                f"config key {part!r} is a section; set one of its keys: {', '.join(annotation.model_fields)}"
            )
        if is_section:
            model = annotation


def _parse_value(raw: str) -> Any:
    """TOML literal if it parses (4, 3e-4, true, "x", [1, 2]), else the bare string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _describe_validation_error(error: ValidationError) -> str:
    problems = []
    for item in error.errors():
        location = ".".join(str(p) for p in item["loc"]) or "config"
        if item["type"] == "extra_forbidden":
            problems.append(f"unknown config key {location!r}{_valid_keys_hint(item['loc'])}")
        elif isinstance(item.get("input"), dict):  # a check across fields: the message says it all
            problems.append(f"{location}: {item['msg'].removeprefix('Value error, ')}")
        else:
            problems.append(f"{location}: {item['msg']} (got {item.get('input')!r})")
    return "invalid config: " + "; ".join(problems)


def _valid_keys_hint(loc: tuple) -> str:
    model: type[BaseModel] = RunConfig
    for part in loc[:-1]:
        annotation = model.model_fields[part].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return ""
        model = annotation
    return f"; valid keys: {', '.join(model.model_fields)}"
