"""`mai sft`: fine-tune a pretrained model into a chat model on conversations (config section sft).

The fine-tuned model is a run directory of its own, RUN/sft/: its config (the base model's shapes,
RUN's [train] and [sft]), a copy of the base's tokenizer, the conversations data/conversations.py
checked and split (conversations/), checkpoints, metrics.jsonl, sft.json and report.md. `mai chat`,
`mai serve` and `mai export` take it like any run.

Each conversation is rendered once by the tokenizer's chat template into ids and an assistant
mask (tokenizer.render_for_training); the loss is cross-entropy on the masked tokens only. Rows
of train.seq_len + 1 tokens are packed with whole conversations, first fit in a seeded order,
and each conversation's positions restart at 0, which keeps attention within it
(model/transformer.py, packed_mask); with sft.packing = false each row holds one conversation
and padding. The held-out conversations give the validation loss (assistant tokens only), and
their first prompts are answered greedily by the base model before and by the tuned model after:
whether each answer ends with the end-of-turn token, and the first few exchanges, go into sft.json.
"""

import json
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from mai.config import RunConfig, validate_config
from mai.console import say
from mai.errors import MaiError
from mai.loading import load_pretrained, load_run_model, save_tokenizer
from mai.model.decode import generate
from mai.precision import autocast
from mai.run import RunDir, make_directory, read_json, read_metrics, write_json
from mai.run_files import SftAnswers, SftExchange, SftRecord
from mai.tokenizer import PAD, Tokenizer
from mai.train.batches import ShuffledOrder
from mai.train.loop import train

EXCHANGES_SHOWN = 3  # held-out exchanges sft.json keeps, before and after


class Conversation(NamedTuple):
    ids: np.ndarray  # (L,) int64
    mask: np.ndarray  # (L,) bool: the assistant's tokens


def read_conversations(path: Path) -> list[list[dict[str, str]]]:
    """The conversations of a JSONL file that data/conversations.py wrote (and checked)."""
    return [json.loads(line)["messages"] for line in path.read_text(encoding="utf-8").splitlines()]


def tokenize(conversations: list, tokenizer: Tokenizer, row_tokens: int) -> tuple[list[Conversation], int]:
    """Each conversation rendered for training, cut to fit row_tokens; (those with an assistant token
    left, how many were cut). A long conversation ends after its last assistant turn that fits
    whole, so that the model still learns to stop; without one, it is cut at row_tokens."""
    out, cut = [], 0
    for messages in conversations:
        ids, mask = tokenizer.render_for_training(messages)
        if len(ids) > row_tokens:
            ends = [i + 1 for i in range(row_tokens) if mask[i] and (i + 1 == len(mask) or not mask[i + 1])]
            end = ends[-1] if ends else row_tokens
            ids, mask, cut = ids[:end], mask[:end], cut + 1
        if any(mask[1:]):
            out.append(Conversation(np.array(ids, dtype=np.int64), np.array(mask, dtype=bool)))
    return out, cut


def pack_rows(conversations: list[Conversation], row_tokens: int, packing: bool, seed: int) -> list[list[int]]:
    """Rows of conversation indices: first fit in a seeded order when packing, one per row otherwise."""
    order = np.random.default_rng(seed).permutation(len(conversations)).tolist()
    if not packing:
        return [[i] for i in order]
    rows, room = [], []
    for i in order:
        size = len(conversations[i].ids)
        fit = next((r for r, left in enumerate(room) if left >= size), None)
        if fit is None:
            rows.append([i])
            room.append(row_tokens - size)
        else:
            rows[fit].append(i)
            room[fit] -= size
    return rows


def row_batch(conversations: list[Conversation], rows: list[list[int]], seq_len: int, pad_id: int):
    """(inputs, targets, positions), each (B, seq_len): the rows' conversations one after another,
    targets -100 except the assistant's next tokens, positions restarting at 0 with each conversation
    (and once more for the padding at the end, which sees only itself)."""
    B = len(rows)
    tokens = np.full((B, seq_len + 1), pad_id, dtype=np.int64)
    learn = np.zeros((B, seq_len + 1), dtype=bool)
    positions = np.zeros((B, seq_len + 1), dtype=np.int64)
    for b, row in enumerate(rows):
        start = 0
        for i in row:
            ids, mask = conversations[i]
            end = start + len(ids)
            tokens[b, start:end], learn[b, start:end] = ids, mask
            positions[b, start:end] = np.arange(len(ids))
            start = end
        positions[b, start:] = np.arange(seq_len + 1 - start)
    targets = np.where(learn[:, 1:], tokens[:, 1:], -100)
    return torch.from_numpy(tokens[:, :-1]), torch.from_numpy(targets), torch.from_numpy(positions[:, :-1])


class ConversationSampler(ShuffledOrder):
    """Batches of packed (or padded) rows of conversations, reshuffled every epoch."""

    def __init__(self, conversations: list[Conversation], tc, packing: bool, pad_id: int):
        self.conversations, self.seq_len, self.pad_id = conversations, tc.seq_len, pad_id
        self.rows = pack_rows(conversations, tc.seq_len + 1, packing, tc.seed)
        if len(self.rows) < tc.batch_size:
            raise MaiError(
                f"the training conversations fill {len(self.rows)} rows of {tc.seq_len + 1} tokens, fewer than "
                f"sft.batch_size {tc.batch_size}; lower sft.batch_size or add conversations",
                parameter="sft.batch_size",
            )
        super().__init__(len(self.rows), tc.batch_size, tc.seed)

    def next_batch(self):
        return row_batch(self.conversations, [self.rows[i] for i in self.next_indices()], self.seq_len, self.pad_id)

    @property
    def fill(self) -> float:
        """The share of row positions that hold conversation tokens (the rest is padding)."""
        return sum(len(c.ids) for c in self.conversations) / (len(self.rows) * (self.seq_len + 1))


def masked_loss(model, inputs, targets, positions, device, precision, reduction="mean") -> torch.Tensor:
    """Cross-entropy on the assistant's tokens (targets not -100) of packed rows."""
    with autocast(device, precision):
        logits = model(inputs.to(device), positions.to(device))
    return F.cross_entropy(
        logits.float().flatten(0, 1), targets.to(device).flatten(), ignore_index=-100, reduction=reduction
    )


class FineTuning:
    """The objective `train` runs for `mai sft` (see train/loop.py, NextToken): the base model's
    weights, batches of conversations, masked cross-entropy, the held-out assistant loss."""

    def __init__(self, run: RunDir, config: RunConfig, tokenizer: Tokenizer, device, precision):
        sc = config.sft
        self.settings = sc.train_settings(config.train)
        self.base, self.device, self.precision = Path(sc.init_from), device, precision
        tc = self.settings
        folder = conversations_dir(run)
        self.train_conversations, cut = tokenize(read_conversations(folder / "train.jsonl"), tokenizer, tc.seq_len + 1)
        self.held_out, _ = tokenize(read_conversations(folder / "held_out.jsonl"), tokenizer, tc.seq_len + 1)
        if not self.held_out:
            raise MaiError(
                f"no held-out conversation has an assistant token within sft.seq_len {tc.seq_len}; raise it",
                parameter="sft.seq_len",
            )
        pad = tokenizer.backend.token_to_id(PAD)
        self.pad_id = pad if pad is not None else (tokenizer.eos_id or 0)
        self.batches = ConversationSampler(self.train_conversations, tc, sc.packing, self.pad_id)
        self.token_bytes = torch.tensor(
            tokenizer.token_bytes() + [0] * (config.model.vocab_size - tokenizer.vocab_size)
        )
        say(
            f"sft: {len(self.train_conversations)} conversations ({cut} longer than {tc.seq_len + 1} tokens, cut) in "
            f"{len(self.batches.rows)} rows, {self.batches.fill:.0%} filled; {len(self.held_out)} held out"
        )

    def init_weights(self, model) -> None:
        base, _, _ = load_pretrained(self.base)
        model.load_state_dict(base.state_dict())

    def sampler(self):
        return self.batches

    def loss(self, model, inputs, targets, positions, device, precision) -> torch.Tensor:
        return masked_loss(model, inputs, targets, positions, device, precision)

    @torch.no_grad()
    def validate(self, model) -> dict:
        """Held-out loss per assistant token, and bits per byte of the assistant's text."""
        model.eval()
        rows = [[i] for i in range(len(self.held_out))]
        nats, tokens, text_bytes = 0.0, 0, 0
        for start in range(0, len(rows), self.settings.batch_size):
            inputs, targets, positions = row_batch(
                self.held_out, rows[start : start + self.settings.batch_size], self.settings.seq_len, self.pad_id
            )
            nats += masked_loss(model, inputs, targets, positions, self.device, self.precision, "sum").item()
            learned = targets[targets != -100]
            tokens, text_bytes = tokens + len(learned), text_bytes + int(self.token_bytes[learned].sum())
        model.train()
        return {"val_loss": nats / tokens, "val_bpb": nats / np.log(2) / max(text_bytes, 1)}


def conversations_dir(sft_run: RunDir) -> Path:
    """Where data/conversations.py writes the run's train.jsonl and held_out.jsonl."""
    return sft_run.path / "conversations"


def held_out_prompts(sft_run: RunDir) -> list[list[dict[str, str]]]:
    """Each held-out conversation up to its first assistant turn: what the answers are asked for."""
    held_out = read_conversations(conversations_dir(sft_run) / "held_out.jsonl")
    return [m[: next(i for i, t in enumerate(m) if t["role"] == "assistant")] for m in held_out]


@torch.no_grad()
def answer(model, tokenizer: Tokenizer, prompts: list, max_tokens: int) -> SftAnswers:
    """Greedy answers to the prompts, and the share that end with an end-of-turn token."""
    stop = tokenizer.end_of_turn_ids
    texts, ended = [], 0
    for messages in prompts:
        ids = tokenizer.encode_chat(messages)
        room = min(max_tokens, model.config.max_seq_len - len(ids))
        answer_ids = (
            [int(t) for t in generate(model, torch.tensor([ids]), room, 0.0, stop_ids=stop)] if room > 0 else []
        )
        ended += bool(answer_ids) and answer_ids[-1] in stop
        texts.append(tokenizer.decode(answer_ids, skip_special_tokens=True))
    return SftAnswers(texts=texts, end_of_turn_rate=ended / max(len(prompts), 1))


def create_sft_run(run: RunDir, config: RunConfig) -> tuple[RunDir, RunConfig]:
    """RUN/sft/ as a run directory, and its config: the base model's shapes (sft.init_from's, or RUN's)
    with RUN's settings; the base's tokenizer is copied in."""
    base = Path(config.sft.init_from) if config.sft.init_from else run.path
    out = RunDir(run.sft_dir)
    base_model, tokenizer, _ = load_pretrained(base)
    data = config.model_dump(exclude_none=True)
    data["model"] = base_model.config.model_dump(exclude_none=True)
    data["sft"]["init_from"] = str(base)
    sft_config = validate_config(data)
    if out.config_path.is_file() and out.read_config().model != sft_config.model:
        raise MaiError(f"{out.path} fine-tunes another model than {base}; delete it to start again")
    if not out.config_path.is_file():
        make_directory(out.path)
        save_tokenizer(tokenizer, out.path)
        out.write_config(sft_config)
    return out, sft_config


def fine_tune(out: RunDir, config: RunConfig, resume: bool = False, device: str | None = None) -> SftRecord:
    """Fine-tune sft.init_from's model on the conversations in out/conversations/ (out made by
    create_sft_run); write and return out/sft.json."""
    base, max_tokens = Path(config.sft.init_from), config.sft.answer_tokens
    prompts = held_out_prompts(out)
    before = base_answers(out, base, prompts, max_tokens)
    train(out, resume=resume, config=config, device=device, objective=FineTuning)
    model, _, tokenizer = load_run_model(out)
    after = answer(model, tokenizer, prompts, max_tokens)
    validated = [m for m in read_metrics(out) if m.val_loss is not None]
    record = SftRecord(
        base=str(base),
        checkpoint=out.latest_checkpoint().name,
        base_val_loss=validated[0].val_loss,
        val_loss=validated[-1].val_loss,
        before=before,
        after=after,
        exchanges=[
            SftExchange(prompt=p[-1]["content"], before=b, after=a)
            for p, b, a in zip(prompts, before.texts, after.texts, strict=True)
        ][:EXCHANGES_SHOWN],
    )
    write_json(out.sft_path, record)
    return record


def base_answers(out: RunDir, base: Path, prompts: list, max_tokens: int) -> SftAnswers:
    """The base model's answers, computed once per SFT run (a resumed run reads them back)."""
    path = out.path / "base_answers.json"
    if path.is_file():
        answers = read_json(path, SftAnswers)
        if len(answers.texts) == len(prompts):
            return answers
    model, tokenizer, _ = load_pretrained(base)
    answers = answer(model, tokenizer, prompts, max_tokens)
    write_json(path, answers)
    return answers
