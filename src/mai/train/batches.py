"""The order training reads token windows in: shuffled non-overlapping windows, epoch by epoch.

The position (epoch, index) is all a checkpoint needs to continue the exact same sequence.
"""

import numpy as np
import torch

from mai.bpb import windows_to_batch
from mai.errors import MaiError


class WindowSampler:
    """Yields (inputs, targets) batches of windows of seq_len + 1 tokens from one token array."""

    def __init__(self, tokens: np.ndarray, seq_len: int, batch_size: int, seed: int):
        self.tokens, self.seq_len, self.batch_size, self.seed = tokens, seq_len, batch_size, seed
        self.num_windows = (len(tokens) - 1) // seq_len
        if self.num_windows < batch_size:
            raise MaiError(
                f"the {len(tokens):,} training tokens make {self.num_windows} windows of train.seq_len {seq_len}, "
                f"fewer than train.batch_size {batch_size}; lower train.batch_size or train.seq_len, or add data",
                parameter="train.batch_size",
            )
        self.epoch, self.index = 0, 0
        self._order = self._permutation()

    def _permutation(self) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.randperm(self.num_windows, generator=generator)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.index = state["epoch"], state["index"]
        self._order = self._permutation()

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.index + self.batch_size > self.num_windows:
            self.epoch, self.index = self.epoch + 1, 0
            self._order = self._permutation()
        windows = self._order[self.index : self.index + self.batch_size].tolist()
        self.index += self.batch_size
        return windows_to_batch(self.tokens, [w * self.seq_len for w in windows], self.seq_len)
