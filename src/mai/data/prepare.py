"""The data stage: read the configured sources, split by document, train the tokenizer, write shards.

Writes into the run directory: data/text/{train,val}.jsonl (the documents), tokenizer.json,
data/shards/{split}_NNNN.bin (token ids, BOS before each document) and data/manifest.json last,
so a run with a manifest has complete, checksummed data.
"""

import json
import random
import time

import numpy as np
from rich.progress import Progress

from mai.config import RunConfig
from mai.data.corpus import read_source
from mai.errors import MaiError
from mai.run import (
    RunDir,
    atomic_write_bytes,
    atomic_write_json,
    load_tokenizer,
    save_tokenizer,
    sha256_file,
)
from mai.tokenizer import train_tokenizer

SPLITS = ("train", "val")


def prepare_data(run: RunDir, config: RunConfig) -> dict:
    """Run the whole data stage; return the manifest."""
    started = time.time()
    documents = collect_documents(config)
    splits = split_documents(documents, config.data.val_fraction, config.data.seed)
    for split, docs in splits.items():
        write_documents(run, split, docs)
    tokenizer = train_run_tokenizer(run, config)
    shards = []
    for split, docs in splits.items():
        shards += write_shards(run, split, [text for _, _, text in docs], tokenizer, config.data.shard_tokens)
    manifest = {
        "sources": {name: _source_stats([d for d in documents if d[0] == name]) for name in config.data.sources},
        "splits": {split: _source_stats(docs) for split, docs in splits.items()},
        "val_documents": [f"{source}/{name}" for source, name, _ in splits["val"]],
        "dtype": _token_dtype(tokenizer.vocab_size).__name__,
        "vocab_size": tokenizer.vocab_size,
        "tokenizer_sha256": sha256_file(run.tokenizer_path),
        "bytes_per_token": {
            split: round(
                sum(len(t.encode()) for _, _, t in docs) / sum(s["tokens"] for s in shards if s["split"] == split), 4
            )
            for split, docs in splits.items()
        },
        "tokens": {split: sum(s["tokens"] for s in shards if s["split"] == split) for split in SPLITS},
        "shards": shards,
        "seconds": round(time.time() - started, 2),
    }
    atomic_write_json(run.manifest_path, manifest)
    return manifest


def collect_documents(config: RunConfig) -> list[tuple[str, str, str]]:
    """(source, name, text) documents, each source capped at its share of data.max_mb."""
    budget = int(config.data.max_mb * 1e6 / len(config.data.sources))
    documents = []
    for source in config.data.sources:
        docs = [(name, text) for name, text in read_source(source) if text.strip()]
        random.Random(config.data.seed).shuffle(docs)
        taken = 0
        for name, text in docs:
            if taken >= budget:
                break
            documents.append((source, name, text))
            taken += len(text.encode())
    if not documents:
        raise MaiError(f"data sources {config.data.sources} gave no documents")
    return documents


def split_documents(documents: list, val_fraction: float, seed: int) -> dict[str, list]:
    """Hold out whole documents (at least one) for validation."""
    if len(documents) < 2:
        raise MaiError("need at least two documents to hold one out for validation; add sources or raise data.max_mb")
    order = list(range(len(documents)))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(val_fraction * len(documents)))
    val = set(order[:n_val])
    return {
        "train": [d for i, d in enumerate(documents) if i not in val],
        "val": [d for i, d in enumerate(documents) if i in val],
    }


def write_documents(run: RunDir, split: str, docs: list) -> None:
    lines = (json.dumps({"source": s, "name": n, "text": t}, ensure_ascii=False) for s, n, t in docs)
    atomic_write_bytes(run.text_dir / f"{split}.jsonl", ("\n".join(lines) + "\n").encode())


def read_documents(run: RunDir, split: str) -> list[str]:
    path = run.text_dir / f"{split}.jsonl"
    if not path.is_file():
        raise MaiError(f"{path} is missing; run `mai data prepare {run.path}`")
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f if line.strip()]


def train_run_tokenizer(run: RunDir, config: RunConfig):
    """Train BPE on a sample of the training documents, save it, and return it."""
    budget, sample = config.tokenizer.sample_mb * 1e6, []
    for text in read_documents(run, "train"):
        if budget <= 0:
            break
        sample.append(text[: int(budget)])
        budget -= len(text)
    tokenizer = train_tokenizer(sample, config.model.vocab_size)
    save_tokenizer(tokenizer, run.path)
    return load_tokenizer(run, config.model.vocab_size)


def write_shards(run: RunDir, split: str, texts: list[str], tokenizer, shard_tokens: int) -> list[dict]:
    """Tokenize documents (BOS first) and write shards of at most shard_tokens tokens."""
    dtype = _token_dtype(tokenizer.vocab_size)
    shards, buffer, buffered, index = [], [], 0, 0

    def flush():
        nonlocal buffer, buffered, index
        tokens = np.concatenate(buffer).astype(dtype)
        path = run.shards_dir / f"{split}_{index:04d}.bin"
        atomic_write_bytes(path, tokens.tobytes())
        shards.append(
            {
                "split": split,
                "path": str(path.relative_to(run.data_dir)),
                "tokens": len(tokens),
                "sha256": sha256_file(path),
            }
        )
        buffer, buffered, index = [], 0, index + 1

    with Progress(transient=True) as progress:
        task = progress.add_task(f"tokenizing {split}", total=len(texts))
        for start in range(0, len(texts), 64):
            for ids in tokenizer.encode_batch(texts[start : start + 64]):
                buffer.append(np.asarray(ids, dtype=np.int64))
                buffered += len(ids)
                if buffered >= shard_tokens:
                    flush()
            progress.advance(task, len(texts[start : start + 64]))
    if buffer:
        flush()
    return shards


def _token_dtype(vocab_size: int):
    return np.uint16 if vocab_size <= 2**16 else np.uint32


def _source_stats(docs: list) -> dict:
    return {"documents": len(docs), "bytes": sum(len(t.encode()) for _, _, t in docs)}
