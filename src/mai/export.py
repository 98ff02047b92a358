"""`mai export hf` and `mai import hf`: a run directory to and from a transformers checkpoint directory.

Export writes config.json, model.safetensors and tokenizer files that AutoModelForCausalLM and
AutoTokenizer load. Import reads a transformers directory (config.json + *.safetensors) directly,
or a GGUF file through transformers (which dequantizes it), into a run directory whose
checkpoints/step_0000000 holds the weights.
"""

import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from mai.config import ModelConfig, RunConfig, validate_config
from mai.errors import MaiError
from mai.model import hf
from mai.model.transformer import build_model
from mai.run import (
    RunDir,
    atomic_write_json,
    atomic_write_text,
    load_model,
    make_directory,
    read_json,
    save_model_weights,
    save_safetensors,
    save_tokenizer,
    sha256_file,
)
from mai.tokenizer import CHAT_TEMPLATE, Tokenizer


def export_hf(run: RunDir, out: Path, dtype: str = "float32") -> Path:
    check_export_target(out)
    model, config, tokenizer = load_model(run)
    make_directory(out)
    torch_dtype = getattr(torch, dtype)
    state = {k: v.to(torch_dtype) for k, v in hf.to_hf(model.state_dict(), config.model).items()}
    save_safetensors(out / "model.safetensors", state, metadata={"format": "pt"})
    atomic_write_json(out / "config.json", hf.hf_config(config.model, tokenizer.bos_id, tokenizer.eos_id, dtype))
    generation = {"bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id}
    atomic_write_json(out / "generation_config.json", generation)
    save_tokenizer(tokenizer, out)
    return out


def check_export_target(out: Path) -> None:
    """An export writes only into a new or empty directory outside every run: whatever is there
    (a run's checkpoint, another model's config.json) would be overwritten."""
    for folder in (out, *out.resolve().parents):
        if RunDir(folder).config_path.is_file():
            raise MaiError(f"{out} is inside the run directory {folder}; export into a new directory outside it")
    if out.exists() and not out.is_dir():
        raise MaiError(f"{out} is a file; export into a new directory")
    if out.is_dir() and any(out.iterdir()):
        raise MaiError(f"{out} is not empty; export into a new or empty directory (delete the old export first)")


def import_hf(source: Path, run: RunDir) -> RunConfig:
    """Turn a transformers checkpoint directory or GGUF file into a new run directory."""
    if run.config_path.exists():
        raise MaiError(f"{run.path} already holds a run; import into a new directory")
    if run.path.exists() and not run.path.is_dir():
        raise MaiError(f"{run.path} is a file; import into a new directory")
    model, tokenizer = load_hf_dir(source)
    config = validate_config({"preset": f"import:{source.name}", "model": model.config.model_dump()})
    make_directory(run.path)
    save_tokenizer(tokenizer, run.path)
    run.write_config(config)
    checkpoint = run.checkpoint_dir(0)
    if checkpoint.exists():
        shutil.rmtree(checkpoint)
    checkpoint.mkdir(parents=True)
    meta = save_model_weights(checkpoint, model, config.model, sha256_file(run.tokenizer_path))
    atomic_write_json(checkpoint / "meta.json", meta | {"step": 0, "imported_from": str(source)})
    atomic_write_text(run.checkpoints_dir / "latest", checkpoint.name + "\n")
    return config


def load_hf_dir(source: Path):
    """A transformers checkpoint directory or GGUF file as our model (fp32, eval mode) and tokenizer."""
    if not source.exists():
        raise MaiError(f"{source} does not exist; pass a transformers checkpoint directory or a .gguf file")
    gguf = _find_gguf(source)
    hf_config, hf_state, tokenizer = _read_gguf(gguf) if gguf else _read_hf_dir(source)
    try:
        config = ModelConfig(**hf.config_from_hf(hf_config))
    except KeyError as e:
        raise MaiError(f"{source}: its config has no {e.args[0]!r}; is it a Llama-family checkpoint?") from None
    except ValueError as e:
        raise MaiError(f"{source}: cannot import ({e})") from None
    try:
        state = hf.from_hf(hf_state, config)
    except ValueError as e:
        raise MaiError(f"{source}: weights do not match its config ({e})") from None
    model = build_model(config)
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model.eval(), tokenizer


def load_pretrained(path: Path, device: str = "cpu"):
    """(model, tokenizer, run) from a run directory, a transformers checkpoint directory or a GGUF file.

    run is the RunDir for a run directory and None otherwise; `mai eval` and `mai serve` take all three.
    """
    if not path.exists():
        raise MaiError(
            f"{path} does not exist; pass a run directory, a transformers checkpoint directory or a .gguf file"
        )
    run = RunDir(path)
    if run.config_path.is_file():
        model, _, tokenizer = load_model(run, device)
        return model, tokenizer, run
    if path.is_dir() and not (path / "config.json").is_file() and not any(path.glob("*.gguf")):
        raise MaiError(
            f"{path} is neither a run directory (config.toml) nor a transformers checkpoint (config.json or .gguf)"
        )
    model, tokenizer = load_hf_dir(path)
    return model.to(device), tokenizer, None


def _find_gguf(source: Path) -> Path | None:
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


def _read_hf_dir(source: Path):
    config = read_json(source / "config.json")
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


def _read_gguf(path: Path):
    """Dequantize a GGUF file with transformers (needs the gguf package) into a config, weights and tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
        hf_tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    except Exception as e:  # a truncated or foreign file fails anywhere in the GGUF parser (struct.error, ...)
        raise MaiError(f"{path}: transformers cannot read this GGUF file ({type(e).__name__}: {e})") from None
    tokenizer = Tokenizer(
        hf_tokenizer.backend_tokenizer,
        hf_tokenizer.bos_token,
        hf_tokenizer.eos_token,
        hf_tokenizer.chat_template or CHAT_TEMPLATE,
    )
    return model.config.to_dict(), model.state_dict(), tokenizer
