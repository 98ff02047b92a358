"""Decoding throughput: our KV-cache `generate` against transformers' `generate`, same model and weights.

Greedy decoding of a fixed number of new tokens after real Shakespeare prompts, at batch 1 and 8,
the arms interleaved every round. transformers runs as users run it: fp32, eager, use_cache=True
(its default dynamic cache), min_new_tokens = max_new_tokens and no eos, so every arm decodes
exactly the same number of tokens. Ours runs three ways: in fp32 (like for like, whose greedy
output must equal transformers' at batch 1, checked every round), in our default decoding precision
(`mai generate --precision auto`: bf16 weights where the CPU computes bf16 natively, as ours do;
the same protocol as training's bench), and in that precision compiled (`mai generate --compile`;
its one-off compilation happens in the warm-up, outside the timings). Goal (issue 3): ≥ 2×
transformers' tokens/s; every ratio is printed, the goal is judged on the compiled arm.

    python bench/generate_throughput.py [--presets tiny small] [--batches 1 8] [--rounds 5] [--quick]
"""

import argparse
import copy
import time

import torch
import transformers

from common import interleaved, model_pair, peer_generate, ratios, shakespeare_tokens, write_result
from mai.model.decode import fuse_for_decoding, generate
from mai.precision import cast_for_decoding, resolve_precision

PROMPT_TOKENS = 32
DEFAULT_PRECISION = resolve_precision("auto", torch.device("cpu"))


OURS = ("ours_fp32", "ours_default", "ours_compiled")
DEFAULT_ARM = "ours_default"


def ours_generate(model, prompt, new_tokens):
    return torch.stack(list(generate(model, prompt, new_tokens, temperature=0)), dim=1)  # (B, new_tokens)


def ours_compiled_generate(model, prompt, new_tokens):
    return torch.stack(list(generate(model, prompt, new_tokens, temperature=0, compile=True)), dim=1)


def run_batch(arms: dict, prompt, rounds: int, new_tokens: int, calls: int, label: str) -> dict:
    """Interleave the arms ({name: (generate function, model)}); ratios are against transformers."""
    outputs = {name: [] for name in arms}  # each round's last output per arm

    def timed(name, fn, model):
        def arm(round_index: int) -> float:
            start = time.perf_counter()
            for _ in range(calls):
                out = fn(model, prompt, new_tokens)
            outputs[name].append(out)
            return calls * prompt.shape[0] * new_tokens / (time.perf_counter() - start)

        return arm

    for fn, model in arms.values():
        fn(model, prompt, new_tokens)  # warm-up; compiles the compiled arm's graph for this shape
    result = interleaved({name: timed(name, *arm) for name, arm in arms.items()}, rounds, label=label)
    record = {"rounds": result["rounds"]}
    for name in arms:
        record[f"{name}_tokens_per_s"] = result[name]
        if name != "transformers":
            record[f"{name}_ratio"] = ratios(result[name]["rounds"], result["transformers"]["rounds"])
            same = [a == b for a, b in zip(outputs[name], outputs["transformers"], strict=True)]
            record[f"{name}_greedy_identical"] = all(bool(s.all()) for s in same)
            # per round: the first new-token position where any row differs from transformers' (None: identical)
            record[f"{name}_first_differing_position"] = [
                None if s.all() else int((~s).any(0).nonzero()[0]) for s in same
            ]
    return record


@torch.inference_mode()
def run_preset(preset: str, batches: list[int], rounds: int, new_tokens: int, calls: int, tokens) -> dict:
    _, ours, peer, _ = model_pair(preset)
    ours.eval(), peer.eval()
    # as `mai generate --precision fp32` and `mai generate` load them: cast, then projections fused
    fp32 = fuse_for_decoding(copy.deepcopy(ours))
    default = fuse_for_decoding(cast_for_decoding(copy.deepcopy(ours), "auto"))
    arms = {
        "ours_fp32": (ours_generate, fp32),
        "ours_default": (ours_generate, default),
        "ours_compiled": (ours_compiled_generate, default),
        "transformers": (peer_generate, peer),
    }
    results = {}
    for batch in batches:
        rows = tokens[: batch * PROMPT_TOKENS].astype("int64")  # consecutive real text, one slice per row
        prompt = torch.from_numpy(rows).view(batch, PROMPT_TOKENS)
        results[f"batch_{batch}"] = run_batch(arms, prompt, rounds, new_tokens, calls, f"{preset} batch {batch}")
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--calls", type=int, default=2, help="generate calls per arm per round")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's, one per core)")
    parser.add_argument("--data", metavar="RUN_DIR", help="a run directory whose prepared tokens to use")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 round, 1 call, 16 new tokens")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.rounds, args.calls, args.new_tokens = 1, 1, 16
    transformers.logging.set_verbosity_error()
    tokens, _ = shakespeare_tokens(args.data)
    per_preset = {
        p: run_preset(p, args.batches, args.rounds, args.new_tokens, args.calls, tokens) for p in args.presets
    }

    goals = []
    header = ("preset", "batch", "fp32", DEFAULT_PRECISION, f"{DEFAULT_PRECISION} comp", "peer")
    header += ("fp32 ratio", f"{DEFAULT_PRECISION} ratio", "comp ratio")
    print("\n" + "".join(f"{h:>12}" for h in header) + "  fp32 greedy identical   (tokens/s, medians)")
    for preset, results in per_preset.items():
        for key, r in results.items():
            for arm, label in ((DEFAULT_ARM, "eager"), ("ours_compiled", "compiled")):
                ratio = r[f"{arm}_ratio"]["median"]
                goal = f"{preset} {key}: ours ({DEFAULT_PRECISION}, {label}) / transformers (fp32) decoding tokens/s"
                goals.append({"goal": goal, "arm": arm, "ratio": ratio, "target": 2.0, "met": ratio >= 2.0})
            row = [preset, key.removeprefix("batch_")]
            row += [f"{r[f'{arm}_tokens_per_s']['median']:,.0f}" for arm in (*OURS, "transformers")]
            row += [f"{r[f'{arm}_ratio']['median']:.2f}" for arm in OURS]
            print("".join(f"{c:>12}" for c in row) + f"  {r['ours_fp32_greedy_identical']}")
    print()
    for g in goals:
        print(f"{'MET ' if g['met'] else 'MISS'} {g['goal']}: {g['ratio']:.2f} (goal {g['target']})")
    identical_b1 = all(res["batch_1"]["ours_fp32_greedy_identical"] for res in per_preset.values() if "batch_1" in res)
    print(f"fp32 greedy outputs identical to transformers' at batch 1: {identical_b1}")
    compiled_goals = [g for g in goals if g["arm"] == "ours_compiled"]

    if args.quick:
        print("a --quick run is a smoke test: nothing written to bench/results")
        return
    path = write_result(
        "generate_throughput",
        {
            "new_tokens": args.new_tokens,
            "prompt_tokens": PROMPT_TOKENS,
            "calls_per_round": args.calls,
            "default_precision": DEFAULT_PRECISION,
            "ours": {
                p: {
                    "units": "new tokens/s",
                    **{
                        k: {arm.removeprefix("ours_"): r[f"{arm}_tokens_per_s"] for arm in OURS} for k, r in res.items()
                    },
                }
                for p, res in per_preset.items()
            },
            "peer": {
                "name": f"transformers {transformers.__version__} LlamaForCausalLM.generate (fp32, greedy, use_cache=True)",
                **{
                    p: {"units": "new tokens/s", **{k: r["transformers_tokens_per_s"] for k, r in res.items()}}
                    for p, res in per_preset.items()
                },
            },
            "ratio": min(g["ratio"] for g in compiled_goals),
            "ratio_is": f"ours ({DEFAULT_PRECISION}, `mai generate --compile`) / transformers (fp32) decoding tokens/s, median over rounds, worst preset and batch",
            "eager_ratio": min(g["ratio"] for g in goals if g["arm"] == DEFAULT_ARM),
            "fp32_ratio": min(r["ours_fp32_ratio"]["median"] for res in per_preset.values() for r in res.values()),
            "goal": 2.0,
            "met": all(g["met"] for g in compiled_goals) and identical_b1,
            "goals": goals,
            "fp32_greedy_identical_batch_1": identical_b1,
            "presets": per_preset,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
