"""CUDA graphs for the serving engine's decode step: one captured graph per batch-size bucket.

Eagerly, one decode step of a small batch launches hundreds of small kernels, and on a GPU the
launches, not the arithmetic, set the pace. A CUDA graph replays the whole step as one launch. A
replay repeats fixed shapes at fixed addresses, so each graph decodes a fixed number of rows (the
power of two at or above the running rows) over the cache's full width, reading its tokens and
lengths from buffers that stay in place; the rows past the running ones are computed and ignored.
"""

import torch

from mai.model.transformer import KVCache, Transformer


class GraphedDecode:
    """decode(tokens (n, 1), n) → logits (n, V), as model(tokens, cache, lengths=lengths[:n]) would give."""

    def __init__(self, model: Transformer, cache: KVCache, lengths: torch.Tensor):
        self.model, self.cache, self.lengths = model, cache, lengths
        self.tokens = torch.zeros(len(lengths), 1, dtype=torch.long, device=lengths.device)
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}

    def __call__(self, tokens: torch.Tensor, n: int) -> torch.Tensor:
        rows = min(1 << (n - 1).bit_length(), len(self.lengths))
        self.tokens[:n].copy_(tokens)
        self.lengths[n:rows].zero_()  # idle rows write position 0 of their own row, which prefill overwrites
        if rows not in self.graphs:
            self.graphs[rows] = self._capture(rows)
        graph, logits = self.graphs[rows]
        graph.replay()
        return logits[:n, -1]

    def _step(self, rows: int) -> torch.Tensor:
        return self.model(
            self.tokens[:rows], self.cache, last_only=True, lengths=self.lengths[:rows], span=self.cache.max_len
        )

    def _capture(self, rows: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        # A warm-up outside the graph creates cuBLAS handles and workspaces. It writes the same keys
        # and values at the same positions as the replay that follows, so the cache is unchanged.
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            self._step(rows)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            logits = self._step(rows)
        return graph, logits
