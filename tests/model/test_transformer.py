import pytest
import torch

from mai.config import load_config
from mai.model.decode import fuse_for_decoding, generate, sample_next
from mai.model.transformer import KVCache, build_model


def tiny(*overrides):
    return load_config("tiny", ["model.d_model=64", "model.n_layers=2", "model.vocab_size=97", *overrides]).model


def at(position: int, batch: int) -> torch.Tensor:
    """Positions (batch, 1) of one new token per row, all at `position`."""
    return torch.full((batch, 1), position)


def test_kv_cache_matches_full_forward():
    for config in (tiny(), tiny("model.qk_norm=true", "model.tie_embeddings=false", "model.n_kv_heads=4")):
        model = build_model(config, seed=1).eval()
        tokens = torch.randint(0, 97, (2, 20))
        with torch.no_grad():
            full = model(tokens)
            cache = KVCache(config, 2, 20)
            prefill = model(tokens[:, :12], cache=cache)
            steps = [model(tokens[:, i : i + 1], at(i, 2), cache) for i in range(12, 20)]
        torch.testing.assert_close(prefill, full[:, :12], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(torch.cat(steps, dim=1), full[:, 12:], atol=1e-5, rtol=1e-5)


def test_bf16_model_decodes_over_an_fp32_cache_like_its_full_forward():
    config = tiny()
    model = build_model(config, seed=1).eval().to(torch.bfloat16)
    tokens = torch.randint(0, 97, (2, 16))
    with torch.no_grad():
        full = model(tokens).float()
        cache = KVCache(config, 2, 16)  # fp32, as generate() makes it on CPUs
        last = model(tokens[:, :10], cache=cache, logits_at=torch.tensor([9, 9]))
        steps = [model(tokens[:, i : i + 1], at(i, 2), cache) for i in range(10, 16)]
    assert last.shape == (2, 1, 97) and last.dtype == torch.bfloat16
    torch.testing.assert_close(last.float(), full[:, 9:10], atol=0.02, rtol=0.02)
    torch.testing.assert_close(torch.cat(steps, dim=1).float(), full[:, 10:], atol=0.02, rtol=0.02)


@pytest.mark.slow  # compiles
def test_compiled_decoding_gives_eager_decoding_tokens():
    model = build_model(tiny("model.n_kv_heads=2"), seed=3).eval()
    prompt = torch.randint(0, 97, (2, 5))
    for kwargs in ({"temperature": 0}, {"temperature": 1.0, "top_k": 20, "seed": 7}):
        for new_tokens in (30, 12):  # the second reuses the first's graph: both caches round up to 64
            eager = torch.stack(list(generate(model, prompt, new_tokens, **kwargs)), dim=1)
            compiled = torch.stack(list(generate(model, prompt, new_tokens, compile=True, **kwargs)), dim=1)
            assert torch.equal(compiled, eager), kwargs


def test_chunked_prefill_after_cache_is_causal():
    config = tiny()
    model = build_model(config).eval()
    tokens = torch.randint(0, 97, (1, 16))
    with torch.no_grad():
        full = model(tokens)
        cache = KVCache(config, 1, 16)
        model(tokens[:, :6], cache=cache)
        chunk = model(tokens[:, 6:], torch.arange(6, 16)[None], cache)
    torch.testing.assert_close(chunk, full[:, 6:], atol=1e-5, rtol=1e-5)


def test_future_tokens_do_not_change_past_logits():
    model = build_model(tiny()).eval()
    a = torch.randint(0, 97, (1, 10))
    b = a.clone()
    b[0, 7:] = (b[0, 7:] + 1) % 97
    with torch.no_grad():
        torch.testing.assert_close(model(a)[:, :7], model(b)[:, :7])


def test_init_is_seeded_and_documented_scales_hold():
    config = tiny("model.n_layers=4")
    a, b = build_model(config, seed=3), build_model(config, seed=3)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb), name
    wo = a.layers[0].attention.wo.weight
    assert abs(wo.std().item() - 0.02 / (2 * 4) ** 0.5) < 0.002
    assert torch.all(a.norm.weight == 1)


def test_greedy_generation_is_deterministic_and_sampling_is_seeded():
    model = build_model(tiny()).eval()
    prompt = torch.randint(0, 97, (1, 5))
    greedy = [torch.cat(list(generate(model, prompt, 10, temperature=0))) for _ in range(2)]
    assert torch.equal(greedy[0], greedy[1]) and len(greedy[0]) == 10
    a = torch.cat(list(generate(model, prompt, 10, temperature=1.0, seed=7)))
    b = torch.cat(list(generate(model, prompt, 10, temperature=1.0, seed=7)))
    assert torch.equal(a, b)


def test_generation_stops_at_stop_id_and_context():
    model = build_model(tiny("model.max_seq_len=16", "train.seq_len=16")).eval()
    prompt = torch.randint(0, 97, (1, 10))
    assert len(list(generate(model, prompt, 100, temperature=0))) == 6
    first = int(next(generate(model, prompt, 5, temperature=0))[0])
    assert len(list(generate(model, prompt, 5, temperature=0, stop_ids=(first,)))) == 1


def test_top_k_and_top_p_restrict_the_choices():
    logits = torch.tensor([[5.0, 4.0, 1.0, 0.0]])
    generator = torch.Generator().manual_seed(0)
    picks = {int(sample_next(logits, 1.0, 2, 1.0, generator)) for _ in range(200)}
    assert picks == {0, 1}
    picks = {int(sample_next(logits, 1.0, 0, 0.5, generator)) for _ in range(200)}
    assert picks == {0}
    assert int(sample_next(logits, 1.0, 0, 5e-324, generator)) == 0  # a top_p below float32's range


def test_ragged_batch_matches_each_row_decoded_alone():
    config = tiny("model.n_kv_heads=2")
    model = build_model(config, seed=2).eval()
    lengths = torch.tensor([3, 9, 6])
    prompts = torch.randint(0, 97, (3, 9))  # right-padded: row b's prompt is its first lengths[b] tokens
    tokens = torch.randint(0, 97, (3, 4))
    with torch.no_grad():
        for fixed_span in (False, True):  # True: over the cache's whole width, as a captured CUDA graph decodes
            cache = KVCache(config, 4, 20, fixed_span=fixed_span)  # one spare row: a batch uses the first rows
            # The padding writes keys past each prompt; each row's first new token overwrites them before any query sees them.
            prefill = model(prompts, cache=cache, logits_at=lengths - 1)[:, 0]
            steps = [model(tokens[:, i : i + 1], (lengths + i)[:, None], cache) for i in range(4)]
            chunk = model(tokens[:, :2], lengths[:, None] + torch.arange(2), cache)  # several new tokens per row
            for row, n in enumerate(lengths.tolist()):
                alone = model(torch.cat([prompts[row : row + 1, :n], tokens[row : row + 1]], dim=1))[0, n - 1 :]
                torch.testing.assert_close(prefill[row], alone[0], atol=1e-5, rtol=1e-5)
                torch.testing.assert_close(torch.cat([s[row] for s in steps]), alone[1:], atol=1e-5, rtol=1e-5)
                torch.testing.assert_close(chunk[row], alone[1:3], atol=1e-5, rtol=1e-5)


def test_fused_projections_decode_as_the_separate_ones():
    config = tiny("model.n_kv_heads=2")
    separate, fused = build_model(config, seed=4).eval(), fuse_for_decoding(build_model(config, seed=4).eval())
    assert {"layers.0.attention.wqkv.weight", "layers.0.feed_forward.w13.weight"} <= fused.state_dict().keys()
    assert not {"layers.0.attention.wq.weight", "layers.0.feed_forward.w1.weight"} & fused.state_dict().keys()
    tokens = torch.randint(0, 97, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(fused(tokens), separate(tokens), atol=1e-5, rtol=1e-5)
    prompt = tokens[:, :4]
    assert torch.equal(
        torch.stack(list(generate(fused, prompt, 8, temperature=0)), dim=1),
        torch.stack(list(generate(separate, prompt, 8, temperature=0)), dim=1),
    )
