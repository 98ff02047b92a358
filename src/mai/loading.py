"""Every way a model and its tokenizer come in and go out: a run directory's checkpoints, a
transformers checkpoint directory, a GGUF file.

A model is always built the same way: on the meta device, then the weights are assigned to it
(`load_state_dict(assign=True)`, no second copy in memory) and the RoPE tables computed. Weights are
checked before use: a run's checkpoint against its sha256 and the run's model config, a transformers
directory against its config.json key by key and shape by shape (model/hf.py).

torch, safetensors and gguf are imported inside the functions that need them: the data
pipeline's workers import the tokenizer functions here and start faster without them.
"""

import json
import os
from pathlib import Path

from mai.config import ModelConfig
from mai.errors import MaiError
from mai.precision import InferencePrecision, cast_for_decoding, weight_bits
from mai.run import RunDir, atomic_write_json, atomic_write_text, default_mode, read_checkpoint_meta, sha256_file
from mai.run_files import CheckpointMeta
from mai.tokenizer import Tokenizer


def load_tokenizer(run: RunDir, vocab_size: int | None = None) -> Tokenizer:
    """The run's tokenizer; with vocab_size, ids beyond the model's embedding are an error."""
    if not run.tokenizer_path.is_file():
        raise MaiError(f"{run.path} has no tokenizer.json; run `mai data prepare {run.path}`")
    tokenizer = Tokenizer.load(run.tokenizer_path)
    if vocab_size is not None and tokenizer.vocab_size > vocab_size:
        raise MaiError(
            f"{run.tokenizer_path} has {tokenizer.vocab_size} tokens but the model has vocab_size {vocab_size}; "
            "use the tokenizer this model was trained with, or set model.vocab_size to match"
        )
    return tokenizer


def save_tokenizer(tokenizer: Tokenizer, directory: Path) -> None:
    """Write tokenizer.json and tokenizer_config.json (BOS/EOS, chat template) into `directory`."""
    atomic_write_text(directory / "tokenizer.json", tokenizer.backend.to_str())
    atomic_write_json(directory / "tokenizer_config.json", tokenizer.hf_config())


def check_tokenizer_matches(run: RunDir, expected_sha256: str | None, user: str) -> None:
    """The run's tokenizer.json must be the one `user` (a model, or the shards) was made with."""
    if expected_sha256 and sha256_file(run.tokenizer_path) != expected_sha256:
        raise MaiError(
            f"{run.tokenizer_path} is not the tokenizer {user} (sha256 differs); "
            "restore the original tokenizer.json, or rerun from `mai data prepare` in a new run directory"
        )


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


def save_model_weights(directory: Path, model) -> str:
    """Write model.safetensors into `directory`; return its sha256, which the checkpoint's meta.json records."""
    path = directory / "model.safetensors"
    save_safetensors(path, {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()})
    return sha256_file(path)


def checkpoint_weights(checkpoint: Path, config: ModelConfig, device="cpu") -> tuple[dict, CheckpointMeta]:
    """A checkpoint's state dict, after checking its model config and checksum, and its metadata."""
    from safetensors.torch import load_file

    from mai.run import checkpoint_remedy, verify_sha256

    meta = read_checkpoint_meta(checkpoint)
    check_model_config(checkpoint, meta, config)
    if meta.sharded is not None:
        return consolidate_sharded(checkpoint, meta, config, device), meta
    path = checkpoint / "model.safetensors"
    verify_sha256(path, meta.model_sha256, checkpoint_remedy(checkpoint))
    return split_fused_projections(load_file(path, device=str(device)), config), meta


def check_model_config(checkpoint: Path, meta: CheckpointMeta, config: ModelConfig) -> None:
    """Refuse a checkpoint trained with another model config, naming the settings that differ."""
    if meta.model != config:
        saved, current = meta.model.model_dump(), config.model_dump()
        changed = sorted(k for k in saved if saved[k] != current[k])
        raise MaiError(
            f"{checkpoint} was trained with a different model config ({', '.join(changed)} differ); "
            "model settings cannot change once a run has checkpoints: restore them or start a new run directory"
        )


def verify_sharded(checkpoint: Path, meta: CheckpointMeta) -> None:
    """Check every file of a distributed checkpoint's sharded/ folder against meta.json."""
    from mai.run import checkpoint_remedy, verify_sha256

    for name, sha256 in meta.sharded.items():
        verify_sha256(checkpoint / "sharded" / name, sha256, checkpoint_remedy(checkpoint))


def consolidate_sharded(checkpoint: Path, meta: CheckpointMeta, config: ModelConfig, device="cpu") -> dict:
    """The whole model's state dict from a distributed checkpoint, in this one process: the weights that
    `mai export`, `mai serve` and `mai eval` read, whatever layout wrote them."""
    import torch

    from mai.model.transformer import Transformer

    verify_sharded(checkpoint, meta)
    with torch.device("meta"):
        shapes = Transformer(config).state_dict()
    state = {name: torch.empty(t.shape, dtype=t.dtype, device=device) for name, t in shapes.items()}
    read_sharded({"model": state}, checkpoint)
    return state


def read_sharded(state: dict, checkpoint: Path) -> None:
    """Fill `state`'s tensors (whole, or this rank's shards) from the checkpoint's sharded/ folder."""
    import warnings

    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():  # one process reading is the point here, not a misconfiguration
        warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
        dcp.load(state, checkpoint_id=checkpoint / "sharded", no_dist=not dist.is_initialized())


def split_fused_projections(state: dict, config: ModelConfig) -> dict:
    """The state dict with a checkpoint's fused wqkv and w13 (mai before 2026-12) as separate
    wq/wk/wv and w1/w3, so that runs trained then still load; a current state dict is returned as is."""
    sizes = [config.n_heads * config.head_dim, config.kv_heads * config.head_dim, config.kv_heads * config.head_dim]
    out = {}
    for key, tensor in state.items():
        if key.endswith("attention.wqkv.weight"):
            prefix = key.removesuffix("wqkv.weight")
            out |= {prefix + name: part for name, part in zip(("wq", "wk", "wv"), tensor.split(sizes), strict=True)}
        elif key.endswith("feed_forward.w13.weight"):
            prefix = key.removesuffix("w13.weight")
            out |= {prefix + name: part for name, part in zip(("w1", "w3"), tensor.chunk(2), strict=True)}
        else:
            out[key] = tensor
    return out


def model_from_state(config: ModelConfig, state: dict):
    """Our model holding `state`'s tensors (on their device, in their dtype), in eval mode."""
    import torch

    from mai.model.transformer import Transformer

    with torch.device("meta"):
        model = Transformer(config)
    model.load_state_dict(state, assign=True)
    model.init_rope_tables()
    return model.eval()


def load_run_model(run: RunDir, device="cpu"):
    """The latest checkpoint's model (eval mode), its run config and its tokenizer, checked against each other."""
    config = run.read_config()
    checkpoint = run.latest_checkpoint()
    if checkpoint is None:
        raise MaiError(f"{run.path} has no checkpoint; train it with `mai train {run.path}`")
    tokenizer = load_tokenizer(run, config.model.vocab_size)
    state, meta = checkpoint_weights(checkpoint, config.model, device)
    check_tokenizer_matches(run, meta.tokenizer_sha256, "this model was trained with")
    return model_from_state(config.model, state), config, tokenizer


def prepare_for_decoding(model, precision: InferencePrecision = "auto"):
    """The model as `mai generate` and `mai serve` decode with it, so that their greedy outputs agree:
    weights cast (bf16) or quantized (int8, int4), q/k/v and gate/up fused."""
    from mai.model.decode import fuse_for_decoding
    from mai.model.quantize import quantize_weights

    model = fuse_for_decoding(cast_for_decoding(model, precision))
    bits = weight_bits(precision)
    return quantize_weights(model, bits) if bits else model


def load_pretrained(path: Path, device="cpu"):
    """(model, tokenizer, run) from a run directory, a transformers checkpoint directory or a GGUF file.

    run is the RunDir for a run directory and None otherwise; `mai eval` and `mai serve` take all three.
    """
    if not path.exists():
        raise MaiError(
            f"{path} does not exist; pass a run directory, a transformers checkpoint directory or a .gguf file"
        )
    run = RunDir(path)
    if run.config_path.is_file():
        model, _, tokenizer = load_run_model(run, device)
        return model, tokenizer, run
    if path.is_dir() and not (path / "config.json").is_file() and not any(path.glob("*.gguf")):
        raise MaiError(
            f"{path} is neither a run directory (config.toml) nor a transformers checkpoint (config.json or .gguf)"
        )
    model, tokenizer = load_hf_model(path)
    return model.to(device), tokenizer, None


def load_hf_model(source: Path):
    """A transformers checkpoint directory or GGUF file as our model (fp32, eval mode) and tokenizer."""
    from mai.model import gguf as gguf_layout
    from mai.model import hf

    if not source.exists():
        raise MaiError(f"{source} does not exist; pass a transformers checkpoint directory or a .gguf file")
    gguf = find_gguf(source)
    try:
        if gguf:
            fields, state, tokenizer = read_gguf(gguf)
            config = ModelConfig(**gguf_layout.config_from_gguf(fields, set(state)))
        else:
            hf_config, state, tokenizer = read_hf_dir(source)
            config = ModelConfig(**hf.config_from_hf(hf_config))
    except KeyError as e:
        raise MaiError(f"{source}: its config has no {e.args[0]!r}; is it a Llama-family checkpoint?") from None
    except ValueError as e:
        raise MaiError(f"{source}: cannot import ({e})") from None
    try:
        state = gguf_layout.from_gguf(state, config) if gguf else hf.from_hf(state, config)
    except ValueError as e:
        raise MaiError(f"{source}: weights do not match its config ({e})") from None
    return model_from_state(config, {k: v.float() for k, v in state.items()}), tokenizer


def find_gguf(source: Path) -> Path | None:
    """The GGUF file `source` names or holds (None for a transformers directory)."""
    if source.is_file():
        if source.suffix != ".gguf":
            raise MaiError(
                f"{source} is a file but not .gguf; pass a transformers checkpoint directory or a .gguf file"
            )
        return source
    ggufs = sorted(source.glob("*.gguf"))
    if not ggufs and not (source / "config.json").is_file():
        raise MaiError(f"{source} has neither config.json nor a .gguf file")
    return ggufs[0] if ggufs and not (source / "config.json").is_file() else None


def read_hf_dir(source: Path):
    """config.json, the weights of every *.safetensors file and the tokenizer of a transformers directory."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        config = json.loads((source / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise MaiError(f"{source / 'config.json'} is not readable as JSON ({e})") from None
    if not isinstance(config, dict):
        raise MaiError(f"{source / 'config.json'} is not a JSON object; is it a transformers checkpoint?")
    files = sorted(source.glob("*.safetensors"))
    if not files:
        raise MaiError(f"{source} has no *.safetensors weights (PyTorch .bin files are not read, for safety)")
    state = {}
    for path in files:
        try:
            state |= load_file(path)
        except SafetensorError as e:
            raise MaiError(f"{path} is not a readable safetensors file ({e})") from None
    if not (source / "tokenizer.json").is_file():
        raise MaiError(f"{source} has no tokenizer.json")
    return config, state, Tokenizer.load(source / "tokenizer.json")


def read_gguf(path: Path):
    """A GGUF file's metadata (key → value), its tensors dequantized to fp32 (GGUF's names and layout)
    and its tokenizer, which splits text as llama.cpp does for the file's pre-tokenizer name."""
    import gguf
    import torch

    reader = gguf_reader(path)
    fields = gguf_fields(reader)
    try:
        tensors = {
            t.name: torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type).astype("float32"))
            for t in reader.tensors
        }
    except (NotImplementedError, ValueError) as e:
        raise MaiError(f"{path}: cannot read this GGUF file's tensors ({e})") from None
    return fields, tensors, gguf_tokenizer(path, fields)


def gguf_reader(path: Path):
    import gguf

    try:
        return gguf.GGUFReader(path)
    except Exception as e:  # a truncated or foreign file fails anywhere in the parser (struct.error, ValueError, ...)
        raise MaiError(f"{path}: cannot read this GGUF file ({type(e).__name__}: {e})") from None


def gguf_fields(reader) -> dict:
    """A GGUF file's metadata as plain values, key → value."""
    return {key: field.contents() for key, field in reader.fields.items()}


def gguf_tokenizer(path: Path, fields: dict) -> Tokenizer:
    """The tokenizer in a GGUF file's metadata (tokenizer.ggml.*): byte-level BPE only, as llama.cpp's gpt2 model."""
    from mai.tokenizer import GgufVocab

    if fields.get("tokenizer.ggml.model") != "gpt2":
        raise MaiError(
            f"{path}: its tokenizer is {fields.get('tokenizer.ggml.model')!r}; mai reads byte-level BPE ('gpt2') only"
        )
    vocab = GgufVocab(
        pre=fields.get("tokenizer.ggml.pre", "default"),
        tokens=fields["tokenizer.ggml.tokens"],
        types=fields["tokenizer.ggml.token_type"],
        merges=fields["tokenizer.ggml.merges"],
        add_bos=bool(fields.get("tokenizer.ggml.add_bos_token", False)),
        bos_id=fields.get("tokenizer.ggml.bos_token_id"),
        eos_id=fields.get("tokenizer.ggml.eos_token_id"),
        pad_id=fields.get("tokenizer.ggml.padding_token_id"),
        chat_template=fields.get("tokenizer.chat_template"),
    )
    return Tokenizer.from_gguf_vocab(vocab)


def tokenizer_from(path: Path) -> Tokenizer:
    """The tokenizer of a run directory, a transformers directory or a GGUF file (tokenizer.copy_from)."""
    if (path / "tokenizer.json").is_file():
        return Tokenizer.load(path / "tokenizer.json")
    gguf = find_gguf(path) if path.exists() else None
    if gguf is None:
        raise MaiError(
            f"tokenizer.copy_from: {path} has no tokenizer.json and is not a .gguf file",
            parameter="tokenizer.copy_from",
        )
    return gguf_tokenizer(gguf, gguf_fields(gguf_reader(gguf)))
