"""Quality gates on a teacher's samples, applied in plan order so that the kept set is the same
however the replies arrived: too short, a refusal, repetitive, a near-duplicate of an earlier
kept sample (MinHash over word 5-grams, with LSH bands), or sharing a 13-gram with a registered
evaluation set. Each rejected sample keeps its reason, as the data pipeline's rejects do.
"""

import re

import numpy as np
import xxhash

from mai.config import SynthConfig
from mai.data.filters import ngram_hashes, ngram_hits

REFUSAL = re.compile(
    r"^\W*(i'?m sorry|i am sorry|i apologi[sz]e|i can(no|')t|i cannot|i'm unable|i am unable|as an ai\b)",
    re.IGNORECASE,
)
SHINGLE = 5
BANDS, ROWS = 14, 8  # FineWeb's setting, as in the pipeline's MinHash step
MERSENNE = (1 << 61) - 1


def words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def repetition(tokens: list[str], n: int = 3) -> float:
    """Share of word n-grams that repeat an earlier one."""
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


class MinHashIndex:
    """Near-duplicate lookup among the samples kept so far."""

    def __init__(self, threshold: float, seed: int = 1):
        rng = np.random.default_rng(seed)
        self.a = rng.integers(1, MERSENNE, BANDS * ROWS, dtype=np.uint64)
        self.b = rng.integers(0, MERSENNE, BANDS * ROWS, dtype=np.uint64)
        self.threshold = threshold
        self.buckets: dict[tuple, list[int]] = {}
        self.signatures: list[np.ndarray] = []

    def signature(self, tokens: list[str]) -> np.ndarray:
        shingles = {" ".join(tokens[i : i + SHINGLE]) for i in range(max(1, len(tokens) - SHINGLE + 1))}
        hashes = np.array([xxhash.xxh64_intdigest(s) % MERSENNE for s in shingles], dtype=np.uint64)
        # (a·h + b) mod p in exact integer arithmetic: object arrays, as the products overflow 64 bits
        products = (
            self.a.astype(object)[:, None] * hashes.astype(object)[None, :] + self.b.astype(object)[:, None]
        ) % MERSENNE
        return products.min(axis=1).astype(np.uint64)

    def near_duplicate(self, signature: np.ndarray) -> bool:
        candidates = {i for band in self._bands(signature) for i in self.buckets.get(band, [])}
        return any(np.mean(self.signatures[i] == signature) >= self.threshold for i in candidates)

    def add(self, signature: np.ndarray) -> None:
        for band in self._bands(signature):
            self.buckets.setdefault(band, []).append(len(self.signatures))
        self.signatures.append(signature)

    def _bands(self, signature: np.ndarray):
        return [(b, signature[b * ROWS : (b + 1) * ROWS].tobytes()) for b in range(BANDS)]


class Gates:
    """The gates of one `mai synth` run; `reason(text)` is None for a kept sample (which is then
    remembered for the near-duplicate gate), else why it is rejected."""

    def __init__(self, config: SynthConfig, eval_ngrams: np.ndarray | None):
        self.config = config
        self.eval_ngrams = eval_ngrams
        self.index = MinHashIndex(config.near_duplicate)

    def reason(self, text: str) -> str | None:
        tokens = words(text)
        if len(tokens) < self.config.min_words:
            return "too_short"
        if REFUSAL.match(text):
            return "refusal"
        if repetition(tokens) > self.config.max_repetition:
            return "repetitive"
        if self.eval_ngrams is not None and len(ngram_hits(self.eval_ngrams, ngram_hashes(text))):
            return "eval_overlap"
        signature = self.index.signature(tokens)
        if self.index.near_duplicate(signature):
            return "near_duplicate"
        self.index.add(signature)
        return None
