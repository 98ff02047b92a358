"""The whole model: a decoder-only Llama-family transformer in plain PyTorch.

RMSNorm, rotary position embeddings (the "rotate half" layout transformers uses, so weights map
one to one), grouped-query attention through scaled_dot_product_attention, SwiGLU, optional
QK-norm, tied or untied embeddings, and a static KV cache for decoding. Parallelism, compile and
precision are applied from outside; nothing here knows about devices or distributed training.
A ragged batch (rows at different positions, as a serving engine's) passes per-row positions.

Shape letters: B batch, T sequence (new tokens), S cached + new tokens, D d_model,
H query heads, K key/value heads, E head_dim, F ffn hidden, V vocab.
"""

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from mai.config import ModelConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def rope_tables(head_dim: int, max_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of shape (max_len, head_dim), each frequency repeated for both halves."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.outer(torch.arange(max_len, dtype=torch.float64), inv_freq)  # (max_len, E/2)
    angles = torch.cat([angles, angles], dim=-1)  # (max_len, E)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, heads, T, E) by position; cos/sin are (T, E), or (B, 1, T, E) for a ragged batch."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


class KVCache:
    """Keys and values of every layer for up to max_len positions; `length` positions are filled.

    One (B, K, max_len, E) tensor per layer rather than one for all layers: compiled decoding then
    writes each in place, where a write into a slice of a shared tensor makes inductor copy the
    whole layer every step. The cache may hold a wider dtype than the model computes in: on CPUs,
    attention over an fp32 cache is several times faster than over a bf16 one, so bf16 models
    decode with an fp32 cache.
    """

    def __init__(self, config: ModelConfig, batch_size: int, max_len: int, device=None, dtype=torch.float32):
        shape = (batch_size, config.kv_heads, max_len, config.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layers)]
        self.max_len = max_len
        self.length = 0

    @classmethod
    def for_decoding(cls, model: "Transformer", batch_size: int, max_len: int) -> "KVCache":
        """A cache on the model's device: fp32 on CPUs (see above), the model's dtype elsewhere."""
        param = next(model.parameters())
        dtype = torch.float32 if param.device.type == "cpu" else param.dtype
        return cls(model.config, batch_size, max_len, device=param.device, dtype=dtype)

    def rows(self, start: int, end: int) -> "KVCache":
        """Rows start..end-1 as a cache of their own that shares this one's memory: writes land here."""
        view = copy.copy(self)
        view.k, view.v = [k[start:end] for k in self.k], [v[start:end] for v in self.v]
        return view

    def copy_row(self, row: int, source: "KVCache", source_row: int, length: int) -> None:
        """Copy the first `length` positions of `source`'s row `source_row` into this cache's `row`, every layer."""
        for k, v, source_k, source_v in zip(self.k, self.v, source.k, source.v, strict=True):
            k[row, :, :length] = source_k[source_row, :, :length]
            v[row, :, :length] = source_v[source_row, :, :length]


class Attention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.kv_heads, config.head_dim
        # One matmul for q, k and v (as Phi-3's qkv_proj); hf.py splits it for transformers.
        self.wqkv = nn.Linear(config.d_model, (self.n_heads + 2 * self.n_kv_heads) * self.head_dim, bias=False)
        self.wo = nn.Linear(self.n_heads * self.head_dim, config.d_model, bias=False)
        self.q_norm = RMSNorm(self.head_dim, config.norm_eps) if config.qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, config.norm_eps) if config.qk_norm else None

    def forward(self, x, cos, sin, cache: KVCache | None = None, layer: int = 0, ragged=None):
        B, T, _ = x.shape
        H, K, E = self.n_heads, self.n_kv_heads, self.head_dim
        qkv = self.wqkv(x)  # (B, T, (H + 2K)·E)
        q, k, v = qkv.split([H * E, K * E, K * E], dim=-1)
        q = q.view(B, T, H, E).transpose(1, 2)  # (B, H, T, E)
        k = k.view(B, T, K, E).transpose(1, 2)  # (B, K, T, E)
        v = v.view(B, T, K, E).transpose(1, 2)  # (B, K, T, E)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)

        if cache is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=K != H)
        elif ragged is not None:
            positions, mask, S = ragged  # (B, T) new tokens' positions, (B, 1, T, S) what each may see (or None)
            rows = torch.arange(B, device=x.device)[:, None]
            cache_k, cache_v = cache.k[layer], cache.v[layer]
            cache_k[rows, :, positions] = k.transpose(1, 2).to(cache_k.dtype)  # (B, T, K, E) into rows 0..B-1
            cache_v[rows, :, positions] = v.transpose(1, 2).to(cache_v.dtype)
            k, v = cache_k[:B, :, :S], cache_v[:B, :, :S]  # (B, K, S, E)
            # Fold each key head's G = H/K query heads into its rows, (B, K, G·T, E): attention without
            # GQA, which CUDA's masked attention kernels lack (they would copy every key G times).
            G = H // K
            q = q.reshape(B, K, G * T, E).to(k.dtype)
            if mask is not None:
                mask = mask.expand(B, G, T, S).reshape(B, 1, G * T, S)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).reshape(B, H, T, E).to(x.dtype)
        else:
            start, end = cache.length, cache.length + T
            cache_k, cache_v = cache.k[layer], cache.v[layer]
            cache_k[:, :, start:end] = k
            cache_v[:, :, start:end] = v
            k, v = cache_k[:, :, :end], cache_v[:, :, :end]  # (B, K, S, E)
            mask = causal_mask(start, T, q.device)
            y = F.scaled_dot_product_attention(q.to(k.dtype), k, v, attn_mask=mask, enable_gqa=K != H).to(x.dtype)
        y = y.transpose(1, 2).reshape(B, T, H * E)  # (B, T, D)
        return self.wo(y)


def causal_mask(start: int, length: int, device) -> torch.Tensor | None:
    """Boolean (T, S) mask letting new token i see cached positions and new tokens ≤ i; None when T == 1."""
    if length == 1:
        return None
    rows = torch.arange(start, start + length, device=device)[:, None]
    cols = torch.arange(start + length, device=device)[None, :]
    return cols <= rows


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(x·w1) * x·w3), with w1 and w3 in one matmul (as Phi-3's gate_up_proj)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.hidden_dim = config.hidden_dim
        self.w13 = nn.Linear(config.d_model, 2 * self.hidden_dim, bias=False)
        self.w2 = nn.Linear(self.hidden_dim, config.d_model, bias=False)

    def forward(self, x):
        gate, up = self.w13(x).chunk(2, dim=-1)  # (B, T, F) each
        return self.w2(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.attention_norm = RMSNorm(config.d_model, config.norm_eps)
        self.attention = Attention(config)
        self.ffn_norm = RMSNorm(config.d_model, config.norm_eps)
        self.feed_forward = FeedForward(config)

    def forward(self, x, cos, sin, cache=None, layer=0, ragged=None):
        x = x + self.attention(self.attention_norm(x), cos, sin, cache, layer, ragged)
        return x + self.feed_forward(self.ffn_norm(x))


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.d_model)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.output = None if config.tie_embeddings else nn.Linear(config.d_model, config.vocab_size, bias=False)
        cos, sin = rope_tables(config.head_dim, config.max_seq_len, config.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def forward(
        self,
        tokens: torch.Tensor,
        cache: KVCache | None = None,
        last_only: bool = False,
        lengths: torch.Tensor | None = None,
        span: int | None = None,
        logits_at: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (B, T, V) for tokens (B, T); with a cache, tokens continue after cache.length.

        last_only computes logits for the last position alone, (B, 1, V), as decoding needs;
        logits_at (B,) for one chosen position per row, (B, 1, V): a right-padded batch's last tokens.
        A ragged batch passes `lengths` (B,) too: row b's tokens continue after lengths[b] tokens
        already in cache row b (rows 0..B-1 of a cache that may hold more); cache.length is not used.
        Its attention covers the first `span` cache positions (default: up to the longest row); a
        fixed span gives fixed shapes and no device sync, as a captured CUDA graph needs.
        """
        B, T = tokens.shape
        ragged = None
        if lengths is not None:
            positions = lengths[:, None] + torch.arange(T, device=tokens.device)  # (B, T)
            S = span or int(positions.max()) + 1
            if span is None and S > self.config.max_seq_len:
                raise ValueError(f"sequence of {S} tokens exceeds max_seq_len {self.config.max_seq_len}")
            mask = torch.arange(S, device=tokens.device) <= positions[:, :, None]  # (B, T, S)
            # One row decoding one token sees every position: no mask, the very call cache.length decoding makes.
            ragged = positions, None if B == T == 1 and span is None else mask[:, None], S
            cos, sin = self.rope_cos[positions][:, None], self.rope_sin[positions][:, None]  # (B, 1, T, E)
        else:
            start = cache.length if cache is not None else 0
            if start + T > self.config.max_seq_len:
                raise ValueError(f"sequence of {start + T} tokens exceeds max_seq_len {self.config.max_seq_len}")
            cos, sin = self.rope_cos[start : start + T], self.rope_sin[start : start + T]  # (T, E)
        x = self.tok_embeddings(tokens)  # (B, T, D)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, cache, i, ragged)
        if cache is not None and lengths is None:
            cache.length += T
        if last_only:
            x = x[:, -1:]
        elif logits_at is not None:
            x = x[torch.arange(B, device=x.device), logits_at][:, None]  # (B, 1, D)
        x = self.norm(x)
        head = self.tok_embeddings.weight if self.output is None else self.output.weight
        return F.linear(x, head)  # (B, T, V)

    @torch.no_grad()
    def init_weights(self, seed: int | None = None) -> None:
        """Initialise every parameter (call after `to_empty` when built on the meta device).

        - token embedding, wqkv, w13 and an untied output head: normal(0, init_std)
        - attention and MLP output projections (wo, w2): normal(0, init_std / sqrt(2·n_layers)),
          GPT-2's scaling so the residual stream's variance does not grow with depth
        - RMSNorm weights (including QK-norm): ones
        - RoPE tables are recomputed, since `to_empty` leaves buffers uninitialised
        """
        generator = torch.Generator(device=self.tok_embeddings.weight.device)
        generator.manual_seed(0 if seed is None else seed)
        std = self.config.init_std
        residual_std = std / math.sqrt(2 * self.config.n_layers)
        for name, param in self.named_parameters():
            if name.endswith(("wo.weight", "w2.weight")):
                param.normal_(0.0, residual_std, generator=generator)
            elif param.ndim == 2:
                param.normal_(0.0, std, generator=generator)
            else:
                param.fill_(1.0)
        cos, sin = rope_tables(self.config.head_dim, self.config.max_seq_len, self.config.rope_theta)
        self.rope_cos.copy_(cos)
        self.rope_sin.copy_(sin)


def build_model(config: ModelConfig, seed: int = 0, device: str | torch.device = "cpu") -> Transformer:
    """Build on the meta device, materialise on `device`, then run init_weights."""
    with torch.device("meta"):
        model = Transformer(config)
    model.to_empty(device=device)
    model.init_weights(seed)
    return model
