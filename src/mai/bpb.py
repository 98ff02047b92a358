"""Bits per byte: the one definition of held-out loss that training and evaluation share.

Loss in nats per token depends on the tokenizer; dividing the summed loss by the UTF-8 bytes of
the predicted tokens (and by ln 2) gives bits per byte, which compares across tokenizers.
Special tokens carry no bytes and are left out of both sums. The windows are the same leading
non-overlapping windows of the validation tokens every time, so measurements compare.
"""

import contextlib
import math
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from mai.errors import MaiError


def check_validation_tokens(tokens: np.ndarray, seq_len: int) -> None:
    """Refuse a validation split too short for one window, which would leave nothing to measure."""
    if len(tokens) < seq_len + 1:
        raise MaiError(
            f"the validation split has {len(tokens):,} tokens, fewer than one window of train.seq_len {seq_len} "
            "plus 1; lower train.seq_len, or add data or raise data.val_fraction and rerun `mai data prepare`",
            parameter="train.seq_len",
        )


def validation_windows(
    tokens: np.ndarray, seq_len: int, batch_size: int, num_batches: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(inputs, targets) batches of the first batch_size·num_batches windows of seq_len + 1 tokens."""
    check_validation_tokens(tokens, seq_len)
    num_windows = min((len(tokens) - 1) // seq_len, batch_size * num_batches)
    for start in range(0, num_windows, batch_size):
        offsets = [w * seq_len for w in range(start, min(start + batch_size, num_windows))]
        yield windows_to_batch(tokens, offsets, seq_len)


def windows_to_batch(tokens: np.ndarray, offsets: list[int], seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) of the windows of seq_len + 1 tokens starting at `offsets`; training batches them too."""
    rows = np.stack([tokens[o : o + seq_len + 1].astype(np.int64) for o in offsets])
    batch = torch.from_numpy(rows)  # (B, seq_len + 1)
    return batch[:, :-1], batch[:, 1:]


@torch.no_grad()
def bits_per_byte(model, batches, token_bytes: torch.Tensor, autocast=contextlib.nullcontext) -> dict:
    """Mean loss (nats/token) and bits per byte of `model` over (inputs, targets) batches.

    token_bytes[i] is the UTF-8 length of token i (0 for special tokens); `autocast` is a context
    manager factory for the forward pass (bf16 autocast, or nothing).
    """
    device = token_bytes.device
    total_nats, total_bytes, total_loss, total_tokens = 0.0, 0, 0.0, 0
    for inputs, targets in batches:
        with autocast():
            logits = model(inputs.to(device))
        targets = targets.to(device)
        losses = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none")
        nbytes = token_bytes[targets.flatten()]
        total_nats += losses[nbytes > 0].sum().item()
        total_bytes += nbytes.sum().item()
        total_loss += losses.sum().item()
        total_tokens += losses.numel()
    return {
        "val_loss": total_loss / total_tokens,
        "val_bpb": total_nats / (math.log(2) * total_bytes),
        "tokens": total_tokens,
        "bytes": int(total_bytes),
    }
