"""Serving throughput: generated tokens/s through `mai serve`'s HTTP API against transformers' `generate`.

One model, random init, exported as a transformers directory: `mai serve` loads it in a subprocess
and clients send greedy completions of real Shakespeare prompts (token ids) at concurrency 1, 8 and
32; transformers' LlamaForCausalLM with the same weights generates the same prompts in this process,
one at a time (sequential) and all at once (batched). Arms are interleaved every round; the server
is idle while the peer runs. Ratio = ours at concurrency C over transformers batched at batch C.

Goals (issue 5), on a GPU with the ~1.5B preset in bf16: ≥ 500 tokens/s at concurrency 1 and
≥ 10,000 tokens/s at concurrency 32. On CPU the figures are recorded beside the peer, no goal.

    python bench/serve_throughput.py [--preset tiny|1.5b] [--rounds 3] [--new-tokens 128] [--compile] [--quick]
    python bench/serve_throughput.py --gpu      # the ~1.5B preset on CUDA in bf16
"""

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch
from safetensors.torch import save_file
from transformers import LlamaForCausalLM

from common import interleaved, peer_generate, ratios, write_result
from mai.config import ModelConfig
from mai.loading import load_tokenizer, save_tokenizer
from mai.model.hf import hf_config, to_hf
from mai.model.transformer import build_model
from mai.run import RunDir

PRESETS = {
    "tiny": ModelConfig(vocab_size=4096, d_model=256, n_layers=6, n_heads=4, n_kv_heads=2, max_seq_len=512),
    "1.5b": ModelConfig(
        vocab_size=32768, d_model=2048, n_layers=16, n_heads=32, n_kv_heads=8, ffn_dim=8192, max_seq_len=2048
    ),
}
GOALS = {"concurrency_1": 500.0, "concurrency_32": 10_000.0}  # tokens/s, GPU with the 1.5b preset in bf16
PROMPT_TOKENS = 32


def export_model(config: ModelConfig, tokenizer, out: Path, dtype: torch.dtype) -> None:
    """Random-init weights, config.json and the tokenizer, as `mai export hf` writes them."""
    model = build_model(config, seed=0)
    save_file({k: v.to(dtype) for k, v in to_hf(model.state_dict(), config).items()}, out / "model.safetensors")
    (out / "config.json").write_text(json.dumps(hf_config(config, tokenizer.bos_id, tokenizer.eos_id)))
    save_tokenizer(tokenizer, out)


def start_server(
    model_dir: Path, max_batch: int, max_context: int, precision: str, compile: bool
) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mai = str(Path(sys.executable).parent / "mai")
    command = [mai, "serve", str(model_dir), "--port", str(port), "--max-batch", str(max_batch)]
    command += ["--max-context", str(max_context)]  # the KV cache a deployment would size for these requests
    command += ["--precision", precision]  # the peer's precision: a like-for-like comparison
    command += ["--compile"] if compile else []
    process = subprocess.Popen(command)
    url = f"http://127.0.0.1:{port}"
    for _ in range(1200):
        if process.poll() is not None:
            raise SystemExit(f"mai serve exited with code {process.returncode} before answering")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.25)
    process.terminate()
    raise SystemExit("mai serve did not start")


async def ours(url: str, model: str, prompts: list[list[int]], new_tokens: int) -> float:
    """Generated tokens/s with every prompt in flight at once (concurrency = len(prompts))."""
    async with httpx.AsyncClient(base_url=url, timeout=3600, limits=httpx.Limits(max_connections=64)) as client:

        async def one(prompt):
            body = {"model": model, "prompt": prompt, "max_tokens": new_tokens, "temperature": 0}
            response = await client.post("/v1/completions", json=body)
            response.raise_for_status()
            return response.json()["usage"]["completion_tokens"]

        start = time.perf_counter()
        generated = sum(await asyncio.gather(*(one(p) for p in prompts)))
        return generated / (time.perf_counter() - start)


def peer(model, prompts: list[list[int]], new_tokens: int, device) -> float:
    """transformers' generate on all prompts as one batch (equal lengths, so no padding)."""
    batch = torch.tensor(prompts, device=device)
    start = time.perf_counter()
    out = peer_generate(model, batch, new_tokens)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out.numel() / (time.perf_counter() - start)


def prepared_run(tmp: Path, data: str | None) -> RunDir:
    """A run with Shakespeare tokens and the tiny tokenizer: `data` if given, else prepared under tmp."""
    if data:
        return RunDir(data).require()
    mai = str(Path(sys.executable).parent / "mai")
    run = tmp / "data"
    sources = 'data.sources=[{name = "shakespeare", max_mb = 1.0}]'
    subprocess.run([mai, "init", str(run), "--set", sources, "--set", "tokenizer.sample_mb=1.0"], check=True)
    subprocess.run([mai, "data", "prepare", str(run)], check=True, stdout=subprocess.DEVNULL)
    return RunDir(run)


def measure(config: ModelConfig, name: str, device: torch.device, dtype: torch.dtype, args) -> dict:
    """Per concurrency in args.concurrency: ours, batched and sequential tokens/s over args.rounds
    interleaved rounds, and ours over each peer. args: rounds, new_tokens, sequential_prompts, data, compile."""
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        run = prepared_run(Path(tmp), args.data)
        tokens = run.read_tokens("train")
        prompts = [tokens[i * PROMPT_TOKENS : (i + 1) * PROMPT_TOKENS].tolist() for i in range(max(args.concurrency))]
        model_dir = Path(tmp) / f"serve-bench-{name}"
        model_dir.mkdir()
        export_model(config, load_tokenizer(run), model_dir, dtype)
        reference = LlamaForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()
        precision = "bf16" if dtype == torch.bfloat16 else "fp32"
        process, url = start_server(
            model_dir, max(args.concurrency), PROMPT_TOKENS + args.new_tokens, precision, args.compile
        )
        try:
            asyncio.run(ours(url, model_dir.name, prompts[:2], 4))  # warm-up both arms
            with torch.inference_mode():
                peer(reference, prompts[:2], 4, device)
            for c in args.concurrency:
                arms = {
                    "ours": lambda r, c=c: asyncio.run(ours(url, model_dir.name, prompts[:c], args.new_tokens)),
                    "batched": lambda r, c=c: peer(reference, prompts[:c], args.new_tokens, device),
                    "sequential": lambda r: statistics.mean(
                        peer(reference, [p], args.new_tokens, device) for p in prompts[: args.sequential_prompts]
                    ),
                }
                with torch.inference_mode():
                    results[f"concurrency_{c}"] = interleaved(arms, args.rounds, f"concurrency {c}")
        finally:
            process.terminate()
            process.wait()
    for r in results.values():
        per_round = r["rounds"]
        r["ratio_vs_batched"] = ratios([x["ours"] for x in per_round], [x["batched"] for x in per_round])
        r["ratio_vs_sequential"] = ratios([x["ours"] for x in per_round], [x["sequential"] for x in per_round])
    return results


def print_table(results: dict) -> None:
    print(f"\n{'concurrency':>11}{'ours':>10}{'batched':>10}{'sequential':>12}{'÷batched':>10}{'÷sequential':>13}")
    for key, r in results.items():
        print(
            f"{key.removeprefix('concurrency_'):>11}{r['ours']['median']:>10,.0f}{r['batched']['median']:>10,.0f}"
            f"{r['sequential']['median']:>12,.0f}{r['ratio_vs_batched']['median']:>10.2f}"
            f"{r['ratio_vs_sequential']['median']:>13.2f}"
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--gpu", action="store_true", help="the 1.5b preset on CUDA in bf16")
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 8, 32])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--sequential-prompts", type=int, default=2, help="prompts the sequential peer times")
    parser.add_argument("--data", help="a prepared run directory to take tokens and tokenizer from")
    parser.add_argument("--quick", action="store_true", help="1 round, 16 new tokens: a smoke run")
    parser.add_argument("--compile", action="store_true", help="CPU: mai serve --compile (CUDA always uses graphs)")
    args = parser.parse_args()
    if args.gpu:
        args.preset = "1.5b"
        if not torch.cuda.is_available():
            raise SystemExit("--gpu needs CUDA")
    if args.quick:
        args.rounds, args.new_tokens = 1, 16
    device = torch.device("cuda" if args.gpu else "cpu")
    dtype = torch.bfloat16 if args.gpu else torch.float32
    config = PRESETS[args.preset]
    results = measure(config, args.preset, device, dtype, args)
    print_table(results)
    goals = []
    if args.gpu:
        for key, target in GOALS.items():
            if key in results:
                value = results[key]["ours"]["median"]
                goals.append({"goal": f"{key} tokens/s (bf16, 1.5b)", "value": value, "target": target})
                goals[-1]["met"] = value >= target
                print(
                    f"{'MET ' if goals[-1]['met'] else 'MISS'} {goals[-1]['goal']}: {value:,.0f} (goal {target:,.0f})"
                )
    if args.quick:
        print("a --quick run is a smoke test: nothing written to bench/results")
        return
    path = write_result(
        "serve_throughput",
        {
            "preset": args.preset,
            "model": config.model_dump(),
            "dtype": str(dtype),
            "compile": args.compile,
            "new_tokens": args.new_tokens,
            "prompt_tokens": PROMPT_TOKENS,
            "ours": {
                "name": "mai serve over HTTP (greedy completions, token-id prompts), tokens/s",
                "tokens_per_s": {k: r["ours"] for k, r in results.items()},
            },
            "peer": {
                "name": "transformers LlamaForCausalLM.generate (greedy, use_cache), same weights, in-process",
                "batched_tokens_per_s": {k: r["batched"] for k, r in results.items()},
                "sequential_tokens_per_s": {k: r["sequential"] for k, r in results.items()},
            },
            "ratio": min(r["ratio_vs_batched"]["median"] for r in results.values()),
            "goal": GOALS if args.gpu else None,
            "met": all(g["met"] for g in goals) if goals else None,
            "goals": goals,
            "results": results,
            "note": "ours pays for HTTP, JSON and a server process; the peer is a direct in-process call",
        },
        variant="compile" if args.compile else "",
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
