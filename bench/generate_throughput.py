"""Decoding throughput: our KV-cache `generate` against transformers' `generate`, same model and weights.

Greedy decoding, fp32, of a fixed number of new tokens after real Shakespeare prompts, at batch 1
and 8, the two arms interleaved every round. transformers runs as users run it: eager,
use_cache=True (its default dynamic cache), min_new_tokens = max_new_tokens and no eos, so both
arms decode exactly the same number of tokens. Goal (issue 3): ≥ 2× transformers' tokens/s.
Greedy outputs must be identical at batch 1; this is checked every round and recorded.

    python bench/generate_throughput.py [--presets tiny small] [--batches 1 8] [--rounds 5] [--quick]
"""

import argparse
import time

import torch
import transformers

from common import interleaved, model_pair, ratios, shakespeare_tokens, write_result
from mai.model.generate import generate

PROMPT_TOKENS = 32


def ours_generate(model, prompt, new_tokens):
    return torch.stack(list(generate(model, prompt, new_tokens, temperature=0)), dim=1)  # (B, new_tokens)


def peer_generate(model, prompt, new_tokens):
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


def run_batch(ours, peer, prompt, rounds: int, new_tokens: int, calls: int, label: str) -> dict:
    outputs = {"ours": [], "transformers": []}  # each round's last output per arm

    def timed(name, fn, model):
        def arm(round_index: int) -> float:
            start = time.perf_counter()
            for _ in range(calls):
                out = fn(model, prompt, new_tokens)
            outputs[name].append(out)
            return calls * prompt.shape[0] * new_tokens / (time.perf_counter() - start)

        return arm

    ours_generate(ours, prompt, 4), peer_generate(peer, prompt, 4)  # warm-up
    arms = {"ours": timed("ours", ours_generate, ours), "transformers": timed("transformers", peer_generate, peer)}
    result = interleaved(arms, rounds, label=label)
    same = [a == b for a, b in zip(outputs["ours"], outputs["transformers"], strict=True)]  # (B, new_tokens) each
    return {
        "ours_tokens_per_s": result["ours"],
        "transformers_tokens_per_s": result["transformers"],
        "ratio": ratios(result["ours"]["rounds"], result["transformers"]["rounds"]),
        "greedy_outputs_identical": all(bool(s.all()) for s in same),
        # per round: the first new-token position where any row differs (None: identical)
        "first_differing_position": [None if s.all() else int((~s).any(0).nonzero()[0]) for s in same],
        "rounds": result["rounds"],
    }


@torch.inference_mode()
def run_preset(preset: str, batches: list[int], rounds: int, new_tokens: int, calls: int, tokens) -> dict:
    _, ours, peer, _ = model_pair(preset)
    ours.eval(), peer.eval()
    results = {}
    for batch in batches:
        rows = tokens[: batch * PROMPT_TOKENS].astype("int64")  # consecutive real text, one slice per row
        prompt = torch.from_numpy(rows).view(batch, PROMPT_TOKENS)
        results[f"batch_{batch}"] = run_batch(ours, peer, prompt, rounds, new_tokens, calls, f"{preset} batch {batch}")
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
    header = ("preset", "batch", "ours med", "ours best", "peer med", "peer best", "ratio med", "ratio best")
    print("\n" + "".join(f"{h:>11}" for h in header) + "  greedy identical   (tokens/s; peer = transformers)")
    for preset, results in per_preset.items():
        for key, r in results.items():
            o, p, q = r["ours_tokens_per_s"], r["transformers_tokens_per_s"], r["ratio"]
            goals.append(
                {
                    "goal": f"{preset} {key}: ours / transformers decoding tokens/s",
                    "ratio": q["median"],
                    "target": 2.0,
                    "met": q["median"] >= 2.0,
                }
            )
            row = [preset, key.removeprefix("batch_")] + [
                f"{v:,.0f}" for v in (o["median"], o["best"], p["median"], p["best"])
            ]
            row += [f"{q['median']:.2f}", f"{q['best']:.2f}"]
            print("".join(f"{c:>11}" for c in row) + f"  {r['greedy_outputs_identical']}")
    print()
    for g in goals:
        print(f"{'MET ' if g['met'] else 'MISS'} {g['goal']}: {g['ratio']:.2f} (goal {g['target']})")
    identical_b1 = all(res["batch_1"]["greedy_outputs_identical"] for res in per_preset.values() if "batch_1" in res)
    print(f"greedy outputs identical at batch 1: {identical_b1}")

    path = write_result(
        "generate_throughput",
        {
            "new_tokens": args.new_tokens,
            "prompt_tokens": PROMPT_TOKENS,
            "calls_per_round": args.calls,
            "ours": {
                p: {"units": "new tokens/s", **{k: r["ours_tokens_per_s"] for k, r in res.items()}}
                for p, res in per_preset.items()
            },
            "peer": {
                "name": f"transformers {transformers.__version__} LlamaForCausalLM.generate (greedy, use_cache=True)",
                **{
                    p: {"units": "new tokens/s", **{k: r["transformers_tokens_per_s"] for k, r in res.items()}}
                    for p, res in per_preset.items()
                },
            },
            "ratio": min(g["ratio"] for g in goals),
            "ratio_is": "ours / transformers decoding tokens/s, median over rounds, worst preset and batch",
            "goal": 2.0,
            "met": all(g["met"] for g in goals) and identical_b1,
            "goals": goals,
            "greedy_identical_batch_1": identical_b1,
            "presets": per_preset,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
