"""One NVIDIA GPU: training MFU and serving tokens/s of a ~1.5B Llama, ours beside transformers (issue 23).

Training: tokens/s of whole AdamW steps (bf16 autocast over fp32 weights, as `mai train` runs on
a GPU) for ours eager and compiled (mai's loss_fn through torch.compile, as train.compile does)
and for transformers' LlamaForCausalLM eager and compiled, with the same weights and batches,
arms interleaved. MFU = tokens/s × training FLOPs per token (model_info: 6 × matmul parameters
plus attention) ÷ the GPU's dense bf16 peak (H100 and H200: 989 TFLOP/s). On a CPU (--tiny) the
peak is the bf16 matmul probe's best, so the figure is only a check that the code runs.

Serving: bench/serve_throughput.py's arms, in bf16 on CUDA: `mai serve` over HTTP at concurrency
1, 8 and 32 beside transformers' batched and sequential generate.

Goals (issue 23), on one H100 or H200 with the 1.5B config: training MFU ≥ 0.55 (stretch 0.60);
serving ≥ 700 generated tokens/s at concurrency 1 and ≥ 10,000 at 32. `met` is true only when
all hold. The scale-out issue's parallel path (FSDP2/TP/compile per block on one GPU) is an arm
to add once train/parallel.py exists.

    python bench/gpu.py                          # CUDA: writes bench/results/gpu_DATE_GPU.json
    python bench/gpu.py --tiny --out result.json # a toy size on the CPU in a few minutes; nothing judged
"""

import argparse
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

import serve_throughput
from common import interleaved, model_pair, ratios, summary, write_result
from mai.config import ModelConfig
from mai.model.info import model_info
from mai.precision import default_device
from train_throughput import LogitsOnly, timing_arm

CONFIGS = {
    # the issue's anchor: transformers' LlamaForCausalLM reaches 39.6% MFU eager, 48.1% compiled on an H100
    "1.5b": ModelConfig(
        vocab_size=128256,
        d_model=2048,
        n_layers=16,
        n_heads=32,
        n_kv_heads=8,
        ffn_dim=8192,
        max_seq_len=2048,
        tie_embeddings=False,
    ),
    "tiny": ModelConfig(
        vocab_size=4096, d_model=128, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=384, max_seq_len=128
    ),
}
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12}  # dense, without sparsity
MFU_GOAL, MFU_STRETCH = 0.55, 0.60
SERVING_GOALS = {"concurrency_1": 700.0, "concurrency_32": 10_000.0}  # generated tokens/s


def peak_flops(device: torch.device, probes: list[dict]) -> tuple[float, str]:
    """The bf16 peak MFU divides by, and where it comes from."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name()
        for gpu, flops in PEAK_BF16_FLOPS.items():
            if gpu in name:
                return flops, f"{gpu} dense bf16 peak (datasheet)"
        raise SystemExit(f"no bf16 peak known for {name}: add it to PEAK_BF16_FLOPS in bench/gpu.py")
    return max(p["bf16_gflops"] for p in probes) * 1e9, "best bf16 matmul probe on this CPU"


def training(config: ModelConfig, device: torch.device, batch: int, seq_len: int, steps: int, rounds: int) -> dict:
    """tokens/s and MFU for ours and transformers, eager and compiled, interleaved."""
    _, ours, peer, max_diff = model_pair(config, device)
    peer = LogitsOnly(peer)
    tokens = np.random.default_rng(0).integers(0, config.vocab_size, size=batch * seq_len * (steps + 1) * 4)
    shape = dict(tokens=tokens, batch=batch, seq_len=seq_len, steps=steps, device=device)
    arms = {
        "ours_eager": timing_arm(ours, "bf16", False, **shape),
        "ours_compiled": timing_arm(ours, "bf16", True, **shape),
        "transformers_eager": timing_arm(peer, "bf16", False, **shape),
        "transformers_compiled": timing_arm(peer, "bf16", True, **shape),
    }
    result = interleaved(arms, rounds, label="training")
    peak, peak_source = peak_flops(device, [r["probe"] for r in result["rounds"]])
    flops_per_token = model_info(config, seq_len)["flops_per_token"]
    mfu = {name: summary([t * flops_per_token / peak for t in result[name]["rounds"]]) for name in arms}
    rounds_of = lambda name: result[name]["rounds"]  # noqa: E731
    return {
        "batch": batch,
        "seq_len": seq_len,
        "steps_per_round": steps,
        "params": model_info(config)["params"],
        "flops_per_token": flops_per_token,
        "peak_flops": peak,
        "peak_source": peak_source,
        "max_logits_diff_vs_transformers": max_diff,
        "tokens_per_s": {name: result[name] for name in arms},
        "mfu": mfu,
        "ours_compiled_over_transformers_compiled": ratios(
            rounds_of("ours_compiled"), rounds_of("transformers_compiled")
        ),
        "ours_eager_over_transformers_eager": ratios(rounds_of("ours_eager"), rounds_of("transformers_eager")),
        "ours_parallel": None,  # FSDP2/TP on one GPU: the scale-out issue's train/parallel.py, not built yet
        "rounds": result["rounds"],
    }


def serving(config: ModelConfig, name: str, device: torch.device, new_tokens: int, rounds: int) -> dict:
    """bench/serve_throughput.py's measurement: bf16 on CUDA, fp32 (the CPU's fast path) otherwise."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    args = SimpleNamespace(
        concurrency=[1, 8, 32], rounds=rounds, new_tokens=new_tokens, sequential_prompts=2, data=None, compile=False
    )
    results = serve_throughput.measure(config, name, device, dtype, args)
    serve_throughput.print_table(results)
    return results


def arms_of(figures: dict, side: str) -> dict:
    """The arms of one side ("ours" or "transformers") of a per-arm figure."""
    return {arm: value for arm, value in figures.items() if arm.startswith(side)}


def judged_goals(train: dict, serve: dict) -> list[dict]:
    mfu = train["mfu"]["ours_compiled"]["median"]
    goals = [{"goal": "training MFU, ours compiled, bf16", "value": mfu, "target": MFU_GOAL}]
    goals += [
        {"goal": f"serving {key} generated tokens/s", "value": serve[key]["ours"]["median"], "target": target}
        for key, target in SERVING_GOALS.items()
    ]
    for goal in goals:
        goal["met"] = goal["value"] >= goal["target"]
    goals[0]["stretch"], goals[0]["stretch_met"] = MFU_STRETCH, mfu >= MFU_STRETCH
    return goals


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a toy config on any device, nothing judged")
    parser.add_argument("--batch", type=int, help="training sequences per step (default 4; --tiny 2)")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per arm and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=128, help="generated tokens per serving request")
    parser.add_argument("--out", type=Path, help="write the result here instead of bench/results/")
    args = parser.parse_args()
    device = default_device()
    if device.type != "cuda" and not args.tiny:
        raise SystemExit("bench/gpu.py measures a GPU: run it on a CUDA machine, or pass --tiny for a CPU check")
    name = "tiny" if args.tiny else "1.5b"
    config = CONFIGS[name]
    batch = args.batch or (2 if args.tiny else 4)
    started = time.perf_counter()

    print(f"training {name} ({model_info(config)['params']:,} parameters), batch {batch} × {config.max_seq_len}")
    train = training(config, device, batch, config.max_seq_len, args.steps, args.rounds)
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the server needs the memory next
    for arm, value in train["mfu"].items():
        print(f"  {arm:<22} {train['tokens_per_s'][arm]['median']:>10,.0f} tokens/s  MFU {value['median']:.3f}")
    print(f"serving {name} through mai serve, concurrency 1, 8, 32")
    serve = serving(config, name, device, args.new_tokens, args.rounds)

    goals = [] if args.tiny else judged_goals(train, serve)
    for goal in goals:
        print(f"{'MET ' if goal['met'] else 'MISS'} {goal['goal']}: {goal['value']:,.3f} (goal {goal['target']:,})")
    record = {
        "config": name,
        "model": config.model_dump(),
        "ours": {
            "name": "mai: training steps (bf16 autocast, AdamW), and mai serve over HTTP (bf16 on CUDA)",
            "training_tokens_per_s": arms_of(train["tokens_per_s"], "ours"),
            "training_mfu": arms_of(train["mfu"], "ours"),
            "serving_tokens_per_s": {k: r["ours"] for k, r in serve.items()},
        },
        "peer": {
            "name": "transformers LlamaForCausalLM: the same steps, eager and torch.compile; generate, batched",
            "training_tokens_per_s": arms_of(train["tokens_per_s"], "transformers"),
            "training_mfu": arms_of(train["mfu"], "transformers"),
            "serving_batched_tokens_per_s": {k: r["batched"] for k, r in serve.items()},
        },
        "ratio": train["ours_compiled_over_transformers_compiled"]["median"],
        "ratio_is": "training tokens/s, ours compiled / transformers compiled (bf16), median over rounds",
        "goal": MFU_GOAL,
        "met": all(g["met"] for g in goals) if goals else None,
        "goals": goals,
        "training": train,
        "serving": serve,
        "seconds": time.perf_counter() - started,
    }
    if args.tiny and not args.out:
        print("a --tiny run is a check of the code: nothing written to bench/results (pass --out FILE)")
    else:
        print(f"wrote {write_result('gpu', record, path=args.out)}")


if __name__ == "__main__":
    main()
