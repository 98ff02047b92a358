"""Fine-tuning on conversations: packing against padding, in useful tokens per second.

Both arms train the tiny preset's model (compiled, bf16 autocast where native, as `mai sft` does)
on the same Shakespeare dialogues rendered by one tokenizer, with mai's masked loss, AdamW and
batch shape (8 rows of 257 tokens). They differ only in what a row holds:
  packed   whole conversations, first fit; attention kept within each (a block-diagonal mask)
  padded   one conversation, then padding (the peer: TRL's default collator pads each
           conversation to the longest in its batch; padding to the row is mai's padded mode)
A useful token is one of a conversation (not padding); supervised tokens (the assistant's) are
reported too. The ratio is packed ÷ padded useful tokens/s (no goal: the issue asks which is faster).

    python bench/sft.py [--rounds 3] [--steps 6]
"""

import argparse
import time

import torch

from common import interleaved, ratios, write_result
from mai.config import load_config
from mai.data.conversations import shakespeare_dialogues
from mai.data.corpus import shakespeare
from mai.model.transformer import build_model
from mai.precision import resolve_precision
from mai.tokenizer import train_tokenizer
from mai.train.optim import build_optimizer
from mai.train.sft import ConversationSampler, masked_loss, row_batch, tokenize

CPU = torch.device("cpu")
CONFIG = load_config("tiny", ["sft.batch_size=8"])
SETTINGS = CONFIG.sft.train_settings(CONFIG.train)


def conversations():
    tokenizer = train_tokenizer([text for _, text in list(shakespeare())[:8]], CONFIG.model.vocab_size)
    tokenized, _ = tokenize(shakespeare_dialogues()[:4000], tokenizer, SETTINGS.seq_len + 1)
    return tokenized


def arm(packing: bool, tokenized, steps: int, precision: str):
    model = build_model(CONFIG.model, seed=0)
    optimizer = build_optimizer(model, SETTINGS)
    compute_loss = torch.compile(masked_loss)
    sampler = ConversationSampler(tokenized, SETTINGS, packing, pad_id=3)
    counts = {"useful": 0, "supervised": 0}

    def step() -> tuple[int, int]:
        """One AdamW step; (useful tokens, supervised tokens) in its batch."""
        rows = [sampler.rows[i] for i in sampler.next_indices()]
        inputs, targets, positions = row_batch(tokenized, rows, SETTINGS.seq_len, sampler.pad_id)
        loss = compute_loss(model, inputs, targets, positions, CPU, precision)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()
        useful = sum(min(sum(len(tokenized[i].ids) for i in row), SETTINGS.seq_len) for row in rows)
        return useful, int((targets != -100).sum())

    def run(round_index: int) -> float:
        step()  # warm-up (compiles in the first round)
        useful = supervised = 0
        start = time.perf_counter()
        for _ in range(steps):
            batch_useful, batch_supervised = step()
            useful, supervised = useful + batch_useful, supervised + batch_supervised
        seconds = time.perf_counter() - start
        counts["useful"], counts["supervised"] = useful / seconds, supervised / seconds
        return useful / seconds

    return run, counts, sampler


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    torch.manual_seed(0)
    precision = resolve_precision(SETTINGS.precision, CPU)
    tokenized = conversations()
    packed, packed_counts, packed_sampler = arm(True, tokenized, args.steps, precision)
    padded, padded_counts, padded_sampler = arm(False, tokenized, args.steps, precision)
    supervised = {"packed": [], "padded": []}

    def with_supervised(name, run, counts):
        def timed(r):
            figure = run(r)
            supervised[name].append(counts["supervised"])
            return figure

        return timed

    result = interleaved(
        {
            "packed": with_supervised("packed", packed, packed_counts),
            "padded": with_supervised("padded", padded, padded_counts),
        },
        args.rounds,
        "sft",
    )
    ratio = ratios(result["packed"]["rounds"], result["padded"]["rounds"])
    print(
        f"useful tokens/s: packed {result['packed']['median']:,.0f} ({packed_sampler.fill:.0%} of row positions), "
        f"padded {result['padded']['median']:,.0f} ({padded_sampler.fill:.0%}); ratio {ratio['median']:.2f}×"
    )
    path = write_result(
        "sft",
        {
            "rows": f"{SETTINGS.batch_size} × {SETTINGS.seq_len + 1} tokens, tiny preset, {precision}, compiled",
            "ours": {
                "packed_useful_tokens_per_s": result["packed"],
                "packed_supervised_tokens_per_s": supervised["packed"],
                "packed_fill": packed_sampler.fill,
            },
            "peer": {
                "name": "padding, one conversation per row",
                "padded_useful_tokens_per_s": result["padded"],
                "padded_supervised_tokens_per_s": supervised["padded"],
                "padded_fill": padded_sampler.fill,
            },
            "rounds": result["rounds"],
            "ratio": ratio["median"],
            "ratio_summary": ratio,
            "goal": None,
            "met": None,
        },
    )
    print(path)


if __name__ == "__main__":
    main()
