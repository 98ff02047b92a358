"""`mai launch slurm`: the sbatch script it writes, and what it refuses before writing one.
tests/train/test_parallel.py runs a written script through torchrun."""

import subprocess

from conftest import copy_run, run_mai
from mai.config import apply_overrides


def test_the_script_runs_torchrun_on_every_node_with_a_rendezvous(prepared_run, tmp_path):
    run = copy_run(prepared_run, tmp_path / "run")
    out = run_mai("launch", "slurm", str(run.path), "--nodes", "4", "--partition", "gpu").stdout
    script = run.path / "launch" / "train.sbatch"
    assert out.strip() == str(script)
    text = script.read_text()
    for line in ("#SBATCH --nodes=4", "#SBATCH --gpus-per-node=8", "#SBATCH --partition=gpu", "--nproc-per-node=8"):
        assert line in text
    assert '--rdzv-endpoint="$head:29500"' in text and "train" in text and text.rstrip().endswith("--resume")
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0


def test_a_layout_the_job_cannot_hold_is_refused(prepared_run, tmp_path):
    run = copy_run(prepared_run, tmp_path / "run")
    run.write_config(apply_overrides(run.read_config(), ["parallel.tp=8", "parallel.dp_shard=3"]))
    narrow = run_mai("launch", "slurm", str(run.path), "--gpus-per-node", "4", check=False)
    assert narrow.returncode != 0 and "keep tensor parallelism within a node" in narrow.stderr
    uneven = run_mai("launch", "slurm", str(run.path), "--nodes", "2", check=False)
    assert uneven.returncode != 0 and "(1 × 3 × 8) must equal the 16 GPUs of 2 nodes × 8" in uneven.stderr
    assert not (run.path / "launch").exists()


def test_submit_without_sbatch_says_where_to_run_it(prepared_run, tmp_path):
    result = run_mai("launch", "slurm", str(prepared_run.path), "--submit", check=False, env={"PATH": str(tmp_path)})
    assert result.returncode != 0 and "sbatch is not on PATH" in result.stderr
