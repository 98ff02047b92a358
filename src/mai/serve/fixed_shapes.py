"""The serving engine's decode step at fixed shapes: a CUDA graph per batch-size bucket on GPUs, a
compiled graph per bucket on CPUs (`mai serve --compile`).

Eagerly, one decode step of a small batch is hundreds of small ops; on a GPU their launches, and on
a CPU their dispatch, set the pace, not the arithmetic. A CUDA graph replays the whole step as one
launch; torch.compile fuses it into a few kernels. Both need fixed shapes, so each graph decodes a
fixed number of rows (the power of two at or above the running rows) over the cache's full width,
reading its tokens and lengths from buffers that stay in place; the rows past the running ones are
computed and ignored.
"""

import time
from collections.abc import Callable

import torch

from mai.model.decode import compiled_decode_step, decode_step
from mai.model.transformer import KVCache, Transformer


class FixedShapeDecode:
    """decode(tokens (n, 1), n) → logits (n, V), as model(tokens, lengths[:n, None], cache) would give;
    the cache has a fixed span."""

    def __init__(self, model: Transformer, cache: KVCache, lengths: torch.Tensor):
        self.model, self.cache, self.lengths = model, cache, lengths
        self.tokens = torch.zeros(len(lengths), 1, dtype=torch.long, device=lengths.device)

    def __call__(self, tokens: torch.Tensor, n: int) -> torch.Tensor:
        rows = self.bucket(n)
        self.tokens[:n].copy_(tokens)
        self.lengths[n:rows].zero_()  # idle rows write position 0 of their own row, which prefill overwrites
        return self.run(rows)[:n]

    def run(self, rows: int) -> torch.Tensor:
        """Logits (rows, V) of the first `rows` rows."""
        raise NotImplementedError

    def bucket(self, n: int) -> int:
        """The rows a step over n running rows computes: the power of two at or above n, at most the cache's."""
        return min(1 << (n - 1).bit_length(), len(self.lengths))

    def buckets(self) -> list[int]:
        """Every row count a step can run at."""
        return sorted({self.bucket(n) for n in range(1, len(self.lengths) + 1)})


class GraphedDecode(FixedShapeDecode):
    def __init__(self, model: Transformer, cache: KVCache, lengths: torch.Tensor):
        super().__init__(model, cache, lengths)
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}

    def run(self, rows: int) -> torch.Tensor:
        if rows not in self.graphs:
            self.graphs[rows] = self._capture(rows)
        graph, logits = self.graphs[rows]
        graph.replay()
        return logits

    def _step(self, rows: int) -> torch.Tensor:
        return decode_step(self.model, self.tokens[:rows], self.cache, self.lengths[:rows, None])

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


class CompiledDecode(FixedShapeDecode):
    """The step through `mai generate --compile`'s compiled_decode_step (weights frozen into the graph)."""

    def run(self, rows: int) -> torch.Tensor:
        return compiled_decode_step(self.model, self.tokens[:rows], self.cache, self.lengths[:rows, None])

    def compile_all(self, log: Callable[[str], None] = lambda line: None) -> None:
        """Compile every bucket now (5-20 s each on CPUs), so that no request waits for it later.

        Each bucket decodes position 0 of its idle rows, which prefill overwrites before use. `log`
        gets a line before the first bucket and one as each is compiled, for the silence at start-up.
        """
        buckets = self.buckets()
        # dynamo keeps recompile_limit (8) graphs per function and runs any further shape eagerly
        limit = torch._dynamo.config.recompile_limit
        torch._dynamo.config.recompile_limit = max(limit, len(buckets) + 1)
        log(f"compiling the decode step for batch sizes {', '.join(map(str, buckets))} (--compile)")
        for i, rows in enumerate(buckets, 1):
            started = time.perf_counter()
            self.lengths[:rows].zero_()
            self.run(rows)
            log(f"compiled decode for batch {rows} ({i}/{len(buckets)}) in {time.perf_counter() - started:.1f} s")
