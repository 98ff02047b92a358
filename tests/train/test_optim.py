import pytest

from mai.config import load_config
from mai.train.optim import lr_multiplier


@pytest.mark.parametrize("schedule", ["cosine", "wsd"])
def test_schedule_warms_up_then_decays_to_the_floor(schedule):
    config = load_config("tiny", ["train.steps=100", "train.warmup_steps=10", f"train.schedule={schedule}"]).train
    lrs = [lr_multiplier(step, config) for step in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a <= b for a, b in zip(lrs[:10], lrs[1:10], strict=False))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))
    assert lr_multiplier(100, config) == pytest.approx(config.min_lr_ratio)
    if schedule == "wsd":
        assert lrs[10:80] == [1.0] * 70 and lrs[85] < 1.0
