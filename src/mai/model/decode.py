"""Autoregressive decoding with the KV cache: temperature, top-k and top-p sampling, greedy at 0.

Eager decoding spends most of a small model's step in the dispatch of a few hundred small ops.
`compile=True` runs each step through torch.compile instead (weights frozen into the graph, which
lets inductor pre-pack them for the CPU's matmul kernels): 2-4× faster per token on our CPUs,
after a one-off compilation of 10-20 s, so it pays for long or many generations.
"""

import functools
import weakref
from collections.abc import Iterator

import torch

from mai.model.quantize import QuantizedLinear
from mai.model.transformer import FusedLinear, KVCache, Transformer

CACHE_BUCKET = 64  # compiled decoding sizes its cache in multiples of this, so a few graphs serve all lengths


def sample_next(
    logits: torch.Tensor, temperature: float, top_k: int, top_p: float, generator: torch.Generator | None
) -> torch.Tensor:
    """Next token ids (B,) from last-position logits (B, V); temperature 0 means argmax."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if 0 < top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # Drop a token when the tokens ranked above it already cover top_p; the first always stays.
        drop_sorted = cumulative - sorted_logits.softmax(dim=-1) >= top_p
        drop_sorted[:, 0] = False  # even when top_p rounds to 0 in float32
        logits = logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.inference_mode()
def generate(
    model: Transformer,
    prompt: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int | None = None,
    stop_ids: tuple[int, ...] = (),
    compile: bool = False,
) -> Iterator[torch.Tensor]:
    """Yield the next tokens (B,) for prompts (B, T) one step at a time, reusing the KV cache.

    Stops after max_new_tokens, at the context limit, or when every row has produced a stop id.
    compile decodes through a compiled step (see the module docstring); the prompt runs eagerly.
    """
    batch, prompt_len = prompt.shape
    max_len = min(model.config.max_seq_len, prompt_len + max_new_tokens)
    if prompt_len >= model.config.max_seq_len:
        raise ValueError(f"prompt of {prompt_len} tokens leaves no room in max_seq_len {model.config.max_seq_len}")
    device = next(model.parameters()).device
    cache_len = min(model.config.max_seq_len, -(-max_len // CACHE_BUCKET) * CACHE_BUCKET) if compile else max_len
    cache = KVCache.for_decoding(model, batch, cache_len, fixed_span=compile)
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device)
        generator.manual_seed(seed)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    last = torch.full((batch,), prompt_len - 1, device=device)
    logits = model(prompt.to(device), cache=cache, logits_at=last)[:, -1]  # (B, V)
    positions = torch.full((batch, 1), prompt_len, device=device)  # where each row's next token goes
    step = compiled_decode_step if compile else decode_step
    new_tokens = max_len - prompt_len
    for i in range(new_tokens):
        token = sample_next(logits, temperature, top_k, top_p, generator)
        yield token
        if stop_ids:
            finished |= torch.isin(token, torch.tensor(stop_ids, device=token.device))
            if bool(finished.all()):
                return
        if i + 1 < new_tokens:
            logits = step(model, token[:, None], cache, positions)
            positions += 1


def fuse_for_decoding(model: Transformer) -> Transformer:
    """The model, for inference only, with q/k/v and gate/up each computed as one matmul.

    A decoding step multiplies one row per sequence by each weight matrix, and each call costs the
    same few tens of microseconds on a CPU whatever its size: with separate projections, eager bf16
    decoding of the tiny preset took 5.5 ms a token, fused 4.4 (2-core EPYC, 2026-12-02). The
    checkpoint layout stays separate; a fused model's state_dict has wqkv and w13 instead.
    """
    for layer in model.layers:
        attention, feed_forward = layer.attention, layer.feed_forward
        attention.wqkv = FusedLinear([attention.wq, attention.wk, attention.wv])
        del attention.wq, attention.wk, attention.wv
        feed_forward.w13 = FusedLinear([feed_forward.w1, feed_forward.w3])
        del feed_forward.w1, feed_forward.w3
    return model


def decode_step(model: Transformer, tokens: torch.Tensor, cache: KVCache, positions: torch.Tensor) -> torch.Tensor:
    """Logits (B, V) for one new token per row, tokens (B, 1) at positions (B, 1)."""
    return model(tokens, positions, cache)[:, -1]


def compiled_decode_step(
    model: Transformer, tokens: torch.Tensor, cache: KVCache, positions: torch.Tensor
) -> torch.Tensor:
    """decode_step through torch.compile, with the model's weights frozen into the graph as constants.

    The cache must have a fixed span, so that one graph serves every step. Freezing is read while
    dynamo traces, which torch.compile's options= does not reach, hence the config patch around
    each call (compilation happens inside a call). A frozen graph keeps the weights it was
    compiled with: a model whose weights change needs a new process. Quantized models compile
    unfrozen: freezing would fold their dequantization into fp32 constants, undoing it.
    """
    from torch._inductor import config as inductor_config

    with inductor_config.patch(freezing=not holds_quantized_layers(model)):
        return _compiled_decode_step()(model, tokens, cache, positions)


_QUANTIZED: "weakref.WeakKeyDictionary[Transformer, bool]" = weakref.WeakKeyDictionary()


def holds_quantized_layers(model: Transformer) -> bool:
    """Whether the model has int8/int4 layers, found once per model: walking its few hundred modules
    took 0.4 ms, 2% of a SmolLM2 decoding step."""
    if model not in _QUANTIZED:
        _QUANTIZED[model] = any(isinstance(m, QuantizedLinear) for m in model.modules())
    return _QUANTIZED[model]


@functools.cache
def _compiled_decode_step():
    return torch.compile(decode_step, dynamic=False)  # one graph per model, batch size and cache width
