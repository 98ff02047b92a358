"""`mai export hf`, `mai export gguf` and `mai import hf`: a run directory to and from the formats other tools read.

`export hf` writes config.json, model.safetensors and tokenizer files that AutoModelForCausalLM and
AutoTokenizer load. `export gguf` writes one GGUF file that llama.cpp (and Ollama, LM Studio,
llama-cpp-python) runs: the architecture's hyperparameters, the tensors in llama.cpp's layout
(model/gguf.py) and dtype, the tokenizer with a pre-tokenizer llama.cpp knows by name, and the chat
template. Import reads a transformers directory (config.json + *.safetensors) or a GGUF file into a
run directory whose checkpoints/step_0000000 holds the weights; the reading itself is loading.py's.
"""

import ctypes
import os
import shutil
import tempfile
from pathlib import Path
from typing import Literal

import torch

from mai.config import RunConfig, validate_config
from mai.errors import MaiError
from mai.loading import load_hf_model, load_run_model, save_model_weights, save_safetensors, save_tokenizer
from mai.model import gguf as gguf_layout
from mai.model import hf
from mai.run import RunDir, atomic_write_json, atomic_write_text, default_mode, make_directory, sha256_file, write_json
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


GgufDtype = Literal["f16", "bf16", "q8_0", "q4_0", "q4_k_m"]
GGUF_BLOCK = 32  # q8_0 and q4_0 quantize rows in blocks of 32 values


def export_gguf(run: RunDir, out: Path, dtype: GgufDtype = "f16") -> Path:
    """Write the run's latest checkpoint as one GGUF file; q4_k_m is quantized by llama.cpp itself
    (llama-cpp-python's llama_model_quantize, from an f16 file), the others by the gguf package."""
    check_gguf_target(out)
    model, config, tokenizer = load_run_model(run)
    tensors = gguf_layout.to_gguf(model.state_dict(), config.model)
    if dtype == "q4_k_m":
        with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
            f16 = Path(tmp) / "f16.gguf"
            write_gguf(f16, tensors, config.model, tokenizer, "f16", run.path.name)
            quantize_with_llama_cpp(f16, Path(tmp) / "q4_k_m.gguf", "q4_k_m")
            os.replace(Path(tmp) / "q4_k_m.gguf", out)
    else:
        tmp = out.with_name(f".{out.name}.tmp")
        try:
            write_gguf(tmp, tensors, config.model, tokenizer, dtype, run.path.name)
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)
    out.chmod(default_mode())
    return out


def check_gguf_target(out: Path) -> None:
    if out.suffix != ".gguf":
        raise MaiError(f"{out}: name the GGUF file with a .gguf suffix (llama.cpp and Ollama look for it)")
    for folder in out.resolve().parents:
        if RunDir(folder).config_path.is_file():
            raise MaiError(f"{out} is inside the run directory {folder}; export to a file outside it")
    if out.exists():
        raise MaiError(f"{out} exists; delete it first or export to a new file")
    if not out.parent.is_dir():
        raise MaiError(f"{out.parent} is not a directory; create it first")


def gguf_tensor_type(name: str, tensor: torch.Tensor, dtype: GgufDtype, tied: bool):
    """The GGUF type a tensor is stored in. Norms stay F32 (llama.cpp requires it); a row that is not
    whole blocks stays F16; q4_0 keeps the output projection (the embedding, when tied) at Q8_0, as
    llama.cpp keeps it above 4 bits, since every token's logits come through it."""
    import gguf

    kinds = gguf.GGMLQuantizationType
    if tensor.ndim == 1:
        return kinds.F32
    if dtype in ("f16", "q4_k_m"):
        return kinds.F16
    if dtype == "bf16":
        return kinds.BF16
    if tensor.shape[-1] % GGUF_BLOCK:
        return kinds.F16
    head = name == "output.weight" or (tied and name == "token_embd.weight")
    return kinds.Q8_0 if dtype == "q8_0" or head else kinds.Q4_0


def write_gguf(path: Path, tensors: dict, config, tokenizer, dtype: GgufDtype, name: str) -> None:
    """One GGUF file: metadata (architecture, tokenizer, chat template), then the tensors in their types."""
    import gguf
    import numpy as np

    arch = gguf_layout.architecture(config)
    writer = gguf.GGUFWriter(path, arch)
    writer.add_name(name)
    file_types = {"f16": "MOSTLY_F16", "bf16": "MOSTLY_BF16", "q8_0": "MOSTLY_Q8_0", "q4_0": "MOSTLY_Q4_0"}
    writer.add_file_type(getattr(gguf.LlamaFileType, file_types.get(dtype, "MOSTLY_F16")))
    for key, value in gguf_layout.metadata(config).items():
        (writer.add_float32 if isinstance(value, float) else writer.add_uint32)(f"{arch}.{key}", value)
    vocab = tokenizer.gguf_vocab()
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    writer.add_token_merges(vocab.merges)
    writer.add_add_bos_token(vocab.add_bos)
    for token_id, add in ((vocab.bos_id, writer.add_bos_token_id), (vocab.eos_id, writer.add_eos_token_id)):
        if token_id is not None:
            add(token_id)
    if vocab.pad_id is not None:
        writer.add_pad_token_id(vocab.pad_id)
    writer.add_chat_template(vocab.chat_template)
    if dtype in ("q8_0", "q4_0"):
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for tensor_name, tensor in tensors.items():
        kind = gguf_tensor_type(tensor_name, tensor, dtype, config.tie_embeddings)
        array = tensor.detach().float().numpy()
        if kind == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(tensor_name, array)
        elif kind == gguf.GGMLQuantizationType.F16:
            writer.add_tensor(tensor_name, array.astype(np.float16))
        else:
            writer.add_tensor(tensor_name, gguf.quants.quantize(array, kind), raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def quantize_with_llama_cpp(source: Path, out: Path, dtype: str) -> None:
    """llama.cpp's own quantizer (llama-quantize's library call), for the k-quants the gguf package cannot make."""
    try:
        import llama_cpp
    except ImportError:
        raise MaiError(
            f"--dtype {dtype} is quantized by llama.cpp: install llama-cpp-python (`make install` does), "
            "or export f16, bf16, q8_0 or q4_0"
        ) from None
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
    if llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), ctypes.byref(params)) != 0:
        raise MaiError(f"llama.cpp could not quantize {source} to {dtype}")


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
