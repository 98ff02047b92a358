"""Hugging Face interop on real weights: the demo model exported, and SmolLM2 imported."""

import stat

import pytest
import torch
from safetensors.torch import load_file

from conftest import copy_run, run_mai, smollm2_dir
from mai.loading import load_run_model
from mai.run import RunDir, default_mode

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "hf"
    run_mai("export", "hf", str(trained_run.path), str(out))
    return out


def test_transformers_logits_and_greedy_generation_match(trained_run, exported):
    ours, _, tokenizer = load_run_model(trained_run)
    peer = transformers.AutoModelForCausalLM.from_pretrained(exported).eval()
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(exported)
    text = "ROMEO: But soft, what light through yonder window breaks?"
    ids = tokenizer.encode(text)
    assert hf_tokenizer(text).input_ids == ids and ids[0] == tokenizer.bos_id
    tokens = torch.tensor([ids])
    with torch.no_grad():
        torch.testing.assert_close(ours(tokens), peer(tokens).logits, atol=1e-4, rtol=0)
        peer_out = peer.generate(tokens, max_new_tokens=30, do_sample=False, eos_token_id=None, pad_token_id=0)
    ours_out = run_mai(
        "generate",
        str(trained_run.path),
        "--prompt",
        text,
        "--temperature",
        "0",
        "--max-new-tokens",
        "30",
        "--precision",
        "fp32",
    )
    assert ours_out.stdout == hf_tokenizer.decode(peer_out[0], skip_special_tokens=True) + "\n"


def test_export_import_export_is_identical(exported, tmp_path):
    run_mai("import", "hf", str(exported), str(tmp_path / "run"))
    run_mai("export", "hf", str(tmp_path / "run"), str(tmp_path / "again"))
    first, second = load_file(exported / "model.safetensors"), load_file(tmp_path / "again" / "model.safetensors")
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    assert (exported / "tokenizer.json").read_text() == (tmp_path / "again" / "tokenizer.json").read_text()


def test_import_refuses_to_overwrite_a_run(exported, trained_run):
    result = run_mai("import", "hf", str(exported), str(trained_run.path), check=False)
    assert result.returncode == 2 and "already holds a run" in result.stderr


def test_run_commands_on_an_export_point_to_the_commands_that_take_it(exported, trained_run):
    result = run_mai("train", str(exported), check=False)
    assert (
        result.returncode == 2 and "is a transformers checkpoint" in result.stderr and "mai import hf" in result.stderr
    )
    greedy = ["--prompt", "ROMEO:", "--temperature", "0", "--max-new-tokens", "12"]
    from_export = run_mai("generate", str(exported), *greedy)  # generate and chat take an export as it is
    assert from_export.stdout == run_mai("generate", str(trained_run.path), *greedy).stdout


def test_export_refuses_to_overwrite_anything(trained_run, tmp_path):
    """Into another run, a run's checkpoint folder, or a directory holding someone's files: refused."""
    other = copy_run(trained_run, tmp_path / "other")
    user_model = tmp_path / "user_model"
    user_model.mkdir()
    (user_model / "config.json").write_text("{}")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    targets = {
        other.path: "inside the run directory",
        other.checkpoint_dir(30): "inside the run directory",
        user_model: "is not empty",
        user_model / "config.json": "is a file",
        user_model / "config.json" / "sub": "is a file",
    }
    for target, reason in targets.items():
        result = run_mai("export", "hf", str(trained_run.path), str(target), check=False)
        assert result.returncode == 2 and reason in result.stderr, result.stderr
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_broken_weight_files_are_one_line_errors(exported, tmp_path):
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    for f in exported.iterdir():
        (truncated / f.name).write_bytes(f.read_bytes())
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    short_gguf = tmp_path / "short.gguf"
    short_gguf.write_bytes(b"GGUF")
    for source, phrase in ((truncated, "not a readable safetensors file"), (short_gguf, "cannot read this GGUF")):
        result = run_mai("import", "hf", str(source), str(tmp_path / "run"), check=False)
        assert result.returncode == 2 and phrase in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert not (tmp_path / "run").exists()


def test_exported_files_get_the_umask_mode(exported):
    """tempfile and safetensors create 0600 files; an export is meant to be read by other users (a server)."""
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in exported.iterdir()}
    assert "model.safetensors" in modes and modes == dict.fromkeys(modes, default_mode())


@pytest.mark.slow  # dequantizes SmolLM2 twice
def test_smollm2_imported_from_gguf_matches_transformers(tmp_path):
    source = smollm2_dir()
    run_mai("import", "hf", str(source), str(tmp_path / "smol"))
    ours, config, tokenizer = load_run_model(RunDir(tmp_path / "smol"))
    assert config.model.n_layers == 30 and config.model.kv_heads == 3 and config.model.vocab_size == 49152
    gguf = next(source.glob("*.gguf")).name
    peer = transformers.AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf, dtype=torch.float32).eval()
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(source, gguf_file=gguf)
    text = "The capital of France is"
    assert tokenizer.encode(text) == hf_tokenizer(text).input_ids
    tokens = torch.tensor([tokenizer.encode(text)])
    with torch.no_grad():
        torch.testing.assert_close(ours(tokens), peer(tokens).logits, atol=1e-4, rtol=0)
    completion = run_mai(
        "generate", str(tmp_path / "smol"), "--prompt", text, "--temperature", "0", "--max-new-tokens", "8"
    )
    assert "Paris" in completion.stdout
