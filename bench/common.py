"""Shared benchmark helpers: machine description, matmul probe, interleaved rounds, result files.

Our machines are shared and noisy, so every bench interleaves our arm and the peer's, repeats
rounds, reports median and best, and records a matmul probe beside each round.
"""

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"


def machine() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu": cpu,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__,
    }


def machine_slug() -> str:
    info = machine()
    if info["gpu"]:
        return info["gpu"].lower().replace("nvidia ", "").replace(" ", "-")
    return f"cpu{info['cores']}-{info['cpu'].split()[0].lower()}"


def matmul_probe(size: int = 1024, dtype: torch.dtype = torch.float32, seconds: float = 0.5) -> float:
    """Measured GFLOP/s of a square matmul (best of repeated timings)."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b  # warm up the kernel
    best, deadline = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def probe_round(size: int = 1024) -> dict:
    return {"fp32_gflops": matmul_probe(size, torch.float32), "bf16_gflops": matmul_probe(size, torch.bfloat16)}


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "best": max(values), "rounds": values}


def write_result(name: str, record: dict) -> Path:
    today = date.today().isoformat()
    record = {
        "bench": name,
        "date": today,
        "machine": machine(),
        "command": " ".join([sys.executable, *sys.argv]),
    } | record
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}_{today}_{machine_slug()}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def demo_tokens(preset: str = "tiny"):
    """Real token ids: the tiny preset's Shakespeare, prepared once into bench/.data/."""
    from mai.run import RunDir

    run = RunDir(Path(__file__).parent / ".data" / preset)
    if not run.manifest_path.is_file():
        mai = str(Path(sys.executable).parent / "mai")
        if not run.config_path.is_file():
            subprocess.run([mai, "init", str(run.path), "--preset", preset, "--set", "data.max_mb=1.0"], check=True)
        subprocess.run([mai, "data", "prepare", str(run.path)], check=True, stdout=subprocess.DEVNULL)
    return run.read_tokens("train"), run.read_tokens("val")
