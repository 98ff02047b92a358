"""Too few tokens for the training settings is a MaiError saying what to change, not a crash."""

import numpy as np
import pytest

from mai.bpb import validation_windows
from mai.errors import MaiError
from mai.train.batches import WindowSampler


def test_validation_split_shorter_than_a_window():
    tokens = np.arange(150, dtype=np.uint16)
    with pytest.raises(MaiError, match="the validation split has 150 tokens, fewer than one window") as raised:
        list(validation_windows(tokens, seq_len=200, batch_size=1, num_batches=8))
    assert "lower train.seq_len" in str(raised.value) and raised.value.parameter == "train.seq_len"


def test_validation_split_of_exactly_one_window():
    tokens = np.arange(201, dtype=np.uint16)
    [(inputs, targets)] = validation_windows(tokens, seq_len=200, batch_size=4, num_batches=8)
    assert inputs.shape == targets.shape == (1, 200)


def test_fewer_training_windows_than_a_batch():
    tokens = np.zeros(1_139_832, dtype=np.uint16)
    with pytest.raises(MaiError) as raised:
        WindowSampler(tokens, seq_len=256, batch_size=5000, seed=0)
    assert str(raised.value) == (
        "the 1,139,832 training tokens make 4452 windows of train.seq_len 256, fewer than train.batch_size 5000; "
        "lower train.batch_size or train.seq_len, or add data"
    )
    assert raised.value.parameter == "train.batch_size"


def test_exactly_one_batch_of_training_windows():
    sampler = WindowSampler(np.arange(4 * 16 + 1, dtype=np.uint16), seq_len=16, batch_size=4, seed=0)
    inputs, targets = sampler.next_batch()
    assert inputs.shape == (4, 16) and (targets == inputs + 1).all()
