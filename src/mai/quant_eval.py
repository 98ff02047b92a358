"""`mai quant-eval RUN [FILE.gguf ...]`: what each precision gives up, and what it buys.

Every candidate reads the same held-out windows: mai's own precisions (fp32, bf16, int8, int4, as
`mai generate --precision` decodes) and each GGUF file, run by llama.cpp (llama-cpp-python). For
each: bits per byte on the windows, the mean KL divergence of its next-token distributions from
mai's fp32 ones, the bytes of weights in memory and on disk, and greedy decoding speed at batch 1
(mai's precisions compiled, as they decode at their best). Without files, f16, q8_0 and q4_0
exports are made in a temporary folder first. llama.cpp publishes such deltas for a few reference
models only; this measures them on the user's own.

The windows are the run's validation split (the same leading windows as val_bpb) or, for a run
without data (an imported model), a text file's tokens. Results go to quant_eval.json and
quant_eval.png in the run directory.
"""

import copy
import math
import os
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from mai.console import console
from mai.errors import MaiError
from mai.export import export_gguf
from mai.loading import load_run_model, prepare_for_decoding
from mai.model.decode import generate
from mai.model.quantize import weight_bytes
from mai.report import pyplot
from mai.run import RunDir, write_json
from mai.run_files import QuantEval, QuantEvalRow

MAI_PRECISIONS = ("fp32", "bf16", "int8", "int4")
DEFAULT_EXPORTS = ("f16", "q8_0", "q4_0")
SPEED_PROMPT = "The history of the"


class MaiCandidate:
    """One of mai's precisions: the run's model prepared as `mai generate` decodes with it."""

    runtime = "mai"

    def __init__(self, model, precision: str):
        self.name = precision
        self.model = prepare_for_decoding(copy.deepcopy(model), precision)
        self.weights_bytes, self.disk_bytes = weight_bytes(self.model), None

    @torch.inference_mode()
    def logprobs(self, ids: list[int]) -> torch.Tensor:
        return self.model(torch.tensor([ids]))[0].float().log_softmax(-1)

    def tokens_per_second(self, prompt: list[int], n: int) -> float:
        def decode() -> int:
            return sum(1 for _ in generate(self.model, torch.tensor([prompt]), n, temperature=0, compile=True))

        decode()  # compiles the step for this cache size
        started = time.perf_counter()
        return decode() / (time.perf_counter() - started)


class LlamaCppCandidate:
    """A GGUF file as llama.cpp runs it, through llama-cpp-python, on all this machine's cores."""

    runtime = "llama.cpp"

    def __init__(self, path: Path, context: int):
        llama_cpp = import_llama_cpp()
        self.name, self.disk_bytes = path.name, path.stat().st_size
        self.llm = llama_cpp.Llama(
            str(path), n_ctx=context, n_batch=context, n_threads=os.cpu_count(), logits_all=True, verbose=False
        )
        self.weights_bytes = int(llama_cpp.llama_model_size(self.llm.model))

    def logprobs(self, ids: list[int]) -> torch.Tensor:
        self.llm.reset()
        self.llm.eval(ids)
        return torch.from_numpy(np.array(self.llm.scores[: len(ids)], dtype=np.float32)).log_softmax(-1)

    def tokens_per_second(self, prompt: list[int], n: int) -> float:
        self.llm.reset()
        self.llm.eval(prompt)
        started = time.perf_counter()
        for _ in range(n):
            self.llm.eval([int(np.argmax(self.llm.scores[self.llm.n_tokens - 1]))])
        return n / (time.perf_counter() - started)


def import_llama_cpp():
    try:
        import llama_cpp
    except ImportError:
        raise MaiError("GGUF files are scored by llama.cpp: install llama-cpp-python (`make install` does)") from None
    return llama_cpp


def held_out_windows(run: RunDir, tokenizer, text: Path | None, seq_len: int, max_tokens: int) -> list[list[int]]:
    """Leading windows of seq_len + 1 tokens, up to max_tokens predicted, of the text or the validation split."""
    if text is not None:
        if not text.is_file():
            raise MaiError(f"--text {text} is not a file", parameter="text")
        tokens = np.array(tokenizer.encode(text.read_text(errors="replace")))
    elif run.manifest_path.is_file():
        tokens = np.asarray(run.read_tokens("val"))
    else:
        raise MaiError(f"{run.path} has no validation data (an imported model?); pass --text FILE to score on")
    count = min((len(tokens) - 1) // seq_len, max(1, max_tokens // seq_len))
    if count < 1:
        raise MaiError(f"the held-out text has {len(tokens)} tokens, fewer than one window of {seq_len} + 1")
    return [tokens[i * seq_len : (i + 1) * seq_len + 1].astype(np.int64).tolist() for i in range(count)]


def quant_eval(
    run: RunDir,
    ggufs: list[Path],
    text: Path | None = None,
    max_tokens: int = 4096,
    decode_tokens: int = 64,
) -> QuantEval:
    """Score every candidate on the same windows; write quant_eval.json and quant_eval.png."""
    model, config, tokenizer = load_run_model(run)
    seq_len = min(config.train.seq_len, config.model.max_seq_len - 1)
    windows = held_out_windows(run, tokenizer, text, seq_len, max_tokens)
    with tempfile.TemporaryDirectory() as tmp:
        if not ggufs:
            import_llama_cpp()
            console.print(f"exporting {', '.join(DEFAULT_EXPORTS)} to score through llama.cpp")
            ggufs = [export_gguf(run, Path(tmp) / f"{run.path.name}-{d}.gguf", d) for d in DEFAULT_EXPORTS]
        candidates = [MaiCandidate(model, p) for p in MAI_PRECISIONS]  # fp32 first: the reference
        candidates += [LlamaCppCandidate(path, seq_len + 1) for path in ggufs]
        rows = score(candidates, windows, tokenizer, decode_tokens)
    record = QuantEval(
        checkpoint=run.latest_checkpoint().name,
        tokens=len(windows) * seq_len,
        decode_tokens=decode_tokens,
        rows=rows,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    write_json(run.quant_eval_path, record)
    plot_quant_eval(record, run.quant_eval_path.with_suffix(".png"))
    return record


def score(candidates, windows: list[list[int]], tokenizer, decode_tokens: int) -> list[QuantEvalRow]:
    """Bits per byte and KL from the first (fp32) for every candidate, window by window, then each one's speed."""
    sizes = tokenizer.token_bytes()
    reference = candidates[0]
    nats, kl = [0.0] * len(candidates), [0.0] * len(candidates)
    total_bytes, total_tokens = 0, 0
    for ids in windows:
        targets = torch.tensor(ids[1:])
        token_bytes = torch.tensor([sizes[t] if t < len(sizes) else 0 for t in ids[1:]])
        expected = reference.logprobs(ids[:-1])
        for i, candidate in enumerate(candidates):
            logprobs = expected if candidate is reference else candidate.logprobs(ids[:-1])
            losses = -logprobs[torch.arange(len(targets)), targets]
            nats[i] += losses[token_bytes > 0].sum().item()
            kl[i] += (expected.exp() * (expected - logprobs)).sum(-1).clamp(min=0).sum().item()
        total_bytes += int(token_bytes.sum())
        total_tokens += len(targets)
    prompt = tokenizer.encode(SPEED_PROMPT)
    return [
        QuantEvalRow(
            name=c.name,
            runtime=c.runtime,
            bpb=nats[i] / (math.log(2) * total_bytes),
            kl=kl[i] / total_tokens,
            weights_bytes=c.weights_bytes,
            disk_bytes=c.disk_bytes,
            tokens_per_s=c.tokens_per_second(prompt, decode_tokens) if decode_tokens else None,
        )
        for i, c in enumerate(candidates)
    ]


def format_quant_eval(record: QuantEval) -> str:
    """The table `mai quant-eval` prints: each row's bpb (and its change from fp32), KL, sizes and speed."""
    base = next((r.bpb for r in record.rows if r.name == "fp32"), record.rows[0].bpb)
    lines = [
        f"{record.tokens:,} held-out tokens; decoding {record.decode_tokens} tokens at batch 1",
        f"{'precision':<24} {'runtime':<10} {'bpb':>7} {'Δbpb':>7} {'KL':>8} {'memory':>9} {'disk':>9} {'tok/s':>7}",
    ]
    for r in record.rows:
        disk = f"{r.disk_bytes / 1e6:.1f} MB" if r.disk_bytes else "-"
        speed = f"{r.tokens_per_s:.1f}" if r.tokens_per_s else "-"
        lines.append(
            f"{r.name:<24} {r.runtime:<10} {r.bpb:>7.4f} {100 * (r.bpb / base - 1):>+6.2f}% {r.kl:>8.5f} "
            f"{r.weights_bytes / 1e6:>6.1f} MB {disk:>9} {speed:>7}"
        )
    return "\n".join(lines) + "\n"


def plot_quant_eval(record: QuantEval, path: Path) -> None:
    """Bits per byte against weights in memory (left) and decoding speed (right), one mark per precision."""
    plt = pyplot()
    fig, (quality, speed) = plt.subplots(1, 2, figsize=(11, 4))
    for r in record.rows:
        marker = "o" if r.runtime == "mai" else "s"
        quality.scatter(r.weights_bytes / 1e6, r.bpb, marker=marker)
        quality.annotate(f"{r.name} ({r.runtime})", (r.weights_bytes / 1e6, r.bpb), fontsize=8)
    quality.set(xlabel="weights in memory (MB)", ylabel="held-out bits per byte", title="quality against size")
    names = [f"{r.name}\n{r.runtime}" for r in record.rows]
    speed.bar(names, [r.tokens_per_s or 0 for r in record.rows])
    speed.set(ylabel="tokens/s (batch 1)", title="greedy decoding speed")
    speed.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
