"""Run by tests/model/test_tensor_parallel.py under torchrun: one transformer block, and the whole
model, split over a 2-process gloo mesh by training's TP_PLAN (train/parallel.py), against the
same weights in one process. Rank 0 writes the largest differences as JSON to argv[1]."""

import json
import sys

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor.parallel import parallelize_module

from mai.config import load_config
from mai.model.transformer import build_model
from mai.train.parallel import TP_PLAN


def main(out: str) -> None:
    dist.init_process_group("gloo")
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    overrides = ["model.d_model=128", "model.n_layers=2", "model.n_heads=4", "model.n_kv_heads=2", "model.qk_norm=true"]
    config = load_config("tiny", [*overrides, "model.vocab_size=300"]).model
    torch.manual_seed(0)
    tokens = torch.randint(0, config.vocab_size, (2, 24))  # the same on every rank: same seed
    model = build_model(config, seed=1).eval()
    block = model.layers[0]
    x = torch.randn(2, 24, config.d_model)
    cos, sin = model.rope_cos[:24], model.rope_sin[:24]
    with torch.no_grad():
        block_alone, logits_alone = block(x, cos, sin), model(tokens)
        for layer in model.layers:
            parallelize_module(layer, mesh, TP_PLAN)
        block_split, logits_split = block(x, cos, sin), model(tokens)
    differences = {
        "block": (block_split - block_alone).abs().max().item(),
        "logits": (logits_split - logits_alone).abs().max().item(),
        "local_q_features": block.attention.wq.weight.to_local().shape[0],
    }
    if dist.get_rank() == 0:
        with open(out, "w") as f:
            json.dump(differences, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
