"""Distributed training throughput on CPU: one process against two under torchrun (gloo), and what
activation checkpointing and compile cost or give under FSDP2, all in one run.

Every arm is the `mai train` command a user types, in its own copy of one prepared tiny-tokenizer
run, at the same batch and seq_len; its figure is the median tokens/s mai logged after warm-up:

  one              mai train, one process (torch's threads on every core): the peer
  fsdp / tp        torchrun --nproc-per-node 2, FSDP2 ×2 or TP ×2 (one thread per process)
  fsdp_selective   FSDP2 ×2, selective activation checkpointing
  fsdp_full        FSDP2 ×2, full activation checkpointing
  fsdp_compile     FSDP2 ×2, each block compiled
  one_compile      one process, model and loss compiled

On a 2-core machine two processes share the cores one process uses, so `ratio` (fsdp ÷ one on
tiny) measures what the distributed path costs, not a speed-up; issue 20 sets no goal for it.

    python bench/train_parallel.py [--presets tiny small] [--steps 12]
"""

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import write_result

MAI = str(Path(sys.executable).parent / "mai")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
SHAPES = {"tiny": (8, 256), "small": (4, 512)}  # (batch, seq_len) of every arm
ARMS = {
    "one": (False, []),
    "fsdp": (True, []),
    "tp": (True, ["parallel.tp=2"]),
    "fsdp_selective": (True, ["parallel.activation_checkpoint=selective"]),
    "fsdp_full": (True, ["parallel.activation_checkpoint=full"]),
    "fsdp_compile": (True, ["train.compile=true"]),
    "one_compile": (False, ["train.compile=true"]),
}


def prepare(folder: Path, preset: str) -> Path:
    run = folder / f"{preset}-prepared"
    data = ['data.sources=[{name = "shakespeare", max_mb = 1.0}]', "tokenizer.sample_mb=1.0"]
    subprocess.run([MAI, "init", str(run), "--preset", preset, *sets(data)], check=True, capture_output=True)
    print(f"preparing Shakespeare for {preset} (mai data prepare) ...", flush=True)
    subprocess.run([MAI, "data", "prepare", str(run)], check=True, capture_output=True)
    return run


def sets(overrides: list[str]) -> list[str]:
    return [arg for value in overrides for arg in ("--set", value)]


def arm_tokens_per_s(prepared: Path, preset: str, arm: str, steps: int) -> float:
    """Median tokens/s of the steps after the first two windows (compile and warm-up)."""
    distributed, overrides = ARMS[arm]
    batch, seq_len = SHAPES[preset]
    run = prepared.with_name(f"{preset}-{arm}")
    shutil.copytree(prepared, run)
    common = [
        f"train.steps={steps}",
        f"train.batch_size={batch}",
        f"train.seq_len={seq_len}",
        "train.warmup_steps=1",
        "train.log_every=2",
        f"train.eval_every={steps}",
        "train.eval_batches=1",
        f"train.checkpoint_every={steps}",
        "train.precision=fp32",
        "train.compile=false",
    ]
    command = [*TORCHRUN, "-m", "mai.cli"] if distributed else [MAI]
    done = subprocess.run([*command, "train", str(run), *sets(common + overrides)], capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{arm} on {preset} failed:\n{done.stderr[-3000:]}")
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    figures = [r["tokens_per_s"] for r in records if r.get("tokens_per_s") and r["step"] > 4]
    shutil.rmtree(run)
    return statistics.median(figures)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args()
    ours, peer = {}, {}
    with tempfile.TemporaryDirectory(prefix="mai-bench-parallel-") as tmp:
        for preset in args.presets:
            prepared = prepare(Path(tmp), preset)
            figures = {}
            for arm in ARMS:
                figures[arm] = arm_tokens_per_s(prepared, preset, arm, args.steps)
                print(f"  {preset} {arm}: {figures[arm]:,.0f} tokens/s", flush=True)
            one = figures.pop("one")
            batch, seq_len = SHAPES[preset]
            ours[preset] = {"units": "tokens/s", "batch": batch, "seq_len": seq_len, **figures}
            ours[preset]["vs_one_process"] = {arm: value / one for arm, value in figures.items()}
            peer[preset] = {"units": "tokens/s", "one": one}
    ratio = ours[args.presets[0]]["vs_one_process"]["fsdp"]
    print(f"ratio (FSDP2 ×2 ÷ one process, {args.presets[0]}): {ratio:.2f}")
    path = write_result(
        "train_parallel",
        {
            "ours": ours,
            "peer": {"name": "mai train in one process", **peer},
            "ratio": ratio,
            "goal": None,
            "met": None,
            "note": "2 cores: two gloo processes share the cores one process uses; the ratio is the cost of the "
            "distributed path, not a speed-up. Issue 20 sets no goal.",
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
