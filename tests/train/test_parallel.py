"""Training under torchrun with the gloo backend on CPU processes: FSDP2, tensor parallelism and both
give one process's losses and weights, a sharded checkpoint resumes at another world size, and a
run whose rank was killed with SIGKILL resumes to the weights of a run never interrupted."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from conftest import copy_run, metric_records, run_mai
from mai.config import apply_overrides
from mai.loading import checkpoint_weights
from mai.run import RunDir, atomic_write_text
from slurm_stand_in import slurm_stand_in

pytestmark = pytest.mark.slow

# 20 steps of the tiny model on short windows, a record and a checkpoint every few steps.
SHORT = [
    "train.steps=20",
    "train.lr=1e-3",  # below the tiny preset's 3e-3, whose loss spike at this batch amplifies rounding
    "train.batch_size=4",
    "train.seq_len=64",
    "train.log_every=1",
    "train.eval_every=10",
    "train.checkpoint_every=10",
]
LAYOUTS = {
    "fsdp": (2, []),
    "tp": (2, ["parallel.tp=2"]),
    "fsdp+tp": (4, ["parallel.tp=2", "parallel.dp_shard=2"]),
}


def torchrun(processes: int, *args: str) -> subprocess.Popen:
    """`torchrun --standalone --nproc-per-node N -m mai.cli ARGS`, started and not waited for."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    return subprocess.Popen(
        [*command, "-m", "mai.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def train_distributed(run: RunDir, processes: int, overrides: list[str], resume: bool = False) -> None:
    sets = [arg for value in overrides for arg in ("--set", value)]
    process = torchrun(processes, "train", str(run.path), *sets, *(["--resume"] if resume else []))
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr


def losses(run: RunDir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in metric_records(run) if "loss" in r}


def final_weights(run: RunDir) -> dict[str, torch.Tensor]:
    weights, _ = checkpoint_weights(run.latest_checkpoint(), run.read_config().model)
    return weights


def assert_weights_close(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=atol, rtol=0, msg=name)


def rewind(run: RunDir, step: int) -> None:
    """Make the checkpoint at `step` the latest, as if the run had stopped there."""
    for later in run.checkpoints_dir.glob("step_*"):
        if int(later.name.removeprefix("step_")) > step:
            for path in sorted(later.rglob("*"), reverse=True):
                path.unlink() if path.is_file() else path.rmdir()
            later.rmdir()
    atomic_write_text(run.checkpoints_dir / "latest", run.checkpoint_dir(step).name + "\n")


@pytest.fixture(scope="module")
def one_process(prepared_run, tmp_path_factory) -> RunDir:
    run = copy_run(prepared_run, tmp_path_factory.mktemp("one") / "run")
    run_mai("train", str(run.path), *[arg for value in SHORT for arg in ("--set", value)])
    return run


@pytest.fixture(scope="module")
def distributed(prepared_run, tmp_path_factory) -> dict[str, RunDir]:
    """The same run trained under each layout, once for the module."""
    runs = {}
    for name, (processes, overrides) in LAYOUTS.items():
        runs[name] = copy_run(prepared_run, tmp_path_factory.mktemp(name.replace("+", "_")) / "run")
        train_distributed(runs[name], processes, SHORT + overrides)
    return runs


@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_layout_gives_one_process_losses_and_weights(one_process, distributed, layout):
    run = distributed[layout]
    expected, got = losses(one_process), losses(run)
    assert sorted(got) == list(range(1, 21))
    for step, loss in expected.items():
        assert got[step] == pytest.approx(loss, abs=1e-5), step
    assert_weights_close(final_weights(run), final_weights(one_process), atol=1e-5)


def test_an_untied_head_in_its_own_fsdp2_group_matches_one_process(prepared_run, tmp_path):
    """mai-1 and llama3-8b keep a separate output head, which FSDP2 shards as a group of its own; the
    chunked loss calls it chunk by chunk."""
    untied = [*SHORT, "model.tie_embeddings=false", "train.steps=6"]
    one = copy_run(prepared_run, tmp_path / "one")
    run_mai("train", str(one.path), *[arg for value in untied for arg in ("--set", value)])
    run = copy_run(prepared_run, tmp_path / "fsdp")
    train_distributed(run, 2, [*untied, "train.loss_chunk=100"])  # the head called per chunk, and again in backward
    assert losses(run) == pytest.approx(losses(one), abs=1e-5)
    assert_weights_close(final_weights(run), final_weights(one), atol=1e-5)


def test_a_two_process_checkpoint_resumes_in_one_process(one_process, distributed, tmp_path):
    run = copy_run(distributed["fsdp"], tmp_path / "run")
    rewind(run, 10)
    run_mai("train", str(run.path), "--resume")
    assert losses(run)[11] == pytest.approx(losses(one_process)[11], abs=1e-6)
    assert_weights_close(final_weights(run), final_weights(one_process), atol=1e-5)


def test_a_one_process_checkpoint_resumes_in_two(one_process, tmp_path):
    run = copy_run(one_process, tmp_path / "run")
    rewind(run, 10)
    train_distributed(run, 2, [], resume=True)
    assert losses(run)[11] == pytest.approx(losses(one_process)[11], abs=1e-6)
    assert run.latest_checkpoint().joinpath("sharded").is_dir()
    assert_weights_close(final_weights(run), final_weights(one_process), atol=1e-5)


def test_a_rank_killed_mid_run_resumes_to_the_uninterrupted_weights(prepared_run, tmp_path):
    """SIGKILL one rank once step 20 of 60 is saved: torchrun stops the other, and a relaunch with
    --resume ends on the weights of a run that was never stopped."""
    overrides = [*SHORT, "train.steps=60"]
    uninterrupted = copy_run(prepared_run, tmp_path / "uninterrupted")
    train_distributed(uninterrupted, 2, overrides)

    run = copy_run(prepared_run, tmp_path / "killed")
    sets = [arg for value in overrides for arg in ("--set", value)]
    launcher = torchrun(2, "train", str(run.path), *sets)
    while run.latest_checkpoint() is None or run.latest_checkpoint().name < "step_0000020":
        assert launcher.poll() is None, launcher.communicate()[1]
        time.sleep(0.05)
    os.kill(rank_pid(launcher.pid, 1), signal.SIGKILL)
    launcher.communicate(timeout=120)
    assert launcher.returncode != 0
    assert run.latest_checkpoint().name < "step_0000060", "the run finished before the kill"

    train_distributed(run, 2, [], resume=True)
    assert losses(run) == pytest.approx(losses(uninterrupted), abs=1e-6)
    assert_weights_close(final_weights(run), final_weights(uninterrupted), atol=0)


def rank_pid(launcher: int, rank: int) -> int:
    """The process torchrun started for `rank` (a child of the launcher, RANK in its environment)."""
    children = subprocess.run(["pgrep", "-P", str(launcher)], capture_output=True, text=True).stdout.split()
    for pid in children:
        environ = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
        if f"RANK={rank}".encode() in environ:
            return int(pid)
    raise AssertionError(f"torchrun ({launcher}) has no process for rank {rank} among {children}")


def test_the_slurm_script_trains_the_run_under_torchrun(prepared_run, one_process, tmp_path):
    """`mai launch slurm --submit` through a stand-in sbatch; the queued script, run as its node would
    run it, starts torchrun and trains the run as two FSDP2 processes do."""
    env = slurm_stand_in(tmp_path / "slurm")
    run = copy_run(prepared_run, tmp_path / "run")
    run.write_config(apply_overrides(run.read_config(), SHORT))
    launch = ["launch", "slurm", str(run.path), "--nodes", "1", "--gpus-per-node", "2", "--time", "00:10:00"]
    out = run_mai(*launch, "--port", str(free_port()), "--submit", env=env).stdout
    assert "Submitted batch job 1" in out
    job = tmp_path / "slurm" / "queue" / "000001"
    assert "#SBATCH --nodes=1" in job.read_text() and "#SBATCH --time=00:10:00" in job.read_text()
    node = {**env, "SLURM_JOB_ID": "1", "SLURM_JOB_NODELIST": "localhost", "SLURM_NNODES": "1"}
    done = subprocess.run(["bash", str(job)], env=node, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    got = losses(run)
    assert got == pytest.approx(losses(one_process), abs=1e-5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
