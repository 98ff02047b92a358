"""Model size facts computed on the meta device: parameters by component, FLOPs per token, weight bytes."""

import torch

from mai.config import ModelConfig
from mai.model.transformer import Transformer

COMPONENTS = {
    "embedding": ("tok_embeddings.",),
    "attention": (".attention.wq.", ".attention.wk.", ".attention.wv.", ".attention.wo.", ".q_norm.", ".k_norm."),
    "mlp": (".feed_forward.",),
    "norms": ("_norm.weight", "norm.weight"),
    "output": ("output.",),
}


def model_info(config: ModelConfig, seq_len: int | None = None) -> dict:
    """Parameter counts and costs of `config`, without allocating its weights."""
    with torch.device("meta"):
        model = Transformer(config)
    breakdown = dict.fromkeys(COMPONENTS, 0)
    for name, param in model.named_parameters():
        breakdown[_component(name)] += param.numel()
    params = sum(breakdown.values())
    seq_len = seq_len or config.max_seq_len
    # Training FLOPs per token, as in PaLM (appendix B): 6 per weight that multiplies an activation
    # (the embedding lookup does not) plus 12·layers·d_model·seq_len for attention scores and values.
    matmul_params = params - breakdown["embedding"] - breakdown["norms"]
    if config.tie_embeddings:
        matmul_params += breakdown["embedding"]
    attention_flops = 12 * config.n_layers * config.n_heads * config.head_dim * seq_len
    return {
        "params": params,
        "breakdown": breakdown,
        "matmul_params": matmul_params,
        "seq_len": seq_len,
        "flops_per_token": 6 * matmul_params + attention_flops,
        "memory_bf16_weights_bytes": 2 * params,
        "kv_cache_bytes_per_token_bf16": 2 * 2 * config.n_layers * config.kv_heads * config.head_dim,
    }


def format_info(name: str, info: dict, training_memory: dict[str, float]) -> str:
    """model_info as `mai model info` prints it, with the training memory of one device by part (mai.plan)."""
    params = info["params"]
    lines = [f"{name}: {params:,} parameters ({params / 1e9:.3f}B)"]
    lines += [f"  {part:<10} {count:>18,}  {100 * count / params:5.1f}%" for part, count in info["breakdown"].items()]
    lines += [
        f"training FLOPs/token  {info['flops_per_token']:.3e}  (seq_len {info['seq_len']})",
        f"weights in bf16       {info['memory_bf16_weights_bytes'] / 2**30:,.2f} GiB",
        f"training, one device  {sum(training_memory.values()) / 2**30:,.2f} GiB at train.batch_size and seq_len:",
        *(f"  {part:<30} {size / 2**30:>10,.2f} GiB" for part, size in training_memory.items()),
        "  (`mai plan` splits it over GPUs)",
        f"KV cache per token    {info['kv_cache_bytes_per_token_bf16'] / 2**10:,.1f} KiB (bf16)",
    ]
    return "\n".join(lines) + "\n"


def _component(name: str) -> str:
    for component, patterns in COMPONENTS.items():
        if any(p in name for p in patterns):
            return component
    raise AssertionError(f"parameter {name} belongs to no component")
