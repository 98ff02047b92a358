"""Training throughput: our model against transformers' LlamaForCausalLM with identical config and weights.

Every arm times full training steps (forward, cross-entropy, backward, AdamW step) on the same
real Shakespeare batches, on CPU. Arms, interleaved every round:
  ours_fp32 / ours_bf16   mai as it trains: torch.compile(loss_fn) (the presets set compile = true),
                          fp32 or bf16 autocast (bf16 is mai's default on CPUs with native bf16)
  ours_fp32_eager         mai without compile, for an eager-to-eager comparison
  transformers_fp32/bf16  LlamaForCausalLM, eager, as users run it
Goals (issue 3):
  1. ours fp32 model FLOP/s (tokens/s × model_info flops_per_token) ≥ 85% of the fp32 matmul probe;
  2. ours in default precision ≥ 1.3× transformers fp32 tokens/s;
  3. tiny: loss after 200 steps in bf16 within 1% of the fp32 run (same seeds, same batches; mean of 3 seeds).

    python bench/train_throughput.py [--presets tiny small] [--rounds 3] [--steps 5] [--loss-seeds 3] [--quick]
"""

import argparse
import statistics
import time
from collections import Counter

import torch
import torch.nn.functional as F

from common import interleaved, matmul_seconds, model_pair, ratios, shakespeare_tokens, summary, write_result
from mai.bpb import validation_windows
from mai.config import ModelConfig, load_config
from mai.model.info import model_info
from mai.model.transformer import build_model
from mai.precision import resolve_precision
from mai.train.batches import WindowSampler
from mai.train.loop import deterministic, loss_fn
from mai.train.optim import build_optimizer, build_scheduler

CPU = torch.device("cpu")
# (batch, seq_len) per preset, the same for both arms. tiny trains at 16×256; small's preset batch
# (16×512) would take ~10 s a step on 2 cores, so it is timed at 4×512.
SHAPES = {"tiny": (16, 256), "small": (4, 512)}
TRAIN = load_config("tiny").train.model_copy(update={"lr": 1e-4})  # optimizer settings of the timing arms
LOSS_BATCH = 8  # the loss check trains tiny at 8×256 instead of 16×256 to halve its run time


class LogitsOnly(torch.nn.Module):
    """transformers' model returning plain logits, so both arms go through mai's loss_fn."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, tokens):
        return self.model(tokens).logits


def timing_arm(model, precision: str, compiled: bool, tokens, batch: int, seq_len: int, steps: int, device=CPU):
    """An arm for `interleaved`: warm up one step, then return tokens/s over `steps` AdamW steps
    (each step reads its loss, so a CUDA step has finished when the clock stops)."""
    optimizer = build_optimizer(model, TRAIN)  # mai's AdamW for both arms (same work)
    compute_loss = torch.compile(loss_fn) if compiled else loss_fn

    def step(inputs, targets):
        loss = compute_loss(model, inputs, targets, device, precision)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    def arm(round_index: int) -> float:
        sampler = WindowSampler(tokens, seq_len, batch, seed=round_index)  # both arms: the same batches
        step(*sampler.next_batch())  # warm-up (compiles in the first round)
        start = time.perf_counter()
        for _ in range(steps):
            step(*sampler.next_batch())
        return steps * batch * seq_len / (time.perf_counter() - start)

    return arm


def linear_layer_gflops(config: ModelConfig, tokens: int) -> float:
    """fp32 GFLOP/s of one training step's linear-layer matmuls, each timed alone at its own shape (best of 3).

    The forward x·Wᵀ, input gradient dy·W and weight gradient dyᵀ·x of every projection and of the
    output head, in the layouts autograd uses; attention's own matmuls run inside the attention
    kernel and are left out. Not a goal: it shows how much of the 1024² probe's rate the model's own
    matmul shapes allow (small ones run below it), for the bulk of the FLOPs that goal 1 counts.
    """
    D, E, hidden = config.d_model, config.head_dim, config.hidden_dim
    per_layer = [(D, (config.n_heads + 2 * config.kv_heads) * E), (config.n_heads * E, D), (D, 2 * hidden), (hidden, D)]
    flops = seconds = 0.0
    for (fan_in, fan_out), count in Counter(per_layer * config.n_layers + [(D, config.vocab_size)]).items():
        x, w, dy = torch.randn(tokens, fan_in), torch.randn(fan_out, fan_in), torch.randn(tokens, fan_out)
        for a, b in ((x, w.t()), (dy, w), (dy.t(), x)):
            a @ b  # warm up
            best = min(matmul_seconds(a, b) for _ in range(3))
            flops += count * 2 * a.shape[0] * a.shape[1] * b.shape[1]
            seconds += count * best
    return flops / seconds / 1e9


def throughput(preset: str, rounds: int, steps: int, tokens) -> dict:
    torch._dynamo.reset()  # each preset compiles afresh, as a training run would
    config, ours, peer, max_diff = model_pair(preset)
    batch, seq_len = SHAPES[preset]
    default = resolve_precision("auto", CPU)
    compiled = load_config(preset).train.compile
    peer = LogitsOnly(peer)
    shape = dict(tokens=tokens, batch=batch, seq_len=seq_len, steps=steps)
    arms = {
        "ours_fp32": timing_arm(ours, "fp32", compiled, **shape),
        "transformers_fp32": timing_arm(peer, "fp32", False, **shape),
        "ours_bf16": timing_arm(ours, "bf16", compiled, **shape),
        "transformers_bf16": timing_arm(peer, "bf16", False, **shape),
        "ours_fp32_eager": timing_arm(ours, "fp32", False, **shape),
        "linear_layers_fp32_gflops": lambda r: linear_layer_gflops(config, batch * seq_len),
    }
    result = interleaved(arms, rounds, label=preset)
    tokens_per_s = {name: result[name]["rounds"] for name in arms if name.startswith(("ours", "transformers"))}
    probes = [r["probe"] for r in result["rounds"]]
    flops = model_info(config, seq_len)["flops_per_token"]
    fp32_gflops = [t * flops / 1e9 for t in tokens_per_s["ours_fp32"]]
    return {
        "batch": batch,
        "seq_len": seq_len,
        "params": model_info(config)["params"],
        "flops_per_token": flops,
        "max_logits_diff_vs_transformers": max_diff,
        "ours_compiled": compiled,
        "default_precision": default,
        "tokens_per_s": {name: result[name] for name in tokens_per_s},
        "ours_fp32_gflops": summary(fp32_gflops),
        "probe_fp32_gflops": summary([p["fp32_gflops"] for p in probes]),
        # goal 1: each round's fp32 model FLOP/s over the probe taken just before it
        "ours_fp32_over_probe": ratios(fp32_gflops, [p["fp32_gflops"] for p in probes]),
        "ours_fp32_over_probe_median_timing": ratios(fp32_gflops, [p["fp32_gflops_median"] for p in probes]),
        # not a goal: how much of the probe's rate the model's own matmul shapes allow
        "linear_layers_fp32_gflops": result["linear_layers_fp32_gflops"],
        "linear_layers_over_probe": ratios(
            result["linear_layers_fp32_gflops"]["rounds"], [p["fp32_gflops"] for p in probes]
        ),
        # goal 2
        "ours_default_over_transformers_fp32": ratios(
            tokens_per_s[f"ours_{default}"], tokens_per_s["transformers_fp32"]
        ),
        "ours_fp32_over_transformers_fp32": ratios(tokens_per_s["ours_fp32"], tokens_per_s["transformers_fp32"]),
        "ours_bf16_over_transformers_bf16": ratios(tokens_per_s["ours_bf16"], tokens_per_s["transformers_bf16"]),
        "ours_eager_over_transformers_fp32": ratios(tokens_per_s["ours_fp32_eager"], tokens_per_s["transformers_fp32"]),
        "rounds": result["rounds"],
    }


def loss_agreement(steps: int, seeds: int, tokens, val_tokens) -> dict:
    """Train tiny from the same init on the same batches in fp32 and in bf16, as mai's loop does
    (compiled loss_fn, AdamW with warmup and cosine decay over `steps`, clipping); compare losses.

    One seed is not enough: any rounding change (another AdamW kernel, say) moves a single run's
    loss after 200 steps by about 1%, the size of the goal. So each of `seeds` seeds (init and
    batches) trains once in each precision, and the goal compares the means.
    """
    run_config = load_config("tiny")
    base = run_config.train.model_copy(update={"steps": steps, "batch_size": LOSS_BATCH})
    out = {"steps": steps, "batch": base.batch_size, "seq_len": base.seq_len, "lr": base.lr, "compiled": base.compile}
    out["runs"] = [
        {"seed": seed} | {p: train_tiny(run_config, base, seed, p, tokens, val_tokens) for p in ("fp32", "bf16")}
        for seed in range(base.seed, base.seed + seeds)
    ]
    mean = {p: statistics.mean(run[p]["val_loss"] for run in out["runs"]) for p in ("fp32", "bf16")}
    out["val_loss_mean"] = mean
    out["val_relative_difference"] = abs(mean["bf16"] / mean["fp32"] - 1)
    out["val_relative_difference_per_seed"] = [
        abs(r["bf16"]["val_loss"] / r["fp32"]["val_loss"] - 1) for r in out["runs"]
    ]
    return out


def train_tiny(run_config, base, seed: int, precision: str, tokens, val_tokens) -> dict:
    """`steps` training steps of tiny from `seed` in `precision`; validation loss in fp32 on fixed windows."""
    tc = base.model_copy(update={"seed": seed})
    torch._dynamo.reset()
    torch.manual_seed(tc.seed)
    model = build_model(run_config.model, seed=tc.seed)
    optimizer = build_optimizer(model, tc)
    scheduler = build_scheduler(optimizer, tc)
    sampler = WindowSampler(tokens, tc.seq_len, tc.batch_size, tc.seed)
    compute_loss = torch.compile(loss_fn) if tc.compile else loss_fn
    train_losses, start = [], time.perf_counter()
    for _ in range(tc.steps):
        loss = compute_loss(model, *sampler.next_batch(), CPU, precision)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        train_losses.append(loss.item())
    seconds = time.perf_counter() - start
    with torch.no_grad():  # evaluated in fp32 for both, on the same validation windows
        val = [
            F.cross_entropy(model(x).flatten(0, 1), y.flatten()).item()
            for x, y in validation_windows(val_tokens, tc.seq_len, tc.batch_size, 8)
        ]
    result = {
        "val_loss": sum(val) / len(val),
        "train_loss_last10": sum(train_losses[-10:]) / 10,
        "train_losses": train_losses,
        "seconds": seconds,
    }
    print(
        f"  loss check seed {seed} {precision}: val loss {result['val_loss']:.4f}, "
        f"train loss (last 10 steps) {result['train_loss_last10']:.4f}, {seconds:.0f} s"
    )
    return result


def goal(name: str, ratio: float, target: float, higher_is_better: bool = True) -> dict:
    met = ratio >= target if higher_is_better else ratio <= target
    return {"goal": name, "ratio": ratio, "target": target, "met": met}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per arm per round (after 1 warm-up step)")
    parser.add_argument("--loss-steps", type=int, default=200, help="steps of the bf16-vs-fp32 loss check")
    parser.add_argument("--loss-seeds", type=int, default=3, help="seeds the loss check averages over")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's, one per core)")
    parser.add_argument("--data", metavar="RUN_DIR", help="a run directory whose prepared tokens to use")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 round, 2 steps, 20 loss steps, 1 seed")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.rounds, args.steps, args.loss_steps, args.loss_seeds = 1, 2, 20, 1
    torch._dynamo.config.recompile_limit = 64  # never let a compiled arm fall back to eager unnoticed
    tokens, val_tokens = shakespeare_tokens(args.data)
    with deterministic(CPU):  # as `mai train` runs
        per_preset = {preset: throughput(preset, args.rounds, args.steps, tokens) for preset in args.presets}
        agreement = loss_agreement(args.loss_steps, args.loss_seeds, tokens, val_tokens)

    print(f"\n{'preset':<7}{'arm':<20}{'median tok/s':>13}{'best tok/s':>12}")
    for preset, r in per_preset.items():
        for arm, s in r["tokens_per_s"].items():
            print(f"{preset:<7}{arm:<20}{s['median']:>13,.0f}{s['best']:>12,.0f}")
    print(
        f"\n{'preset':<7}{'ours fp32 GFLOP/s':>18}{'fp32 matmul probe':>19}{'fraction':>10}   (median over rounds; best)"
    )
    for preset, r in per_preset.items():
        g, p, f = r["ours_fp32_gflops"], r["probe_fp32_gflops"], r["ours_fp32_over_probe"]
        print(
            f"{preset:<7}{g['median']:>18.1f}{p['median']:>19.1f}{f['median']:>10.3f}   ({g['best']:.1f}; {p['best']:.1f}; {f['best']:.3f})"
        )
    for preset, r in per_preset.items():
        g, f = r["linear_layers_fp32_gflops"]["median"], r["linear_layers_over_probe"]["median"]
        print(
            f"{preset}: its linear-layer matmuls, timed alone at their own shapes: {g:.1f} GFLOP/s, "
            f"{f:.3f} of the probe (context for the FLOP/s goal, not a goal)"
        )
    print(f"small is timed at batch {SHAPES['small'][0]}; the loss check trains tiny at batch {LOSS_BATCH}")
    per_seed = ", ".join(f"{d:.3f}" for d in agreement["val_relative_difference_per_seed"])
    print(f"loss check: |bf16 / fp32 val loss - 1| per seed {per_seed}")

    goals = []
    for preset, r in per_preset.items():
        goals.append(
            goal(f"{preset}: ours fp32 model FLOP/s / fp32 matmul probe", r["ours_fp32_over_probe"]["median"], 0.85)
        )
        goals.append(
            goal(
                f"{preset}: ours {r['default_precision']} / transformers fp32 tokens/s",
                r["ours_default_over_transformers_fp32"]["median"],
                1.3,
            )
        )
    goals.append(
        goal(
            f"tiny: |bf16 / fp32 val loss - 1| after {args.loss_steps} steps, mean of {args.loss_seeds} seeds",
            agreement["val_relative_difference"],
            0.01,
            higher_is_better=False,
        )
    )
    print()
    for g in goals:
        print(f"{'MET ' if g['met'] else 'MISS'} {g['goal']}: {g['ratio']:.3f} (goal {g['target']})")

    speedups = [r["ours_default_over_transformers_fp32"]["median"] for r in per_preset.values()]
    if args.quick:
        print("a --quick run is a smoke test: nothing written to bench/results")
        return
    path = write_result(
        "train_throughput",
        {
            "ours": {
                preset: {
                    "units": "tokens/s (training steps); GFLOP/s",
                    **{k: v for k, v in r["tokens_per_s"].items() if k.startswith("ours")},
                    "fp32_gflops": r["ours_fp32_gflops"],
                    "linear_layers_fp32_gflops": r["linear_layers_fp32_gflops"],
                }
                for preset, r in per_preset.items()
            },
            "peer": {
                "name": f"transformers {__import__('transformers').__version__} LlamaForCausalLM, eager",
                **{
                    preset: {
                        "units": "tokens/s (training steps)",
                        **{k: v for k, v in r["tokens_per_s"].items() if k.startswith("transformers")},
                    }
                    for preset, r in per_preset.items()
                },
            },
            "ratio": min(speedups),
            "ratio_is": "ours in default precision / transformers fp32 tokens/s, median over rounds, worst preset",
            "goal": 1.3,
            "met": all(g["met"] for g in goals),
            "goals": goals,
            "presets": per_preset,
            "loss_agreement": agreement,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
