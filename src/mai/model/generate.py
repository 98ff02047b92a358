"""Autoregressive decoding with the KV cache: temperature, top-k and top-p sampling, greedy at 0."""

from collections.abc import Iterator

import torch

from mai.model.transformer import KVCache, Transformer


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
) -> Iterator[torch.Tensor]:
    """Yield the next tokens (B,) for prompts (B, T) one step at a time, reusing the KV cache.

    Stops after max_new_tokens, at the context limit, or when every row has produced a stop id.
    """
    batch, prompt_len = prompt.shape
    max_len = min(model.config.max_seq_len, prompt_len + max_new_tokens)
    if prompt_len >= model.config.max_seq_len:
        raise ValueError(f"prompt of {prompt_len} tokens leaves no room in max_seq_len {model.config.max_seq_len}")
    param = next(model.parameters())
    cache = KVCache.for_decoding(model, batch, max_len)
    generator = None
    if seed is not None:
        generator = torch.Generator(device=param.device)
        generator.manual_seed(seed)
    finished = torch.zeros(batch, dtype=torch.bool, device=param.device)
    logits = model(prompt.to(param.device), cache, last_only=True)[:, -1]  # (B, V)
    new_tokens = max_len - prompt_len
    for i in range(new_tokens):
        token = sample_next(logits, temperature, top_k, top_p, generator)
        yield token
        if stop_ids:
            finished |= torch.isin(token, torch.tensor(stop_ids, device=token.device))
            if bool(finished.all()):
                return
        if i + 1 < new_tokens:
            logits = model(token[:, None], cache, last_only=True)[:, -1]
