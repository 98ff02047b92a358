"""Conversion between our state dict and transformers' Llama (or Qwen3, with QK-norm) layout.

An explicit key map, one to one: our q/k/v and gate/up projections are separate, as transformers'
are, and RoPE uses the same "rotate half" layout, so no tensor is split, joined or permuted. Every
key must be accounted for and every tensor must have the shape the config implies, or the
conversion fails naming the key.
"""

import torch

from mai.config import ModelConfig

LAYER_KEYS = {  # ours → transformers, for one layer; {i} is the layer index
    "layers.{i}.attention_norm.weight": "model.layers.{i}.input_layernorm.weight",
    "layers.{i}.attention.wq.weight": "model.layers.{i}.self_attn.q_proj.weight",
    "layers.{i}.attention.wk.weight": "model.layers.{i}.self_attn.k_proj.weight",
    "layers.{i}.attention.wv.weight": "model.layers.{i}.self_attn.v_proj.weight",
    "layers.{i}.attention.wo.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "layers.{i}.attention.q_norm.weight": "model.layers.{i}.self_attn.q_norm.weight",
    "layers.{i}.attention.k_norm.weight": "model.layers.{i}.self_attn.k_norm.weight",
    "layers.{i}.ffn_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "layers.{i}.feed_forward.w1.weight": "model.layers.{i}.mlp.gate_proj.weight",
    "layers.{i}.feed_forward.w2.weight": "model.layers.{i}.mlp.down_proj.weight",
    "layers.{i}.feed_forward.w3.weight": "model.layers.{i}.mlp.up_proj.weight",
}
GLOBAL_KEYS = {
    "tok_embeddings.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Our parameter names and shapes for `config`, computed without building the model."""
    D, E, F = config.d_model, config.head_dim, config.hidden_dim
    shapes = {"tok_embeddings.weight": (config.vocab_size, D), "norm.weight": (D,)}
    if not config.tie_embeddings:
        shapes["output.weight"] = (config.vocab_size, D)
    for i in range(config.n_layers):
        p = f"layers.{i}."
        shapes |= {
            p + "attention_norm.weight": (D,),
            p + "attention.wq.weight": (config.n_heads * E, D),
            p + "attention.wk.weight": (config.kv_heads * E, D),
            p + "attention.wv.weight": (config.kv_heads * E, D),
            p + "attention.wo.weight": (D, config.n_heads * E),
            p + "ffn_norm.weight": (D,),
            p + "feed_forward.w1.weight": (F, D),
            p + "feed_forward.w2.weight": (D, F),
            p + "feed_forward.w3.weight": (F, D),
        }
        if config.qk_norm:
            shapes |= {p + "attention.q_norm.weight": (E,), p + "attention.k_norm.weight": (E,)}
    return shapes


def key_map(config: ModelConfig) -> dict[str, str]:
    """Each of our keys for `config` → its transformers key."""
    per_layer = {ours.format(i=i): hf.format(i=i) for i in range(config.n_layers) for ours, hf in LAYER_KEYS.items()}
    return {ours: (GLOBAL_KEYS | per_layer)[ours] for ours in expected_shapes(config)}


def to_hf(state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """Our state dict → transformers' keys."""
    check_state(state, config)
    return {hf: state[ours].contiguous() for ours, hf in key_map(config).items()}


def from_hf(hf_state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """transformers' state dict → ours; every transformers key must be used."""
    remaining = dict(hf_state)
    if config.tie_embeddings:
        remaining.pop("lm_head.weight", None)  # a tied head may be saved as a copy of the embedding
    state = {}
    for ours, hf in key_map(config).items():
        if hf not in remaining:
            raise ValueError(f"checkpoint lacks {hf}")
        state[ours] = remaining.pop(hf)
    unused = [k for k in remaining if not k.endswith("rotary_emb.inv_freq")]
    if unused:
        raise ValueError(f"checkpoint has {len(unused)} keys this architecture does not use, e.g. {unused[:3]}")
    check_state(state, config)
    return state


def check_state(state: dict[str, torch.Tensor], config: ModelConfig) -> None:
    expected = expected_shapes(config)
    missing, unexpected = expected.keys() - state.keys(), state.keys() - expected.keys()
    if missing or unexpected:
        raise ValueError(
            f"state dict does not match the config: missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}"
        )
    for key, shape in expected.items():
        if tuple(state[key].shape) != shape:
            raise ValueError(f"{key} has shape {tuple(state[key].shape)}, expected {shape}")


def hf_config(config: ModelConfig, bos_token_id: int | None, eos_token_id: int | None, dtype: str = "float32") -> dict:
    """config.json for LlamaForCausalLM, or Qwen3ForCausalLM when the model uses QK-norm."""
    qwen3 = config.qk_norm
    return {
        "architectures": ["Qwen3ForCausalLM" if qwen3 else "LlamaForCausalLM"],
        "model_type": "qwen3" if qwen3 else "llama",
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "intermediate_size": config.hidden_dim,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.kv_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": config.max_seq_len,
        "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "tie_word_embeddings": config.tie_embeddings,
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "dtype": dtype,
        "torch_dtype": dtype,
    }


def config_from_hf(hf: dict) -> dict:
    """Our model config fields from a transformers config.json (Llama or Qwen3)."""
    model_type = hf.get("model_type")
    if model_type not in {"llama", "qwen3"}:
        raise ValueError(f"model_type {model_type!r} is not supported; expected a llama or qwen3 checkpoint")
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise ValueError(f"RoPE scaling {rope.get('rope_type') or rope.get('type')!r} is not supported")
    if hf.get("attention_bias") or hf.get("mlp_bias"):
        raise ValueError("checkpoints with attention or MLP biases are not supported")
    n_heads = hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or hf["hidden_size"] // n_heads
    if head_dim * n_heads != hf["hidden_size"]:
        raise ValueError("head_dim · num_attention_heads must equal hidden_size")
    return {
        "vocab_size": hf["vocab_size"],
        "d_model": hf["hidden_size"],
        "n_layers": hf["num_hidden_layers"],
        "n_heads": n_heads,
        "n_kv_heads": hf.get("num_key_value_heads") or n_heads,
        "ffn_dim": hf["intermediate_size"],
        "max_seq_len": hf.get("max_position_embeddings", 2048),
        "rope_theta": float(rope.get("rope_theta") or hf.get("rope_theta") or 10000.0),
        "norm_eps": hf.get("rms_norm_eps", 1e-6),
        "qk_norm": model_type == "qwen3",
        "tie_embeddings": bool(hf.get("tie_word_embeddings", False)),
    }
