"""Decoding throughput: our KV-cache generate against transformers' `generate`, same model and weights.

Greedy decoding of a fixed number of new tokens after a real Shakespeare prompt, fp32, at batch 1
and 8, arms interleaved every round. Goal (issue 3): ≥ 2× transformers' tokens/s. Greedy outputs
must be identical, which is checked and recorded.

    python bench/generate_throughput.py [--presets tiny] [--rounds 3] [--new-tokens 128] [--quick]
"""

import argparse
import time

import torch

from common import demo_tokens, probe_round, summary, write_result
from mai.model.generate import generate
from train_throughput import build_pair

PROMPT_TOKENS = 32


def ours_generate(model, prompt, new_tokens):
    return torch.stack(list(generate(model, prompt, new_tokens, temperature=0)), dim=1)


def peer_generate(model, prompt, new_tokens):
    out = model.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=0,
    )
    return out[:, prompt.shape[1] :]


def timed(fn, *args) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


@torch.inference_mode()
def run_preset(preset: str, batches: list[int], rounds: int, new_tokens: int, tokens) -> dict:
    _, ours, peer = build_pair(preset)
    ours.eval(), peer.eval()
    results = {}
    for batch in batches:
        prompt = torch.from_numpy(tokens[: batch * PROMPT_TOKENS].astype("int64")).view(batch, PROMPT_TOKENS)
        ours_generate(ours, prompt, 4), peer_generate(peer, prompt, 4)  # warm-up
        ours_rates, peer_rates, probes, identical = [], [], [], True
        for r in range(rounds):
            probes.append(probe_round())
            ours_s, ours_out = timed(ours_generate, ours, prompt, new_tokens)
            peer_s, peer_out = timed(peer_generate, peer, prompt, new_tokens)
            ours_rates.append(batch * new_tokens / ours_s)
            peer_rates.append(batch * new_tokens / peer_s)
            identical &= torch.equal(ours_out, peer_out)
            print(
                f"  {preset} batch {batch} round {r + 1}: ours {ours_rates[-1]:,.0f}, transformers {peer_rates[-1]:,.0f} tokens/s"
            )
        results[f"batch_{batch}"] = {
            "ours_tokens_per_s": summary(ours_rates),
            "transformers_tokens_per_s": summary(peer_rates),
            "ratio": summary([a / b for a, b in zip(ours_rates, peer_rates, strict=True)]),
            "greedy_outputs_identical": identical,
            "probes": probes,
        }
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--quick", action="store_true", help="1 round, 16 new tokens: a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.new_tokens = 1, 16
    tokens, _ = demo_tokens()
    per_preset = {p: run_preset(p, args.batches, args.rounds, args.new_tokens, tokens) for p in args.presets}

    goals = []
    print(f"\n{'preset':<7}{'batch':>6}{'ours median':>13}{'peer median':>13}{'ratio':>8}{'best':>8}  identical")
    for preset, results in per_preset.items():
        for key, r in results.items():
            ratio = r["ratio"]["median"]
            goals.append(
                {
                    "goal": f"{preset} {key}: ours / transformers tokens/s",
                    "ratio": ratio,
                    "target": 2.0,
                    "met": ratio >= 2.0,
                }
            )
            print(
                f"{preset:<7}{key.removeprefix('batch_'):>6}{r['ours_tokens_per_s']['median']:>13,.0f}"
                f"{r['transformers_tokens_per_s']['median']:>13,.0f}{ratio:>8.2f}{r['ratio']['best']:>8.2f}  {r['greedy_outputs_identical']}"
            )
    for g in goals:
        print(f"{'MET ' if g['met'] else 'MISS'} {g['goal']}: {g['ratio']:.2f} (goal {g['target']})")
    first = per_preset[args.presets[0]]
    path = write_result(
        "generate_throughput",
        {
            "new_tokens": args.new_tokens,
            "prompt_tokens": PROMPT_TOKENS,
            "ours": {p: {k: r["ours_tokens_per_s"] for k, r in res.items()} for p, res in per_preset.items()},
            "peer": {
                "name": "transformers generate (greedy, use_cache)",
                "tokens_per_s": {
                    p: {k: r["transformers_tokens_per_s"] for k, r in res.items()} for p, res in per_preset.items()
                },
            },
            "ratio": min(r["ratio"]["median"] for r in first.values()),
            "goal": 2.0,
            "met": all(g["met"] for g in goals),
            "goals": goals,
            "presets": per_preset,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
