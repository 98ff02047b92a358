"""`mai data prepare` on datatrove's cluster executors writes the shards a local run writes.

Slurm: its commands are played by scripts. The stand-in sbatch queues each job and answers with
its id, as sbatch does; `run_queue` then plays the cluster and runs the queued jobs here, array task
by array task. So the whole path runs for real: datatrove's launch scripts, `launch_pickled_pipeline`
in fresh processes, mai's own steps unpickled there, and the reruns of `mai data prepare` that pick
up finished work. The queue runs in submission order, which every dependency allows; the test
checks that each stage asked for its dependency.

Ray: a local Ray instance, when the ray package is installed (it is not a dependency of mai), and
a task that fails there.
"""

import gzip
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from datatrove.pipeline.readers import JsonlReader

from conftest import run_mai
from mai.config import load_config
from mai.data.executors import Stages
from mai.errors import MaiError
from mai.run import RunDir
from slurm_stand_in import slurm_stand_in

SETTINGS = [
    'data.sources=[{name = "shakespeare", max_mb = 0.3}]',
    "data.tasks=2",
    "data.exact_dedup=false",  # fewer stages, fewer jobs: filter, clean and shards are mai's own steps
    "data.minhash_dedup=false",
    "tokenizer.sample_mb=0.3",
]
SLURM = ['data.executor="slurm"', 'data.executor_options={partition = "cpu", time = "01:00:00"}']


def cancel(env: dict, job: int) -> None:
    (Path(env["SLURM_STAND_IN"]) / "queue" / f"{job:06d}").unlink()


def run_queue(env: dict, failing: tuple[int, ...] = ()) -> int:
    """Run the queued jobs, oldest first, each array task in turn; return how many ran.

    A job in `failing` fails without running. As on Slurm, a job waiting (afterok) for a failed or
    cancelled job stays queued for good, with reason DependencyNeverSatisfied, and one waiting for a
    job still queued stays queued.
    """
    folder = Path(env["SLURM_STAND_IN"])
    submissions = (folder / "submissions").read_text().splitlines()
    failed = folder / "failed"
    ran = 0
    for job in sorted(path for path in (folder / "queue").iterdir() if not path.suffix):
        # in sbatch's arguments (a stage's tasks) or in the script (its stats merge)
        waits_for = re.search(r"--dependency=afterok:(\d+)\b", submissions[int(job.name) - 1] + job.read_text())
        if waits_for and waits_for.group(1) in (failed.read_text().split() if failed.exists() else []):
            job.with_suffix(".never").touch()
            continue
        if waits_for and (job.parent / f"{int(waits_for.group(1)):06d}").exists():
            continue
        if int(job.name) in failing:
            with failed.open("a") as f:
                f.write(f"{int(job.name)}\n")
        else:
            run_job(job, env)
            ran += 1
        job.unlink()
    return ran


def run_job(job: Path, env: dict) -> None:
    first, last = re.search(r"^#SBATCH --array=(\d+)-(\d+)", job.read_text(), re.M).groups()
    for task in range(int(first), int(last) + 1):
        task_env = {**env, "SLURM_ARRAY_TASK_ID": str(task), "SLURM_JOB_ID": job.name, "SLURM_NODELIST": "node"}
        done = subprocess.run(["bash", str(job)], env=task_env, capture_output=True, text=True)
        assert done.returncode == 0, f"job {job.name} task {task}:\n{done.stdout}{done.stderr}"


def prepare(run: Path, env: dict | None = None, finishes: bool = False) -> str:
    """`mai data prepare RUN`; its stderr. Until the last step is done, it exits 2 asking for a rerun."""
    result = run_mai("data", "prepare", str(run), env=env, check=finishes)
    if not finishes:
        assert result.returncode == 2 and "are not finished; rerun `mai data prepare` when they are" in result.stderr
    return result.stderr


def init(run: Path, settings: list[str]) -> Path:
    run_mai("init", str(run), *(arg for setting in settings for arg in ("--set", setting)))
    return run


def shard_hashes(run: Path) -> list[str]:
    return [shard.sha256 for shard in RunDir(run).read_manifest().shards]


def local_shard_hashes(tmp_path: Path) -> list[str]:
    local = init(tmp_path / "local_run", SETTINGS)
    prepare(local, finishes=True)
    return shard_hashes(local)


@pytest.mark.slow  # plays a Slurm cluster through datatrove's launch scripts
def test_slurm_stages_wait_for_each_other_and_reruns_finish_the_local_shards(tmp_path):
    env = slurm_stand_in(tmp_path / "slurm")
    submissions = tmp_path / "slurm" / "submissions"
    run = init(tmp_path / "slurm_run", SETTINGS + SLURM)

    prepare(run, env)
    # Jobs 1 and 3 are the filter and clean stages' tasks, 2 and 4 their stats merges.
    jobs = submissions.read_text().splitlines()
    assert ["--export" in job for job in jobs] == [True, False, True, False]
    assert "--dependency" not in jobs[0] and "--dependency=afterok:1 " in jobs[2]

    impatient = prepare(run, env)  # before any job ran: nothing is submitted twice
    assert "data: filter, Slurm job 1 still queued or running" in impatient
    assert "data: clean, Slurm job 3 still queued or running" in impatient
    assert submissions.read_text().splitlines() == jobs

    config = run / "config.toml"
    original = config.read_text()
    config.write_text(original.replace("language_threshold = 0.65", "language_threshold = 0.6"))
    changed = run_mai("data", "prepare", str(run), env=env, check=False)
    assert changed.returncode == 2
    assert changed.stderr.startswith(
        "error: the data settings changed (data.language_threshold), and redoing the data now would race "
        "Slurm jobs 1, 3 of the last run"
    )
    config.write_text(original)

    cancel(env, 3)  # the clean stage's jobs, as scancel would
    cancel(env, 4)
    assert run_queue(env) == 2
    resubmitted = prepare(run, env)
    assert "data: filter done before, skipped" in resubmitted
    assert "data: clean, 2 tasks submitted to slurm again (job 3 has ended; its output is in " in resubmitted
    assert "--dependency" not in submissions.read_text().splitlines()[4]  # filter is done: nothing to wait for

    assert run_queue(env) == 2
    assert "data: shards, 2 tasks submitted to slurm" in prepare(run, env)
    tokenizer = (run / "tokenizer.json").stat().st_mtime_ns
    assert "data: shards, Slurm job 7 still queued or running" in prepare(run, env)
    assert (run / "tokenizer.json").stat().st_mtime_ns == tokenizer  # not trained again under the queued jobs
    assert run_queue(env) == 2
    prepare(run, env, finishes=True)
    assert shard_hashes(run) == local_shard_hashes(tmp_path)


@pytest.mark.slow  # plays a Slurm cluster
def test_a_stage_waiting_for_a_failed_job_is_cancelled_and_submitted_again(tmp_path):
    env = slurm_stand_in(tmp_path / "slurm")
    run = init(tmp_path / "slurm_run", SETTINGS + SLURM)
    prepare(run, env)  # job 1: filter's tasks, 2: its stats merge, 3: clean's tasks, 4: its stats merge
    assert run_queue(env, failing=(1,)) == 0  # the others wait for job 1 for good

    stderr = prepare(run, env)
    assert "data: filter, 2 tasks submitted to slurm again (job 1 has ended" in stderr
    assert "data: clean, Slurm job 3 waited for a job that failed, so could never start: cancelled" in stderr
    assert "--dependency=afterok:5 " in (tmp_path / "slurm" / "submissions").read_text().splitlines()[6]


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed (pip install ray)")
def test_ray_runs_each_stage_to_the_end_and_writes_the_local_shards(tmp_path):
    run = init(tmp_path / "ray_run", [*SETTINGS, 'data.executor="ray"'])
    stderr = prepare(run, finishes=True)
    for stage in ("filter", "clean", "shards"):
        assert re.search(rf"^data: {stage}, 2 tasks in [0-9.]+ s on ray$", stderr, re.M), stderr
    assert shard_hashes(run) == local_shard_hashes(tmp_path)


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed (pip install ray)")
def test_a_failed_ray_task_stops_before_the_next_stage_reads_a_partial_output(tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    with gzip.open(inputs / "0.jsonl.gz", "wt") as f:
        f.write(json.dumps({"id": "0", "text": "a document"}) + "\n")
    (inputs / "1.jsonl.gz").write_bytes(b"not gzip")  # task 1 reads this file, and fails
    stages = Stages(tmp_path / "data", load_config("tiny", ['data.executor="ray"', "data.tasks=2"]).data)
    with pytest.raises(MaiError, match=r"^1 of 2 tasks of the filter stage failed on ray; their logs are in "):
        stages.run("filter", [JsonlReader(str(inputs)), stages.writer("filtered")])


def test_pipeline_workers_do_not_import_torch():
    """Every local worker and Slurm job unpickles mai's steps; torch would add ~1.5 s to each."""
    code = "import sys, mai.data.pipeline, mai.data.prepare; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"
