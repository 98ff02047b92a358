"""The data pipeline survives kill -9, does not depend on how many workers run it, and keeps
datatrove's logs out of the console."""

import os
import shutil
import signal
import subprocess
import time

import pytest

from conftest import FAST, MAI, PIPELINE_STAGES, run_mai
from mai.config import load_config
from mai.data.executors import Stages
from mai.data.stats import step_table
from mai.run import RunDir
from mai.stages import init_run


def shard_digests(run: RunDir) -> list[tuple[str, int, str]]:
    return sorted((s.split, s.tokens, s.sha256) for s in run.read_manifest().shards)


def new_run(path, *overrides) -> RunDir:
    run = RunDir(path)
    init_run(run, load_config("tiny", FAST + list(overrides)))
    return run


def test_one_or_two_workers_give_the_same_shards(prepared_run, tmp_path):
    assert load_config("tiny", FAST).data.workers == 2
    run = new_run(tmp_path / "one", "data.workers=1")
    result = run_mai("data", "prepare", str(run.path))
    assert shard_digests(run) == shard_digests(prepared_run)

    # One line per stage and nothing else: no progress bar of datatrove's (the dedup stages draw
    # them unasked) when stderr is not a terminal; each task's log, datatrove's INFO lines and
    # stats, only in the stage's logs/.
    lines = result.stderr.splitlines()
    assert [line.split(",")[0] for line in lines] == [f"data: {stage}" for stage in (*PIPELINE_STAGES, "shards")], (
        result.stderr
    )
    task_log = run.data_dir / "work" / "logs" / "filter" / "logs" / "task_00000.log"
    assert "Processing done for rank=0" in task_log.read_text()
    rerun = run_mai("data", "prepare", str(run.path))
    assert rerun.stderr.splitlines() == [
        f"data: {stage} done before, skipped" for stage in (*PIPELINE_STAGES, "shards")
    ]


@pytest.mark.slow  # two pipelines and a kill -9
def test_kill_9_mid_pipeline_then_rerun(prepared_run, tmp_path):
    run = new_run(tmp_path / "killed")
    process = subprocess.Popen(
        [MAI, "data", "prepare", str(run.path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    markers = run.data_dir / "work" / "logs" / "minhash_signatures" / "completions"
    deadline = time.time() + 300
    while not (markers.is_dir() and any(markers.iterdir())):
        assert process.poll() is None and time.time() < deadline, "the pipeline ended before it could be killed"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not run.manifest_path.exists()
    finished = sorted((run.data_dir / "work" / "logs" / "filter" / "completions").iterdir())
    filtered = sorted((run.data_dir / "work" / "filtered").glob("*.jsonl.gz"))
    before = {p: p.stat().st_mtime_ns for p in finished + filtered}
    assert len(finished) == 4

    run_mai("data", "prepare", str(run.path))
    assert shard_digests(run) == shard_digests(prepared_run)
    assert {p: p.stat().st_mtime_ns for p in before} == before, "finished tasks were redone"


def test_step_counts_cover_tasks_finished_before_a_kill(prepared_run, tmp_path):
    """datatrove's stats.json sums only the tasks of its last invocation; the table sums every task's own file."""
    config = prepared_run.read_config().data
    shutil.copytree(prepared_run.data_dir / "work" / "logs", tmp_path / "work" / "logs")
    for stats in (tmp_path / "work" / "logs").glob("*/stats.json"):
        shutil.copy(max((stats.parent / "stats").glob("*.json")), stats)  # as if the others ran before a kill
    table = step_table(Stages(tmp_path, config))
    manifest_steps = [step.model_dump() for step in prepared_run.read_manifest().steps]
    assert table == step_table(Stages(prepared_run.data_dir, config)) == manifest_steps
