"""The command line as a user meets it: output on stdout, one-line errors with exit code 2, nothing lost."""

import hashlib
import json
import shutil
import subprocess

import pytest

from conftest import MAI, copy_run, run_mai
from mai.data.prepare import read_documents
from mai.loading import save_tokenizer
from mai.tokenizer import train_tokenizer


def snapshot(path):
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.rglob("*")) if p.is_file()}


def assert_user_error(result, *phrases):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for phrase in phrases:
        assert phrase in lines[0]


def test_model_info_reports_exact_counts():
    info = json.loads(run_mai("model", "info", "--preset", "phi3-mini", "--json").stdout)
    assert info["params"] == 3_821_079_552
    assert json.loads(run_mai("model", "info", "--preset", "llama3-8b", "--json").stdout)["params"] == 8_030_261_248
    text = run_mai("model", "info", "--preset", "tiny", "--set", "model.n_layers=2").stdout
    assert "parameters" in text and "FLOPs/token" in text


def test_init_says_what_it_wrote_and_what_comes_next(tmp_path):
    run = tmp_path / "r"
    result = run_mai("init", str(run), "--preset", "small")
    assert result.stdout == f"{run / 'config.toml'}: preset small; next `mai data prepare {run}`\n"


def test_unknown_preset_and_key_are_one_line_errors(tmp_path):
    assert_user_error(run_mai("run", "nope", "--run-dir", str(tmp_path / "r"), check=False), "unknown preset", "tiny")
    assert_user_error(run_mai("init", str(tmp_path / "r"), "--set", "model.n_layer=4", check=False), "n_layers")
    assert not (tmp_path / "r").exists()


def test_usage_errors_are_one_line_naming_the_help(tmp_path):
    assert_user_error(run_mai("generate", check=False), "Missing argument", "`mai generate --help`")
    assert_user_error(run_mai("generate", "r", "--top-p", "2", check=False), "--top-p", "less than or equal to 1")
    assert_user_error(run_mai("generate", "r", "--top-p", "0", check=False), "--top-p must be above 0")
    assert_user_error(run_mai("nosuch", check=False), "No such command 'nosuch'", "`mai --help`")
    assert_user_error(run_mai("model", "info", "--bogus", check=False), "No such option: --bogus")
    result = run_mai(check=False)
    assert result.returncode == 2 and "Usage" in result.stdout + result.stderr


def test_an_empty_path_is_refused_not_taken_as_the_current_folder(tmp_path):
    result = subprocess.run([MAI, "init", ""], capture_output=True, text=True, cwd=tmp_path)
    assert_user_error(result, "an empty path")
    assert list(tmp_path.iterdir()) == []


def test_absurd_model_shapes_are_refused_at_once():
    assert_user_error(run_mai("model", "info", "--set", "model.n_layers=1000000000", check=False), "n_layers", "4096")
    assert_user_error(run_mai("model", "info", "--set", "model.d_model=1000000000000", check=False), "d_model")


def test_missing_run_directory(tmp_path):
    for command in (["train"], ["generate"], ["report"], ["export", "hf"], ["data", "prepare"]):
        args = [*command, str(tmp_path / "missing")] + ([str(tmp_path / "out")] if command == ["export", "hf"] else [])
        assert_user_error(run_mai(*args, check=False), "does not exist")


def test_a_file_where_a_run_directory_goes(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("mine")
    for args in (["init", str(afile)], ["init", str(afile / "sub")], ["eval", "lm-eval-tasks", str(afile)]):
        assert_user_error(run_mai(*args, check=False), "afile is a file")
    assert afile.read_text() == "mine"


def test_run_files_of_the_wrong_shape_are_one_line_errors(trained_run, tmp_path):
    """manifest.json, meta.json and samples.json as an edit or another version of mai could leave them."""
    run = copy_run(trained_run, tmp_path / "run")
    manifest = json.loads(run.manifest_path.read_text())
    del manifest["tokens"]["val"]
    run.manifest_path.write_text(json.dumps(manifest))
    assert_user_error(
        run_mai("data", "stats", str(run.path), check=False), "manifest.json", "missing key 'tokens.val'", "prepare"
    )

    meta_path = run.latest_checkpoint() / "meta.json"
    meta_path.write_text(json.dumps(json.loads(meta_path.read_text()) | {"step": "10"}))
    assert_user_error(
        run_mai("generate", str(run.path), check=False), "meta.json", "step", "fall back to the checkpoint before it"
    )

    run.samples_path.write_text(json.dumps({"checkpoint": "step_0000010", "samples": "none"}))
    run.manifest_path.unlink()
    assert_user_error(run_mai("report", str(run.path), check=False), "samples.json", "temperature")


def test_bad_generate_input_prints_nothing_to_stdout(trained_run):
    run = str(trained_run.path)
    for prompt, phrase in ((b"\xff\xfe", "not valid UTF-8"), ("ROMEO " * 300, "this model's context is 256")):
        result = subprocess.run([MAI, "generate", run, "--prompt", prompt], capture_output=True, text=True)
        assert_user_error(result, phrase)
        assert result.stdout == ""
    result = run_mai("generate", run, "--prompt", "x", "--seed", str(2**64), check=False)
    assert result.returncode == 2 and "--seed" in result.stderr


def test_generate_notes_when_the_context_cuts_the_completion(trained_run):
    result = run_mai("generate", str(trained_run.path), "--prompt", "ROMEO " * 20, "--max-new-tokens", "400")
    note = " ".join(result.stderr.split())
    assert "so the completion stops after at most" in note and "not 400" in note
    assert result.stdout.startswith("ROMEO ")


def test_generate_writes_prompt_and_completion_only(trained_run):
    result = run_mai(
        "generate", str(trained_run.path), "--prompt", "ROMEO:", "--temperature", "0", "--max-new-tokens", "20"
    )
    assert result.stdout.startswith("ROMEO:") and len(result.stdout) > len("ROMEO:\n")
    again = run_mai(
        "generate", str(trained_run.path), "--prompt", "ROMEO:", "--temperature", "0", "--max-new-tokens", "20"
    )
    assert again.stdout == result.stdout
    seeded = [
        run_mai("generate", str(trained_run.path), "--prompt", "The", "--seed", "3", "--max-new-tokens", "20").stdout
        for _ in range(2)
    ]
    assert seeded[0] == seeded[1]
    bad = run_mai("generate", str(trained_run.path), "--prompt", "x", "--precision", "fp16", check=False)
    assert_user_error(bad, "--precision", "'fp16' is not one of 'auto', 'fp32', 'bf16'")


@pytest.mark.slow  # compiles the decode step
def test_generate_compile_writes_what_eager_decoding_writes(trained_run):
    greedy_fp32 = ["generate", str(trained_run.path), "--prompt", "ROMEO:", "--temperature", "0", "--precision", "fp32"]
    compiled = run_mai(*greedy_fp32, "--compile")
    assert compiled.stdout == run_mai(*greedy_fp32).stdout
    assert "compiling the decode step (--compile)" in compiled.stderr


def test_corrupt_shard_is_named_and_nothing_is_overwritten(trained_run, tmp_path):
    run = copy_run(trained_run, tmp_path / "run")
    shard = next(run.shards_dir.glob("train_*.bin"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    before = snapshot(run.path)
    result = run_mai("train", str(run.path), "--resume", "--set", "train.steps=40", check=False)
    assert_user_error(result, shard.name, "corrupt", f"rerun `mai data prepare {run.path}`")
    assert snapshot(run.path) == before
    run_mai("data", "prepare", str(run.path))  # as the error says: the shard is written again
    run.read_tokens("train")


def test_tokenizer_that_does_not_match_the_model(trained_run, tmp_path):
    run = copy_run(trained_run, tmp_path / "run")
    texts = [text for _, text in read_documents(run.data_dir / "work" / "clean")]
    save_tokenizer(train_tokenizer(texts, 8192), run.path)
    before = snapshot(run.path)
    assert_user_error(
        run_mai("generate", str(run.path), "--prompt", "x", check=False), "tokenizer.json", "8192", "4096"
    )
    save_tokenizer(train_tokenizer(texts, 2048), run.path)
    assert_user_error(run_mai("generate", str(run.path), "--prompt", "x", check=False), "not the tokenizer this model")
    assert_user_error(run_mai("train", str(run.path), "--resume", check=False), "tokenizer")
    assert snapshot(run.path).keys() == before.keys()


def test_resume_with_a_changed_model_config(trained_run, tmp_path):
    run = copy_run(trained_run, tmp_path / "run")
    before = snapshot(run.path)
    result = run_mai("train", str(run.path), "--resume", "--set", "model.n_layers=3", check=False)
    assert_user_error(result, "model settings cannot change", "n_layers")
    run.config_path.write_text(run.config_path.read_text().replace("n_layers = 6", "n_layers = 3"))
    result = run_mai("train", str(run.path), "--resume", "--set", "train.steps=40", check=False)
    assert_user_error(result, "different model config", "n_layers")
    run.config_path.write_text(run.config_path.read_text().replace("n_layers = 3", "n_layers = 6"))
    assert snapshot(run.path) == before


@pytest.mark.parametrize("garbage", [b"", b"not json", b'{"step": 1'])
def test_corrupt_checkpoint_metadata(trained_run, tmp_path, garbage):
    run = copy_run(trained_run, tmp_path / "run")
    (run.latest_checkpoint() / "meta.json").write_bytes(garbage)
    assert_user_error(run_mai("generate", str(run.path), "--prompt", "x", check=False), "meta.json", "corrupt")


def test_deleting_a_corrupt_checkpoint_as_advised_falls_back_to_the_one_before(trained_run, tmp_path):
    run = copy_run(trained_run, tmp_path / "run")
    latest = run.latest_checkpoint()
    weights = latest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    for command in (["generate", str(run.path), "--prompt", "x"], ["train", str(run.path), "--resume"]):
        assert_user_error(
            run_mai(*command, check=False), "model.safetensors is corrupt", f"delete {latest} to fall back"
        )
    shutil.rmtree(latest)
    assert run_mai("generate", str(run.path), "--prompt", "x", "--max-new-tokens", "3").stdout.startswith("x")
    result = run_mai("train", str(run.path), "--resume")
    assert "from step 20" in " ".join(result.stderr.split())
    assert run.latest_checkpoint() == latest and (latest / "model.safetensors").is_file()


FROZEN_INTERFACE = {
    "chat": ["--max-tokens", "--precision", "--seed", "--system", "--temperature", "--top-k", "path"],
    "config presets": [],
    "config show": ["--explain", "--set", "preset"],
    "data prepare": ["run_dir"],
    "data stats": ["run_dir"],
    "distill": ["--resume", "--set", "run_dir"],
    "eval compare": ["--chart", "paths"],
    "eval lm-eval": [],
    "eval lm-eval-tasks": ["--limit", "--tasks", "-t", "folder"],
    "eval run": ["--limit", "--out", "--precision", "--tasks", "-t", "path"],
    "eval tasks": [],
    "export gguf": ["--dtype", "out", "run_dir"],
    "export hf": ["--dtype", "out", "run_dir"],
    "gateway": ["config"],
    "generate": [
        "--compile",
        "--max-new-tokens",
        "--precision",
        "--prompt",
        "--seed",
        "--temperature",
        "--top-k",
        "--top-p",
        "run_dir",
    ],
    "import hf": ["run_dir", "source"],
    "init": ["--preset", "--set", "run_dir"],
    "launch slurm": [
        "--account",
        "--gpus-per-node",
        "--nodes",
        "--partition",
        "--port",
        "--submit",
        "--time",
        "run_dir",
    ],
    "model info": ["--json", "--preset", "--set"],
    "plan": [
        "--ac",
        "--batch-tokens",
        "--gpu",
        "--gpus",
        "--json",
        "--layout",
        "--mfu",
        "--preset",
        "--set",
        "--tokens",
    ],
    "quant-eval": ["--decode-tokens", "--text", "--tokens", "ggufs", "run_dir"],
    "report": ["run_dir"],
    "sft": ["--resume", "--set", "run_dir"],
    "run": ["--run-dir", "--set", "preset"],
    "serve": [
        "--api-key-env",
        "--compile",
        "--host",
        "--max-batch",
        "--max-context",
        "--max-waiting",
        "--port",
        "--precision",
        "path",
    ],
    "synth": ["--set", "run_dir"],
    "tokenizer train": ["run_dir"],
    "train": ["--resume", "--set", "run_dir"],
}


def test_command_line_interface_is_frozen():
    """Users script against these names: change them deliberately, here and in the README."""
    import typer.main

    from mai.cli import app

    def walk(command, prefix=""):
        if not hasattr(command, "commands"):
            return {prefix: sorted(o for p in command.params for o in p.opts)}
        return {
            k: v for name, sub in command.commands.items() for k, v in walk(sub, f"{prefix} {name}".strip()).items()
        }

    assert walk(typer.main.get_command(app)) == FROZEN_INTERFACE
