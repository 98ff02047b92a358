"""The window sampler over several shards reads what it reads from one concatenated array, and each
data-parallel rank reads its equal share of every global batch."""

import numpy as np
import torch

from mai.run import TokenShards
from mai.train.batches import WindowSampler


def test_shards_read_as_one_array_slice_by_slice():
    whole = np.arange(50, dtype=np.uint16)
    shards = TokenShards([whole[:7], whole[7:20], whole[20:21], whole[21:]])
    assert len(shards) == 50 and np.array_equal(np.asarray(shards), whole)
    assert [shards[i] for i in (0, 6, 7, 20, 21, 49, -1)] == [0, 6, 7, 20, 21, 49, 49]
    for start in range(51):
        for stop in range(start, 51):
            assert np.array_equal(shards[start:stop], whole[start:stop])


def test_data_parallel_ranks_split_each_batch_of_the_same_order():
    tokens = np.arange(4000, dtype=np.uint16)
    shards = TokenShards([tokens[:1234], tokens[1234:]])
    one = WindowSampler(tokens, 16, 8, seed=3)
    ranks = [WindowSampler(shards, 16, 8, seed=3, dp_rank=r, dp_size=2) for r in range(2)]
    for _ in range(40):  # past an epoch
        inputs, targets = one.next_batch()
        parts = [sampler.next_batch() for sampler in ranks]
        assert torch.equal(inputs, torch.cat([p[0] for p in parts]))
        assert torch.equal(targets, torch.cat([p[1] for p in parts]))
