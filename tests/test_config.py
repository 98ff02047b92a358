import pytest

from conftest import run_mai
from mai.config import apply_overrides, config_to_toml, load_config, preset_names, validate_config
from mai.errors import MaiError


def test_every_preset_loads_and_round_trips_through_toml():
    import tomllib

    for name in preset_names():
        config = load_config(name)
        assert config.preset == name
        assert validate_config(tomllib.loads(config_to_toml(config))) == config


def test_overrides_parse_toml_literals():
    config = load_config("tiny", ["model.n_layers=3", "train.lr=1e-4", "model.qk_norm=true", 'data.sources=["bible"]'])
    assert config.model.n_layers == 3 and config.train.lr == 1e-4 and config.model.qk_norm
    assert [s.name for s in config.data.sources] == ["bible"] and config.data.sources[0].kind == "corpus"


def test_unknown_preset_lists_the_presets():
    with pytest.raises(MaiError, match="unknown preset 'nope'.*tiny"):
        load_config("nope")


def test_unknown_key_lists_valid_keys_and_suggests():
    with pytest.raises(MaiError, match=r"unknown config key 'model.n_layer'.*n_layers.*Did you mean 'n_layers'"):
        load_config("tiny", ["model.n_layer=4"])
    with pytest.raises(MaiError, match="unknown config key 'trian.steps'"):
        load_config("tiny", ["trian.steps=4"])


def test_bad_values_name_the_field():
    with pytest.raises(MaiError, match="model.n_layers"):
        load_config("tiny", ["model.n_layers=0"])
    with pytest.raises(MaiError, match="train.schedule"):
        load_config("tiny", ["train.schedule=linear"])
    with pytest.raises(MaiError, match="divisible"):
        load_config("tiny", ["model.n_heads=3"])
    with pytest.raises(MaiError, match="seq_len"):
        load_config("tiny", ["train.seq_len=1024"])
    with pytest.raises(MaiError, match="section.key=value"):
        load_config("tiny", ["n_layers"])
    with pytest.raises(MaiError, match="train.lr: Input should be a finite number"):
        load_config("tiny", ["train.lr=inf"])
    with pytest.raises(MaiError, match="model.n_layers: Input should be a valid integer"):
        load_config("tiny", ["model.n_layers=true"])  # not silently 1
    assert load_config("tiny", ["train.lr=1"]).train.lr == 1.0  # an integer is a fine float


def test_unknown_key_in_a_toml_file(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text("[model]\nd_modle = 64\n")
    with pytest.raises(MaiError, match="unknown config key 'model.d_modle'.*valid keys"):
        load_config(str(path))


def test_derived_sizes():
    model = load_config("tiny").model
    assert model.head_dim == 64 and model.kv_heads == 2
    assert model.hidden_dim == 768  # 8/3 · 256 rounded up to a multiple of 256
    assert apply_overrides(load_config("tiny"), ["model.ffn_dim=100"]).model.hidden_dim == 100


def test_data_sources_are_checked_when_the_config_is_validated():
    with pytest.raises(MaiError, match="unknown data source 'nope'; choose from shakespeare, bible, python-stdlib"):
        load_config("tiny", ['data.sources=[{name = "nope", kind = "corpus"}]'])
    with pytest.raises(MaiError, match="unknown data source 'nope'"):
        load_config("tiny", ['data.sources=["nope"]'])
    own = load_config("tiny", ['data.sources=[{name = "nope", kind = "text", path = "/data/nope"}]'])
    assert own.data.sources[0].name == "nope"  # a path is checked by `mai data prepare`, not here
    with pytest.raises(MaiError, match="source name 'bible' is used twice"):
        load_config("tiny", ['data.sources=["bible", {name = "bible", kind = "text", path = "/data/bible"}]'])


def test_unreadable_config_files_are_one_line_errors(tmp_path, monkeypatch):
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe[model]\n")
    with pytest.raises(MaiError, match="binary.toml is not a TOML file \\(not UTF-8 text\\)"):
        load_config(str(binary))
    with pytest.raises(MaiError, match="is a directory, not a TOML file"):
        load_config(str(tmp_path))
    scalar = tmp_path / "scalar.toml"
    scalar.write_text("model = 3\n")
    with pytest.raises(MaiError, match="config section 'model' is 3, not a table"):
        load_config(str(scalar), ["model.n_layers=2"])
    monkeypatch.chdir(tmp_path)
    (tmp_path / "small").mkdir()  # a folder named like a preset does not hide the preset
    assert load_config("small").preset == "small"


def test_explain_documents_every_key_with_its_value_type_bounds_and_default():
    out = run_mai("config", "show", "tiny", "--explain", "--set", "train.steps=70").stdout
    assert "  steps = 70    (int, > 0, default 200)\n      Optimizer steps.\n" in out
    assert "  n_layers = 6    (int, > 0, ≤ 4096)\n      Number of transformer blocks.\n" in out
    assert '  precision = "auto"    (one of auto, fp32, bf16)\n' in out
    config = load_config("tiny")
    for section in ("model", "data", "tokenizer", "train", "sample"):
        assert f"\n[{section}]  " in out
        keys = type(getattr(config, section)).model_fields
        assert all(f"\n  {key} = " in out for key in keys), section
