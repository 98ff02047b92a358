"""The order training reads its examples in: a seeded shuffle, epoch by epoch.

The position (epoch, index) is all a checkpoint needs to continue the exact same sequence, at any
number of data-parallel ranks: each reads its share of the same global batches.
WindowSampler reads non-overlapping token windows; distillation's samplers (train/distill.py)
read the same order and add the teacher's part of each batch.
"""

import numpy as np
import torch

from mai.bpb import windows_to_batch
from mai.errors import MaiError


class ShuffledOrder:
    """Indices 0 … num_items − 1, batch_size at a time, reshuffled every epoch."""

    def __init__(self, num_items: int, batch_size: int, seed: int):
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.epoch, self.index = 0, 0
        self._order = self._permutation()

    def _permutation(self) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.randperm(self.num_items, generator=generator)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.index = state["epoch"], state["index"]
        self._order = self._permutation()

    def next_indices(self) -> list[int]:
        if self.index + self.batch_size > self.num_items:
            self.epoch, self.index = self.epoch + 1, 0
            self._order = self._permutation()
        indices = self._order[self.index : self.index + self.batch_size].tolist()
        self.index += self.batch_size
        return indices


class WindowSampler(ShuffledOrder):
    """Yields (inputs, targets) batches of windows of seq_len + 1 tokens from one token array."""

    def __init__(
        self, tokens: np.ndarray, seq_len: int, batch_size: int, seed: int, dp_rank: int = 0, dp_size: int = 1
    ):
        self.tokens, self.seq_len = tokens, seq_len
        self.dp_rank, self.dp_size = dp_rank, dp_size
        num_windows = (len(tokens) - 1) // seq_len
        if num_windows < batch_size:
            raise MaiError(
                f"the {len(tokens):,} training tokens make {num_windows} windows of train.seq_len {seq_len}, "
                f"fewer than train.batch_size {batch_size}; lower train.batch_size or train.seq_len, or add data",
                parameter="train.batch_size",
            )
        super().__init__(num_windows, batch_size, seed)

    def windows(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return windows_to_batch(self.tokens, [w * self.seq_len for w in indices], self.seq_len)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next batch, or under data parallelism this rank's equal share of it (the order is global)."""
        indices = self.next_indices()
        share = len(indices) // self.dp_size
        return self.windows(indices[self.dp_rank * share : (self.dp_rank + 1) * share])
