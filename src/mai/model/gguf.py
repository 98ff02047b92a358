"""Conversion between our state dict and config and GGUF's llama (or qwen3, with QK-norm) layout.

An explicit key map, one to one, as in hf.py. One tensor changes on the way: llama.cpp's llama
architecture rotates adjacent pairs of each head's dimensions (Meta's original RoPE), where we and
transformers rotate its two halves, so the rows of wq and wk are permuted within each head to
compute the same attention (llama.cpp's own converter does the same). qwen3 rotates halves
("NEOX" in ggml) and takes the weights as they are. GGUF lists a tensor's shape fastest dimension
first; the `gguf` package reverses a numpy array's shape itself, so tensors pass in our order.
"""

import torch

from mai.config import ModelConfig
from mai.model.hf import expected_shapes

LAYER_KEYS = {  # ours → GGUF, for one layer; {i} is the layer index
    "layers.{i}.attention_norm.weight": "blk.{i}.attn_norm.weight",
    "layers.{i}.attention.wq.weight": "blk.{i}.attn_q.weight",
    "layers.{i}.attention.wk.weight": "blk.{i}.attn_k.weight",
    "layers.{i}.attention.wv.weight": "blk.{i}.attn_v.weight",
    "layers.{i}.attention.wo.weight": "blk.{i}.attn_output.weight",
    "layers.{i}.attention.q_norm.weight": "blk.{i}.attn_q_norm.weight",
    "layers.{i}.attention.k_norm.weight": "blk.{i}.attn_k_norm.weight",
    "layers.{i}.ffn_norm.weight": "blk.{i}.ffn_norm.weight",
    "layers.{i}.feed_forward.w1.weight": "blk.{i}.ffn_gate.weight",
    "layers.{i}.feed_forward.w2.weight": "blk.{i}.ffn_down.weight",
    "layers.{i}.feed_forward.w3.weight": "blk.{i}.ffn_up.weight",
}
GLOBAL_KEYS = {
    "tok_embeddings.weight": "token_embd.weight",
    "norm.weight": "output_norm.weight",
    "output.weight": "output.weight",
}


def architecture(config: ModelConfig) -> str:
    """llama.cpp's name for the architecture: qwen3 when the model uses QK-norm, else llama."""
    return "qwen3" if config.qk_norm else "llama"


def key_map(config: ModelConfig) -> dict[str, str]:
    """Each of our keys for `config` → its GGUF tensor name."""
    per_layer = {ours.format(i=i): g.format(i=i) for i in range(config.n_layers) for ours, g in LAYER_KEYS.items()}
    return {ours: (GLOBAL_KEYS | per_layer)[ours] for ours in expected_shapes(config)}


def halves_to_pairs(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Rows of each head reordered from (first half, second half) to interleaved pairs: 0, E/2, 1, E/2+1, ..."""
    rows, columns = weight.shape
    return weight.reshape(heads, 2, rows // heads // 2, columns).transpose(1, 2).reshape(rows, columns)


def pairs_to_halves(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """The inverse of halves_to_pairs."""
    rows, columns = weight.shape
    return weight.reshape(heads, rows // heads // 2, 2, columns).transpose(1, 2).reshape(rows, columns)


def rope_heads(config: ModelConfig) -> dict[str, int]:
    """The GGUF tensors whose rows llama's pair-wise RoPE permutes, and their head counts."""
    if architecture(config) != "llama":
        return {}
    return {
        **{f"blk.{i}.attn_q.weight": config.n_heads for i in range(config.n_layers)},
        **{f"blk.{i}.attn_k.weight": config.kv_heads for i in range(config.n_layers)},
    }


def to_gguf(state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """Our state dict → GGUF's names and RoPE layout (tensors in our shapes)."""
    heads = rope_heads(config)
    out = {}
    for ours, name in key_map(config).items():
        tensor = state[ours]
        out[name] = halves_to_pairs(tensor, heads[name]) if name in heads else tensor
    return out


def from_gguf(tensors: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """GGUF's tensors → our state dict; every tensor must be used (a tied head may be absent or a copy)."""
    heads = rope_heads(config)
    remaining = dict(tensors)
    if config.tie_embeddings:
        remaining.pop("output.weight", None)
    state = {}
    for ours, name in key_map(config).items():
        if name not in remaining:
            raise ValueError(f"the file lacks tensor {name}")
        tensor = remaining.pop(name)
        state[ours] = pairs_to_halves(tensor, heads[name]) if name in heads else tensor
    if remaining:
        raise ValueError(
            f"the file has {len(remaining)} tensors this architecture does not use, e.g. {list(remaining)[:3]}"
        )
    return state


def metadata(config: ModelConfig) -> dict[str, int | float]:
    """The architecture's hyperparameters under their GGUF keys (without the architecture prefix)."""
    return {
        "context_length": config.max_seq_len,
        "embedding_length": config.d_model,
        "block_count": config.n_layers,
        "feed_forward_length": config.hidden_dim,
        "attention.head_count": config.n_heads,
        "attention.head_count_kv": config.kv_heads,
        "attention.key_length": config.head_dim,
        "attention.value_length": config.head_dim,
        "attention.layer_norm_rms_epsilon": config.norm_eps,
        "rope.freq_base": config.rope_theta,
        "rope.dimension_count": config.head_dim,
        "vocab_size": config.vocab_size,
    }


def config_from_gguf(fields: dict, tensor_names: set[str]) -> dict:
    """Our model config fields from a GGUF file's metadata (`fields`: key → value) and tensor names."""
    arch = fields.get("general.architecture")
    if arch not in {"llama", "qwen3"}:
        raise ValueError(f"architecture {arch!r} is not supported; expected llama or qwen3")
    if fields.get(f"{arch}.rope.scaling.type", "none") not in {"none", "linear"} or fields.get(
        f"{arch}.rope.scaling.factor", 1.0
    ) not in {0.0, 1.0}:
        raise ValueError("RoPE scaling is not supported")

    def get(key, default=None):
        value = fields.get(f"{arch}.{key}", default)
        if value is None:
            raise KeyError(f"{arch}.{key}")
        return value

    d_model, n_heads = int(get("embedding_length")), int(get("attention.head_count"))
    head_dim = int(get("attention.key_length", d_model // n_heads))
    if head_dim * n_heads != d_model:
        raise ValueError("key_length · head_count must equal embedding_length")
    vocab = fields.get(f"{arch}.vocab_size") or len(fields["tokenizer.ggml.tokens"])
    return {
        "vocab_size": int(vocab),
        "d_model": d_model,
        "n_layers": int(get("block_count")),
        "n_heads": n_heads,
        "n_kv_heads": int(get("attention.head_count_kv", n_heads)),
        "ffn_dim": int(get("feed_forward_length")),
        "max_seq_len": int(get("context_length", 2048)),
        "rope_theta": float(get("rope.freq_base", 10000.0)),
        "norm_eps": float(get("attention.layer_norm_rms_epsilon", 1e-6)),
        "qk_norm": arch == "qwen3",
        "tie_embeddings": "output.weight" not in tensor_names,
    }
