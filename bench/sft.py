"""Fine-tuning on conversations: packing against padding, in useful tokens per second.

Both arms train the tiny preset's model (compiled, bf16 autocast where native, as `mai sft` does)
on the same Shakespeare dialogues rendered by one tokenizer, with mai's masked loss, AdamW and
batch shape (8 rows of 257 tokens). They differ only in what a row holds:
  packed   whole conversations, first fit; attention kept within each (a block-diagonal mask)
  padded   one conversation, then padding to the row (mai's sft.packing = false)
  longest  one conversation per row, padded to the longest in its batch (the peer: TRL's default
           collator); shapes change from batch to batch, so it compiles with dynamic shapes
A useful token is one of a conversation (not padding); supervised tokens (the assistant's) are
reported too. The ratio is packed ÷ longest useful tokens/s (no goal: the issue asks which is faster).

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


def arm(packing: bool, tokenized, steps: int, precision: str, to_longest: bool = False):
    model = build_model(CONFIG.model, seed=0)
    optimizer = build_optimizer(model, SETTINGS)
    compute_loss = torch.compile(masked_loss, dynamic=to_longest)
    sampler = ConversationSampler(tokenized, SETTINGS, packing, pad_id=3)
    counts = {"useful": 0, "supervised": 0}

    def step() -> tuple[int, int]:
        """One AdamW step; (useful tokens, supervised tokens) in its batch."""
        rows = [sampler.rows[i] for i in sampler.next_indices()]
        inputs, targets, positions = row_batch(tokenized, rows, SETTINGS.seq_len, sampler.pad_id)
        if to_longest:
            longest = min(max(len(tokenized[row[0]].ids) for row in rows), SETTINGS.seq_len)
            inputs, targets, positions = inputs[:, :longest], targets[:, :longest], positions[:, :longest]
        loss = compute_loss(model, inputs, targets, positions, CPU, precision)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()
        useful = sum(min(sum(len(tokenized[i].ids) for i in row), SETTINGS.seq_len) for row in rows)
        return useful, int((targets != -100).sum())

    def run(round_index: int) -> float:
        for _ in range(3):  # warm-up: compiles in the first round (dynamic shapes after a second length)
            step()
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
    longest, longest_counts, _ = arm(False, tokenized, args.steps, precision, to_longest=True)
    supervised = {"packed": [], "padded": [], "longest": []}

    def with_supervised(name, run, counts):
        def timed(r):
            figure = run(r)
            supervised[name].append(counts["supervised"])
            return figure

        return timed

    arms = {"packed": (packed, packed_counts), "padded": (padded, padded_counts), "longest": (longest, longest_counts)}
    result = interleaved({name: with_supervised(name, *made) for name, made in arms.items()}, args.rounds, "sft")
    ratio = ratios(result["packed"]["rounds"], result["longest"]["rounds"])
    print(
        f"useful tokens/s: packed {result['packed']['median']:,.0f} ({packed_sampler.fill:.0%} of row positions), "
        f"padded to the row {result['padded']['median']:,.0f} ({padded_sampler.fill:.0%}), padded to the batch's "
        f"longest {result['longest']['median']:,.0f}; packed ÷ longest {ratio['median']:.2f}×"
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
            "padded_to_the_row": {
                "useful_tokens_per_s": result["padded"],
                "supervised_tokens_per_s": supervised["padded"],
                "fill": padded_sampler.fill,
            },
            "peer": {
                "name": "one conversation per row, padded to the longest in its batch (TRL's default collator)",
                "useful_tokens_per_s": result["longest"],
                "supervised_tokens_per_s": supervised["longest"],
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
