"""What `mai serve` loads: a run directory or a transformers export of it; user mistakes are one-line errors."""

import openai

from conftest import run_mai
from serve.live_server import Server


def test_export_directory_serves_the_same_model(server, trained_run, tmp_path):
    hf_dir = tmp_path / "hf"
    run_mai("export", "hf", str(trained_run.path), str(hf_dir))
    exported = Server(hf_dir)
    try:
        answers = []
        for url, model in ((server.url, server.model), (exported.url, exported.model)):
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
            answers.append(client.completions.create(model=model, prompt="ROMEO:", max_tokens=16, temperature=0))
        assert answers[1].model == "hf" and answers[0].choices[0].text == answers[1].choices[0].text
    finally:
        exported.stop()


def test_user_mistakes_are_one_line_errors(trained_run, tmp_path):
    cases = [
        (["serve", str(tmp_path / "missing")], "not a directory"),
        (["serve", str(tmp_path)], "neither a run directory"),
        (["serve", str(trained_run.path), "--api-key-env", "MAI_UNSET_KEY_FOR_TEST"], "MAI_UNSET_KEY_FOR_TEST"),
        (["gateway", str(tmp_path / "missing.toml")], "does not exist"),
    ]
    (tmp_path / "bad.toml").write_text("[models.x]\nbackends = []\n")
    cases.append((["gateway", str(tmp_path / "bad.toml")], "models.x.backends"))
    for args, phrase in cases:
        result = run_mai(*args, check=False)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and phrase in lines[0], result.stderr
