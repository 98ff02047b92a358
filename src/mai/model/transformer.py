"""The whole model: a decoder-only Llama-family transformer in plain PyTorch.

RMSNorm, rotary position embeddings (the "rotate half" layout transformers uses, so weights map
one to one), grouped-query attention through scaled_dot_product_attention, SwiGLU, optional
QK-norm, tied or untied embeddings, and a static KV cache for decoding. Projections are kept
separate (wq/wk/wv, w1/w3), as transformers lays them out and as tensor parallelism splits them.
Parallelism, compile and precision are applied from outside; nothing here knows about devices or
distributed training. A ragged batch (rows at different positions, as a serving engine's) passes
per-row positions; so does a packed batch (several sequences one after another in each row, as
fine-tuning on conversations packs them), whose positions restart at 0 where a sequence begins.

Shape letters: B batch, T sequence (new tokens), S cached + new tokens, D d_model,
H query heads, K key/value heads, E head_dim, F ffn hidden, V vocab.
"""

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
    """Keys and values of every layer for `batch_size` rows of up to max_len positions.

    One (B, K, max_len, E) tensor per layer rather than one for all layers: compiled decoding then
    writes each in place, where a write into a slice of a shared tensor makes inductor copy the
    whole layer every step. The cache may hold a wider dtype than the model computes in: on CPUs,
    attention over an fp32 cache is several times faster than over a bf16 one, so bf16 models
    decode with an fp32 cache.

    Attention reads the first `span` positions of each row: up to the furthest position written
    (one device sync per forward pass), or, with fixed_span, all max_len of them, masked: fixed
    shapes and no sync, as a compiled graph or a captured CUDA graph needs.
    """

    def __init__(
        self,
        config: ModelConfig,
        batch_size: int,
        max_len: int,
        device=None,
        dtype=torch.float32,
        fixed_span: bool = False,
    ):
        shape = (batch_size, config.kv_heads, max_len, config.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layers)]
        self.max_len, self.fixed_span = max_len, fixed_span

    @classmethod
    def for_decoding(cls, model: "Transformer", batch_size: int, max_len: int, fixed_span: bool = False) -> "KVCache":
        """A cache on the model's device: fp32 on CPUs (see above), the model's dtype elsewhere."""
        param = next(model.parameters())
        dtype = torch.float32 if param.device.type == "cpu" else param.dtype
        return cls(model.config, batch_size, max_len, param.device, dtype, fixed_span)

    def mask(self, positions: torch.Tensor, span: int) -> torch.Tensor:
        """What new tokens at positions (B, T) may see of the first `span` positions, (B, 1, T, S): 0 for
        their own and earlier positions, -inf beyond, in the cache's dtype (which attention computes in)."""
        beyond = torch.arange(span, device=positions.device) > positions[:, :, None]
        return torch.zeros(beyond.shape, dtype=self.k[0].dtype, device=positions.device).masked_fill(
            beyond, float("-inf")
        )[:, None]

    def span(self, positions: torch.Tensor) -> int:
        """How many leading positions attention reads, for new tokens at positions (B, T)."""
        if self.fixed_span:
            return self.max_len
        span = int(positions.max()) + 1
        if span > self.max_len:
            raise ValueError(f"position {span - 1} is beyond this cache's {self.max_len} positions")
        return span

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor, span: int):
        """Write new keys and values (B, K, T, E) into rows 0..B-1 at positions (B, T); return the
        first `span` positions of those rows, (B, K, S, E) each, for attention to read."""
        rows = torch.arange(k.shape[0], device=k.device)[:, None]
        cache_k, cache_v = self.k[layer], self.v[layer]
        cache_k[rows, :, positions] = k.transpose(1, 2).to(cache_k.dtype)  # (B, T, K, E) at each row's positions
        cache_v[rows, :, positions] = v.transpose(1, 2).to(cache_v.dtype)
        return cache_k[: k.shape[0], :, :span], cache_v[: k.shape[0], :, :span]


class FusedLinear(nn.Module):
    """Bias-free projections of one input computed as one matmul, for inference (decode.fuse_for_decoding)."""

    def __init__(self, linears: list[nn.Linear]):
        super().__init__()
        self.weight = nn.Parameter(torch.cat([linear.weight for linear in linears]), requires_grad=False)
        self.sizes = [linear.out_features for linear in linears]

    def forward(self, x):
        return F.linear(x, self.weight).split(self.sizes, dim=-1)


class Attention(nn.Module):
    """Grouped-query attention; q, k and v are separate projections, so that tensor parallelism can
    split each by heads (a rank's slice of a fused qkv matrix would not be its own heads).
    Decoding may fuse them into `wqkv` (decode.fuse_for_decoding)."""

    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        self.layer, self.head_dim = layer, config.head_dim
        self.wq = nn.Linear(config.d_model, config.n_heads * config.head_dim, bias=False)
        self.wk = nn.Linear(config.d_model, config.kv_heads * config.head_dim, bias=False)
        self.wv = nn.Linear(config.d_model, config.kv_heads * config.head_dim, bias=False)
        self.wo = nn.Linear(config.n_heads * config.head_dim, config.d_model, bias=False)
        self.q_norm = RMSNorm(config.head_dim, config.norm_eps) if config.qk_norm else None
        self.k_norm = RMSNorm(config.head_dim, config.norm_eps) if config.qk_norm else None
        self.wqkv: FusedLinear | None = None

    def forward(self, x, cos, sin, mask=None, cache: KVCache | None = None, positions=None, span: int = 0):
        B, T, _ = x.shape
        E = self.head_dim
        q, k, v = (self.wq(x), self.wk(x), self.wv(x)) if self.wqkv is None else self.wqkv(x)
        # -1: the heads this module holds, all of them or, under tensor parallelism, this rank's share
        q = q.view(B, T, -1, E).transpose(1, 2)  # (B, H, T, E)
        k = k.view(B, T, -1, E).transpose(1, 2)  # (B, K, T, E)
        v = v.view(B, T, -1, E).transpose(1, 2)  # (B, K, T, E)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer, k, v, positions, span)  # (B, K, S, E)
        y = attend(q, k, v, mask).to(x.dtype)  # (B, H, T, E)
        return self.wo(y.transpose(1, 2).reshape(B, T, -1))  # (B, T, D)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Attention of q (B, H, T, E) over k, v (B, K, S, E): causal when mask is None (T == S, a whole
    sequence), else as the mask (B, 1, T, S) allows: additive (KVCache.mask) or bool (packed_mask).

    A masked call folds each key head's G = H/K query heads into its rows, (B, K, G·T, E): attention
    without GQA, which CUDA's masked attention kernels lack (they would copy every key G times).
    A decoding step's one row of mask serves all G rows as it is.
    """
    H, K = q.shape[1], k.shape[1]
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=K != H)
    B, _, T, E = q.shape
    G, S = H // K, k.shape[2]
    folded = q.reshape(B, K, G * T, E).to(k.dtype)
    if T > 1:
        mask = mask.expand(B, G, T, S).reshape(B, 1, G * T, S)
    return F.scaled_dot_product_attention(folded, k, v, attn_mask=mask).reshape(B, H, T, E)


def packed_mask(positions: torch.Tensor) -> torch.Tensor:
    """Which keys each token of packed rows may attend to, (B, 1, T, T) bool: its own sequence's (they
    start where positions (B, T) restart at 0), up to itself."""
    sequence = (positions == 0).cumsum(-1)  # (B, T): which sequence of its row each token is in
    T = positions.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=positions.device).tril()
    return ((sequence[:, :, None] == sequence[:, None, :]) & causal)[:, None]


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(x·w1) * x·w3); decoding may fuse w1 and w3 into `w13` (decode.fuse_for_decoding)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.w1 = nn.Linear(config.d_model, config.hidden_dim, bias=False)
        self.w2 = nn.Linear(config.hidden_dim, config.d_model, bias=False)
        self.w3 = nn.Linear(config.d_model, config.hidden_dim, bias=False)
        self.w13: FusedLinear | None = None

    def forward(self, x):
        gate, up = (self.w1(x), self.w3(x)) if self.w13 is None else self.w13(x)  # (B, T, F) each
        return self.w2(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        self.attention_norm = RMSNorm(config.d_model, config.norm_eps)
        self.attention = Attention(config, layer)
        self.ffn_norm = RMSNorm(config.d_model, config.norm_eps)
        self.feed_forward = FeedForward(config)

    def forward(self, x, cos, sin, mask=None, cache=None, positions=None, span=0):
        x = x + self.attention(self.attention_norm(x), cos, sin, mask, cache, positions, span)
        return x + self.feed_forward(self.ffn_norm(x))


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.d_model)
        self.layers = nn.ModuleList(Block(config, layer) for layer in range(config.n_layers))
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.output = None if config.tie_embeddings else nn.Linear(config.d_model, config.vocab_size, bias=False)
        cos, sin = rope_tables(config.head_dim, config.max_seq_len, config.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def forward(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor | None = None,
        cache: KVCache | None = None,
        logits_at: torch.Tensor | None = None,
        head: bool = True,
    ) -> torch.Tensor:
        """Logits (B, T, V) for tokens (B, T); with head=False the final norm's output (B, T, D), which
        a loss projects chunk by chunk (`project`) so the whole (B, T, V) never exists at once.

        Without a cache, tokens are a whole sequence from position 0 and attention is causal; given
        positions, each row is packed: a sequence starts wherever its positions restart at 0, and
        attention stays causal within it (a token never sees another sequence of its row). With a cache, each row's tokens sit at its own positions (B, T) (default 0..T-1), their keys and values
        go into the cache's rows 0..B-1, and each token attends to its row's cached positions up to
        its own: prefill, a decode step, or a ragged batch of rows at different lengths alike.
        logits_at (B,) picks one position per row, (B, 1, V): the last token of a (padded) prompt.
        """
        B, T = tokens.shape
        mask, span = None, 0
        if positions is None and T > self.config.max_seq_len:
            raise ValueError(f"sequence of {T} tokens exceeds max_seq_len {self.config.max_seq_len}")
        if cache is not None:
            if positions is None:
                positions = torch.arange(T, device=tokens.device).expand(B, T)
            span = cache.span(positions)
            mask = cache.mask(positions, span)  # (B, 1, T, S)
        elif positions is not None:
            mask = packed_mask(positions)  # (B, 1, T, T)
        if positions is None:
            cos, sin = self.rope_cos[:T], self.rope_sin[:T]  # (T, E)
        else:
            cos, sin = self.rope_cos[positions][:, None], self.rope_sin[positions][:, None]  # (B, 1, T, E)
        x = self.tok_embeddings(tokens)  # (B, T, D)
        for layer in self.layers:
            x = layer(x, cos, sin, mask, cache, positions, span)
        if logits_at is not None:
            x = x[torch.arange(B, device=x.device), logits_at][:, None]  # (B, 1, D)
        x = self.norm(x)
        return self.project(x) if head else x

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (..., V) of final-norm outputs (..., D). An untied head is called as a module, so
        that FSDP2 gathers it (train/parallel.py)."""
        return self.output(x) if self.output is not None else F.linear(x, self.tok_embeddings.weight)

    @torch.no_grad()
    def init_weights(self, seed: int | None = None) -> None:
        """Initialise every parameter (call after `to_empty` when built on the meta device).

        - token embedding, wq, wk, wv, w1, w3 and an untied output head: normal(0, init_std)
        - attention and MLP output projections (wo, w2): normal(0, init_std / sqrt(2·n_layers)),
          GPT-2's scaling so the residual stream's variance does not grow with depth
        - RMSNorm weights (including QK-norm): ones
        - RoPE tables are recomputed, since `to_empty` leaves buffers uninitialised
        """
        generator = torch.Generator(device=self.tok_embeddings.weight.device)
        generator.manual_seed(0 if seed is None else seed)
        for name, param in self.named_parameters():
            self.init_parameter(name, param, generator)
        self.init_rope_tables()

    def init_parameter(self, name: str, tensor: torch.Tensor, generator: torch.Generator) -> None:
        """Fill `tensor` as init_weights fills parameter `name`, drawing from `generator`.

        Parallel training (train/parallel.py) calls it with each parameter's whole tensor, in the
        same order, and keeps its shard: a sharded model starts from the same weights as one process.
        """
        std = self.config.init_std
        if name.endswith(("wo.weight", "w2.weight")):
            tensor.normal_(0.0, std / math.sqrt(2 * self.config.n_layers), generator=generator)
        elif tensor.ndim == 2:
            tensor.normal_(0.0, std, generator=generator)
        else:
            tensor.fill_(1.0)

    def init_rope_tables(self) -> None:
        """Compute the RoPE tables on the embedding's device: they are not saved, so a model built on
        the meta device needs them after its weights are initialised or loaded."""
        cos, sin = rope_tables(self.config.head_dim, self.config.max_seq_len, self.config.rope_theta)
        device = self.tok_embeddings.weight.device
        self.rope_cos, self.rope_sin = cos.to(device), sin.to(device)  # replaces the registered buffers


def build_model(config: ModelConfig, seed: int = 0, device: str | torch.device = "cpu") -> Transformer:
    """Build on the meta device, materialise on `device`, then run init_weights."""
    with torch.device("meta"):
        model = Transformer(config)
    model.to_empty(device=device)
    model.init_weights(seed)
    return model
