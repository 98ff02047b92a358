from mai.config import load_config
from mai.model.info import model_info


def test_reference_parameter_counts():
    assert model_info(load_config("phi3-mini").model)["params"] == 3_821_079_552
    assert model_info(load_config("llama3-8b").model)["params"] == 8_030_261_248
    assert abs(model_info(load_config("mai-1").model)["params"] / 500e9 - 1) < 0.02
    assert 25e6 < model_info(load_config("small").model)["params"] < 35e6


def test_breakdown_sums_to_total_and_counts_match_built_model():
    from mai.model.transformer import build_model

    config = load_config("tiny").model
    info = model_info(config)
    assert sum(info["breakdown"].values()) == info["params"]
    assert info["params"] == sum(p.numel() for p in build_model(config).parameters())


def test_flops_follow_the_6n_rule():
    config = load_config("llama3-8b").model
    info = model_info(config, seq_len=8192)
    dense = 6 * (info["params"] - info["breakdown"]["embedding"] - info["breakdown"]["norms"])
    assert info["flops_per_token"] == dense + 12 * 32 * 4096 * 8192
    assert info["memory_bf16_weights_bytes"] == 2 * info["params"]
