"""`mai export hf` and `mai import hf`: a run directory to and from a transformers checkpoint directory.

Export writes config.json, model.safetensors and tokenizer files that AutoModelForCausalLM and
AutoTokenizer load. Import reads a transformers directory (config.json + *.safetensors), or a GGUF
file through transformers (which dequantizes it), into a run directory whose
checkpoints/step_0000000 holds the weights; the reading itself is loading.py's.
"""

import shutil
from pathlib import Path

import torch

from mai.config import RunConfig, validate_config
from mai.errors import MaiError
from mai.loading import load_hf_model, load_run_model, save_model_weights, save_safetensors, save_tokenizer
from mai.model import hf
from mai.run import RunDir, atomic_write_json, atomic_write_text, make_directory, sha256_file, write_json
from mai.run_files import CheckpointMeta


def export_hf(run: RunDir, out: Path, dtype: str = "float32") -> Path:
    check_export_target(out)
    model, config, tokenizer = load_run_model(run)
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
    model, tokenizer = load_hf_model(source)
    config = validate_config({"preset": f"import:{source.name}", "model": model.config.model_dump()})
    make_directory(run.path)
    save_tokenizer(tokenizer, run.path)
    run.write_config(config)
    checkpoint = run.checkpoint_dir(0)
    if checkpoint.exists():
        shutil.rmtree(checkpoint)
    checkpoint.mkdir(parents=True)
    meta = CheckpointMeta(
        model=config.model,
        model_sha256=save_model_weights(checkpoint, model),
        tokenizer_sha256=sha256_file(run.tokenizer_path),
        step=0,
        imported_from=str(source),
    )
    write_json(checkpoint / "meta.json", meta)
    atomic_write_text(run.checkpoints_dir / "latest", checkpoint.name + "\n")
    return config
