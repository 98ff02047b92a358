"""The cluster planner: its memory against the peak a real FSDP2/TP run allocates, its GPU-hours
against Llama 3.1 405B's published run, and its layouts for Megatron-LM's 462B and mai-1."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_mai
from mai.config import ModelConfig, load_config
from mai.plan import GPUS, Assumptions, Layout, evaluate, plan, training_time

# Llama 3.1 405B (Llama 3 paper, tables 3 and 4): 16,384 H100, TP 8 × PP 16 × DP 128, 16M-token
# batches of 8,192-token sequences, 15.6T tokens, 38-43% MFU; 30.84M GPU-hours on the model card.
LLAMA_405B = ModelConfig(
    vocab_size=128256,
    d_model=16384,
    n_layers=126,
    n_heads=128,
    n_kv_heads=8,
    ffn_dim=53248,
    max_seq_len=8192,
    rope_theta=500000.0,
    tie_embeddings=False,
)
# Megatron-LM's README weak-scaling table: 462B GPT (144 heads, hidden 18432, 112 layers, vocab
# 131072, seq 4096) on 6,144 H100 at 47% MFU, batch 3,072. A GPT MLP of 4·hidden is SwiGLU's 8/3.
MEGATRON_462B = ModelConfig(
    vocab_size=131072,
    d_model=18432,
    n_layers=112,
    n_heads=144,
    n_kv_heads=144,
    ffn_dim=49152,
    max_seq_len=4096,
    tie_embeddings=False,
)
GiB = 2**30


def test_gpu_hours_of_llama_405b_land_near_the_published_figure():
    a = Assumptions(mfu=0.40, batch_tokens=16 * 2**20)
    layout = evaluate(LLAMA_405B, GPUS["h100"], 8192, Layout(tp=8, pp=16, dp=128, checkpointing="none"), a)
    gpu_hours = training_time(LLAMA_405B, 16384, 8192, layout, 15.6e12, a)["gpu_hours"]
    print(f"Llama 3.1 405B: planned {gpu_hours / 1e6:.2f}M GPU-hours, published 30.84M")
    assert gpu_hours == pytest.approx(30.84e6, rel=0.15)


@pytest.mark.parametrize(
    ("model", "gpus", "seq_len", "a"),
    [
        (MEGATRON_462B, 6144, 4096, Assumptions(mfu=0.47, batch_tokens=3072 * 4096)),
        (load_config("mai-1").model, 6144, 8192, Assumptions(batch_tokens=16 * 2**20)),
    ],
    ids=["megatron-462b", "mai-1"],
)
def test_the_recommended_layout_fits_an_h100_and_the_rest_say_why_not(model, gpus, seq_len, a):
    layouts = plan(model, gpus, GPUS["h100"], seq_len, a)
    best = layouts[0]
    assert best.fits and best.implemented and best.total_memory <= 80 * GiB
    assert best.tp * best.dp == gpus
    unfit = [x for x in layouts if not x.fits]
    assert unfit and all(x.why_not for x in unfit)
    no_checkpointing = next(x for x in unfit if (x.tp, x.pp, x.checkpointing) == (8, 1, "none"))
    assert "activations" in no_checkpointing.why_not and no_checkpointing.total_memory > 80 * GiB


def test_mai_plan_prints_assumptions_layouts_and_a_recommendation():
    out = run_mai("plan", "--preset", "mai-1", "--gpus", "6144", "--gpu", "h100", "--tokens", "10T").stdout
    for line in ("assumptions:", "MFU 0.40", "does not fit:", "recommended: tp 8 × pp 1 × dp 768", "GPU-hours"):
        assert line in out
    report = json.loads(run_mai("plan", "--preset", "mai-1", "--gpus", "6144", "--json").stdout)
    assert report["recommended"]["fits"] and report["cost"]["days"] > 0
    given = run_mai("plan", "--preset", "llama3-8b", "--gpus", "64", "--layout", "tp=8,dp=8", "--ac", "full").stdout
    assert given.count(" fits") == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--gpu", "h800"], "--gpu must be one of h100"),
        (["--tokens", "lots"], "--tokens takes a count"),
        (["--mfu", "40"], "--mfu is a fraction"),
        (["--gpus", "64", "--layout", "tp=8,dp=4"], "uses 32 GPUs"),
        (["--layout", "tp8"], "--layout takes tp=N"),
    ],
)
def test_mai_plan_refuses_bad_options_in_one_line(args, message):
    result = run_mai("plan", *args, check=False)
    assert result.returncode != 0 and message in result.stderr


def test_model_info_shows_training_memory_by_part():
    out = run_mai("model", "info", "--preset", "llama3-8b").stdout
    assert "training, one device" in out and "activations" in out and "logits and loss" in out


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["tiny", "small"])
@pytest.mark.parametrize(
    "layout", [[], ["parallel.tp=2"], ["train.loss_chunk=256"]], ids=["fsdp", "tp", "fsdp-chunked-loss"]
)
def test_planned_memory_is_within_15_percent_of_the_measured_peak(preset, layout):
    """Two gloo processes train three steps; the peak bytes torch allocated (its profiler's memory
    events, as torch.cuda.max_memory_allocated would count on a GPU) against mai.plan's figure."""
    script = Path(__file__).parent / "train" / "peak_memory.py"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(script)]
    result = subprocess.run(
        [*command, preset, "train.batch_size=8", "train.seq_len=256", *layout],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    planned = sum(figures["planned"].values())
    print(f"{preset} {layout}: measured {figures['measured'] / 2**20:.0f} MiB, planned {planned / 2**20:.0f} MiB")
    assert planned == pytest.approx(figures["measured"], rel=0.15)
