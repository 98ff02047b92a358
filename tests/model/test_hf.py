import pytest
import torch

from mai.config import ModelConfig, load_config
from mai.model.hf import config_from_hf, from_hf, hf_config, to_hf
from mai.model.transformer import build_model

transformers = pytest.importorskip("transformers")

VARIANTS = {
    "llama-tied-gqa": [],
    "llama-untied": ["model.tie_embeddings=false", "model.n_kv_heads=4"],
    "qwen3-qk-norm": ["model.qk_norm=true"],
}


def hf_model(config_dict: dict):
    hf_cfg = transformers.AutoConfig.for_model(**config_dict)
    return transformers.AutoModelForCausalLM.from_config(hf_cfg, dtype=torch.float32).eval()


@pytest.mark.parametrize("variant", VARIANTS)
def test_logits_match_transformers(variant):
    config = load_config(
        "tiny", ["model.d_model=128", "model.n_layers=2", "model.vocab_size=300", *VARIANTS[variant]]
    ).model
    ours = build_model(config, seed=0).eval()
    peer = hf_model(hf_config(config, bos_id := 0, bos_id))
    assert type(peer).__name__ == ("Qwen3ForCausalLM" if config.qk_norm else "LlamaForCausalLM")
    missing, unexpected = peer.load_state_dict(to_hf(ours.state_dict(), config), strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    peer.tie_weights()
    assert sum(p.numel() for p in peer.parameters()) == sum(p.numel() for p in ours.parameters())
    tokens = torch.randint(0, 300, (2, 40))
    with torch.no_grad():
        torch.testing.assert_close(ours(tokens), peer(tokens).logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize("variant", VARIANTS)
def test_key_map_round_trips_and_config_maps_back(variant):
    config = load_config("tiny", ["model.d_model=64", "model.n_layers=2", *VARIANTS[variant]]).model
    state = build_model(config).state_dict()
    back = from_hf(to_hf(state, config), config)
    assert back.keys() == state.keys()
    assert all(torch.equal(back[k], state[k]) for k in state)
    mapped_back = ModelConfig(**config_from_hf(hf_config(config, 0, 0)))
    assert mapped_back == config.model_copy(update={"ffn_dim": config.hidden_dim})


def test_conversion_rejects_wrong_shapes_and_leftover_keys():
    config = load_config("tiny", ["model.d_model=64", "model.n_layers=1"]).model
    hf_state = to_hf(build_model(config).state_dict(), config)
    bad = dict(hf_state, **{"model.norm.weight": torch.ones(65)})
    with pytest.raises(ValueError, match="model.norm|norm.weight"):
        from_hf(bad, config)
    with pytest.raises(ValueError, match="does not use"):
        from_hf(dict(hf_state, extra=torch.ones(1)), config)
    with pytest.raises(ValueError, match="lacks"):
        from_hf({k: v for k, v in hf_state.items() if "o_proj" not in k}, config)


def test_unsupported_architectures_are_refused():
    with pytest.raises(ValueError, match="model_type"):
        config_from_hf({"model_type": "gpt2"})
    base = hf_config(load_config("tiny").model, 0, 0)
    with pytest.raises(ValueError, match="RoPE scaling"):
        config_from_hf(base | {"rope_parameters": {"rope_type": "llama3", "rope_theta": 1.0}})
