"""bench/gpu.py --tiny on the CPU: the script a device session runs must work before device time is spent."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).parents[1] / "bench"


@pytest.mark.slow
def test_gpu_bench_runs_end_to_end_at_a_toy_size(tmp_path):
    out = tmp_path / "gpu.json"
    command = [sys.executable, "gpu.py", "--tiny", "--rounds", "1", "--steps", "2", "--new-tokens", "8"]
    subprocess.run([*command, "--out", str(out)], cwd=BENCH, check=True, timeout=840)
    result = json.loads(out.read_text())

    assert result["bench"] == "gpu" and result["config"] == "tiny"
    assert result["met"] is None and result["goals"] == []  # a toy size judges nothing
    training = result["training"]
    arms = {"ours_eager", "ours_compiled", "transformers_eager", "transformers_compiled"}
    assert set(training["mfu"]) == arms
    assert all(0 < arm["median"] < 1 for arm in training["mfu"].values())
    assert training["max_logits_diff_vs_transformers"] < 1e-4
    assert training["peak_source"] == "best bf16 matmul probe on this CPU"
    assert set(result["serving"]) == {"concurrency_1", "concurrency_8", "concurrency_32"}
    assert all(r["ours"]["median"] > 0 and r["batched"]["median"] > 0 for r in result["serving"].values())
    assert result["ratio"] == training["ours_compiled_over_transformers_compiled"]["median"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="on CUDA the full bench would run")
def test_gpu_bench_refuses_a_cpu_without_tiny():
    done = subprocess.run([sys.executable, "gpu.py"], cwd=BENCH, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "run it on a CUDA machine, or pass --tiny" in done.stderr
