"""Run under torchrun: train a preset's model for three steps on random tokens in the layout given
by --set overrides and print, as JSON from rank 0, the peak resident memory it added and what
mai.plan predicts for it. test_plan compares the two."""

import json
import sys

import torch

from mai.config import load_config
from mai.plan import Assumptions, memory_per_gpu
from mai.train import parallel
from mai.train.loop import loss_fn
from mai.train.optim import build_optimizer, clip_grad_norm


def peak_allocated(profile) -> int:
    """The most bytes torch's allocator held at once during `profile`, above what it held before."""
    changes = sorted(
        (e.start_ns(), e.nbytes()) for e in profile.profiler.kineto_results.events() if e.name() == "[memory]"
    )
    held = peak = 0
    for _, change in changes:
        held += change
        peak = max(peak, held)
    return peak


def main(preset: str, overrides: list[str]) -> None:
    config = load_config(preset, overrides)
    tc, model_config = config.train, config.model
    layout = parallel.start(config.parallel, "cpu")
    torch.manual_seed(0)
    rows = tc.batch_size // layout.dp_size
    batch = torch.randint(0, model_config.vocab_size, (rows, tc.seq_len + 1))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as profile:
        model = parallel.build_parallel_model(model_config, layout, config.parallel, "fp32", False, tc.seed)
        optimizer = build_optimizer(model, tc)
        for _ in range(3):
            loss_fn(model, batch[:, :-1], batch[:, 1:], torch.device("cpu"), "fp32", tc.loss_chunk).backward()
            clip_grad_norm(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    peak = peak_allocated(profile)
    fp32 = Assumptions(micro_batch=rows, activation_bytes=4, param_bytes=4, reduce_bytes=4, loss_chunk=tc.loss_chunk)
    planned = memory_per_gpu(model_config, tc.seq_len, layout.tp, 1, layout.dp_size, "none", fp32)
    if layout.is_main:
        print(json.dumps({"measured": peak, "planned": planned}))
    parallel.stop()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
