"""The last pipeline stage: split clean documents into train/val, apply mixture weights, tokenize, write shards.

The split and the mixture sampling depend only on a document's id and the seed (a hash), so the
shards of a task are the same whichever worker runs it and however often it is rerun. Each task
writes data/shards/{split}_{rank}_{n}.bin (BOS before every document) and a summary JSON that
`prepare.py` merges into the manifest.
"""

import hashlib
import json
from pathlib import Path

import numpy as np
from datatrove.pipeline.base import PipelineStep

ENCODE_BATCH = 256
SOURCE_STATS = ("documents", "bytes", "train_tokens", "val_tokens")  # per source, in summaries and the manifest


def id_hash(doc_id: str, seed: int, salt: str = "split") -> int:
    """A uniform 64-bit integer from a document id; the split and mixture sampling both use it."""
    return int.from_bytes(hashlib.blake2b(f"{seed}:{salt}:{doc_id}".encode(), digest_size=8).digest(), "big")


def val_threshold(doc_ids: list[str], val_fraction: float, seed: int) -> int:
    """The hash below or at which a document is held out: val_fraction of them, at least one."""
    if len(doc_ids) < 2:
        raise ValueError("need at least two documents to hold one out for validation")
    hashes = sorted(id_hash(i, seed) for i in doc_ids)
    return hashes[max(1, round(val_fraction * len(hashes))) - 1]


def copies(doc_id: str, weight: float, seed: int) -> int:
    """How many times a document enters training: floor(weight), plus one with the fractional chance."""
    whole, fraction = int(weight), weight - int(weight)
    return whole + (id_hash(doc_id, seed, "mixture") / 2**64 < fraction)


class ShardWriter(PipelineStep):
    name = "🔢 tokenize + shard"
    type = "💽 - WRITER"

    def __init__(
        self,
        shards_dir: str,
        summaries_dir: str,
        tokenizer_path: str,
        threshold: int,
        seed: int,
        weights: dict[str, float],
        shard_tokens: int,
    ):
        super().__init__()
        self.shards_dir, self.summaries_dir = Path(shards_dir), Path(summaries_dir)
        self.tokenizer_path, self.threshold, self.seed = tokenizer_path, threshold, seed
        self.weights, self.shard_tokens = weights, shard_tokens

    def run(self, data, rank: int = 0, world_size: int = 1):
        from mai.run import atomic_write_json
        from mai.tokenizer import Tokenizer

        tokenizer = Tokenizer.load(Path(self.tokenizer_path))
        dtype = np.uint16 if tokenizer.vocab_size <= 2**16 else np.uint32
        writers = {
            split: _SplitWriter(self.shards_dir, split, rank, dtype, self.shard_tokens) for split in ("train", "val")
        }
        sources: dict[str, dict] = {}
        val_documents = []
        batch = []
        for doc in data:
            batch.append(doc)
            if len(batch) == ENCODE_BATCH:
                self._write(batch, tokenizer, writers, sources, val_documents)
                batch = []
        if batch:
            self._write(batch, tokenizer, writers, sources, val_documents)
        summary = {
            "rank": rank,
            "shards": [shard for w in writers.values() for shard in w.close()],
            "sources": sources,
            "val_documents": val_documents,
            "bytes": {split: w.text_bytes for split, w in writers.items()},
        }
        atomic_write_json(self.summaries_dir / f"{rank:05d}.json", summary)
        return
        yield  # a pipeline step is a generator; this one writes and yields nothing

    def _write(self, docs, tokenizer, writers, sources, val_documents):
        for doc, ids in zip(docs, tokenizer.encode_batch([d.text for d in docs]), strict=True):
            source = doc.metadata.get("source", "unknown")
            stats = sources.setdefault(source, dict.fromkeys(SOURCE_STATS, 0))
            stats["documents"] += 1
            stats["bytes"] += len(doc.text.encode())
            if id_hash(doc.id, self.seed) <= self.threshold:
                val_documents.append(doc.id)
                writers["val"].add(ids, len(doc.text.encode()))
                stats["val_tokens"] += len(ids)
                continue
            for _ in range(copies(doc.id, self.weights.get(source, 1.0), self.seed)):
                writers["train"].add(ids, len(doc.text.encode()))
                stats["train_tokens"] += len(ids)
            self.stat_update(f"tokens_{source}", value=len(ids))


class _SplitWriter:
    """Buffers token ids of one split and writes shard files of about shard_tokens tokens, atomically."""

    def __init__(self, directory: Path, split: str, rank: int, dtype, shard_tokens: int):
        self.directory, self.split, self.rank, self.dtype = directory, split, rank, dtype
        self.shard_tokens, self.buffer, self.buffered, self.shards, self.text_bytes = shard_tokens, [], 0, [], 0

    def add(self, ids: list[int], text_bytes: int) -> None:
        self.buffer.append(np.asarray(ids, dtype=self.dtype))
        self.buffered += len(ids)
        self.text_bytes += text_bytes
        if self.buffered >= self.shard_tokens:
            self.flush()

    def flush(self) -> None:
        from mai.run import atomic_write_bytes, sha256_file

        if not self.buffer:
            return
        tokens = np.concatenate(self.buffer)
        path = self.directory / f"{self.split}_{self.rank:05d}_{len(self.shards):04d}.bin"
        atomic_write_bytes(path, tokens.tobytes())
        self.shards.append(
            {"split": self.split, "path": f"shards/{path.name}", "tokens": len(tokens), "sha256": sha256_file(path)}
        )
        self.buffer, self.buffered = [], 0

    def close(self) -> list[dict]:
        self.flush()
        return self.shards


def read_summaries(summaries_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(summaries_dir.glob("*.json"))]
