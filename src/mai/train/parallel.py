"""Training on many processes: the device mesh, then tensor parallelism, activation checkpointing,
compile and FSDP2 applied to the model from outside it, in torchtitan's order.

torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR) starts it. Without torchrun, or
with one process, `start` returns None and training keeps its one-process path. The model is built
on the meta device, parallelized, then materialised with every parameter drawn whole, in the same
order as one process draws it, and cut to this rank's shard: a run starts from the same weights at
any layout, and no rank ever holds more than one whole parameter.
"""

import functools
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module
from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

from mai.config import ModelConfig, ParallelConfig
from mai.errors import MaiError
from mai.model.transformer import Transformer

# Selective checkpointing keeps these outputs and recomputes the rest (norms, RoPE, SwiGLU's
# elementwise ops): the matmuls and attention are most of the FLOPs, the rest most of the bytes.
SAVED_OPS = {
    torch.ops.aten.mm.default,
    torch.ops.aten.addmm.default,
    torch.ops.aten._scaled_dot_product_flash_attention.default,
    torch.ops.aten._scaled_dot_product_efficient_attention.default,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default,
}

# What each rank holds: its heads of q, k and v and its columns of w1 and w3 (column-wise), the
# matching rows of wo and w2 (row-wise, whose outputs are summed across ranks).
TP_PLAN = {
    "attention.wq": ColwiseParallel(),
    "attention.wk": ColwiseParallel(),
    "attention.wv": ColwiseParallel(),
    "attention.wo": RowwiseParallel(),
    "feed_forward.w1": ColwiseParallel(),
    "feed_forward.w3": ColwiseParallel(),
    "feed_forward.w2": RowwiseParallel(),
}


@dataclass(frozen=True)
class Layout:
    """Where this process sits: its rank, its data-parallel slice, and the mesh the model is cut over."""

    mesh: DeviceMesh
    device: torch.device
    rank: int
    world_size: int
    dp_rank: int
    dp_size: int
    dp_replicate: int
    dp_shard: int
    tp: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def start(config: ParallelConfig, device_type: str) -> Layout | None:
    """Join torchrun's process group and build the mesh; None for a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return None
    dp_shard = config.shard_degree(world_size, "processes torchrun started")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(device_type, local_rank) if device_type == "cuda" else torch.device(device_type)
    if device_type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=timedelta(seconds=config.timeout_s))
    mesh = init_device_mesh(
        device_type, (config.dp_replicate, dp_shard, config.tp), mesh_dim_names=("dp_replicate", "dp_shard", "tp")
    )
    dp_mesh = mesh["dp_replicate", "dp_shard"]._flatten("dp")
    return Layout(
        mesh=mesh,
        device=device,
        rank=dist.get_rank(),
        world_size=world_size,
        dp_rank=dp_mesh.get_local_rank(),
        dp_size=dp_mesh.size(),
        dp_replicate=config.dp_replicate,
        dp_shard=dp_shard,
        tp=config.tp,
    )


def stop() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def check_divisible(model: ModelConfig, layout: Layout, batch_size: int) -> None:
    """Refuse, before anything is built, a layout that would not split this model or batch evenly."""
    parts = {
        "model.n_heads": model.n_heads,
        "model.n_kv_heads": model.kv_heads,
        "model.hidden_dim (ffn)": model.hidden_dim,
    }
    for name, value in parts.items():
        if value % layout.tp:
            raise MaiError(f"{name} ({value}) must be divisible by parallel.tp ({layout.tp})", parameter="parallel.tp")
    if batch_size % layout.dp_size:
        raise MaiError(
            f"train.batch_size ({batch_size}) must be divisible by the {layout.dp_size} data-parallel ranks "
            "(parallel.dp_replicate × dp_shard), each of which reads an equal share of it",
            parameter="train.batch_size",
        )


def build_parallel_model(
    config: ModelConfig, layout: Layout, parallel: ParallelConfig, precision: str, compile: bool, seed: int
) -> Transformer:
    """The model cut over `layout`: TP, then activation checkpointing, compile per block, FSDP2; then
    materialised on this rank's device and initialised as one process would (see the module docstring)."""
    with torch.device("meta"):
        model = Transformer(config)
    if layout.tp > 1:
        for block in model.layers:
            parallelize_module(block, layout.mesh["tp"], TP_PLAN)
    if parallel.activation_checkpoint != "none":
        apply_activation_checkpointing(model, parallel.activation_checkpoint)
    if compile:
        for block in model.layers:
            block.compile()  # in place: parameter names stay those of the checkpoint
    if layout.dp_size > 1:
        apply_fsdp(model, layout, parallel, precision)
    model.to_empty(device=layout.device)
    initialise(model, seed, layout.device)
    return model


def apply_activation_checkpointing(model: Transformer, mode: str) -> None:
    """Wrap each block so its backward recomputes its forward: all of it, or all but SAVED_OPS."""
    options = {}
    if mode == "selective":
        options["context_fn"] = functools.partial(create_selective_checkpoint_contexts, _keep_matmuls)
    for index, block in enumerate(model.layers):
        model.layers.register_module(str(index), checkpoint_wrapper(block, preserve_rng_state=False, **options))


def _keep_matmuls(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op in SAVED_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def apply_fsdp(model: Transformer, layout: Layout, parallel: ParallelConfig, precision: str) -> None:
    """Shard each block, the embedding and the head, then the rest (final norm), over the data-parallel mesh.

    Parameters are gathered in param_dtype for compute; gradients are reduced in reduce_dtype (fp32
    by default, so summing many ranks' bf16 gradients loses nothing)."""
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    param_dtype = precision if parallel.param_dtype == "auto" else parallel.param_dtype
    policy = MixedPrecisionPolicy(param_dtype=dtypes[param_dtype], reduce_dtype=dtypes[parallel.reduce_dtype])
    # A 2-D mesh is HSDP: replicas of a shard group (with dp_shard 1, plain replication)
    mesh = layout.mesh["dp_replicate", "dp_shard"] if layout.dp_replicate > 1 else layout.mesh["dp_shard"]
    for block in model.layers:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    if model.output is not None:
        # Their own groups, so the embedding is freed after its lookup and the head after its backward;
        # a tied head reads the embedding's weight outside its module, so both stay with the root.
        fully_shard(model.tok_embeddings, mesh=mesh, mp_policy=policy)
        fully_shard(model.output, mesh=mesh, mp_policy=policy, reshard_after_forward=False)
    fully_shard(model, mesh=mesh, mp_policy=policy)


@torch.no_grad()
def initialise(model: Transformer, seed: int, device: torch.device) -> None:
    """Draw every parameter whole, in one process's order (Transformer.init_parameter), and keep this rank's shard."""
    generator = torch.Generator(device=device).manual_seed(seed)
    for name, param in model.named_parameters():
        whole = torch.empty(param.shape, device=device)
        model.init_parameter(name, whole, generator)
        if isinstance(param, DTensor):
            whole = distribute_tensor(whole, param.device_mesh, param.placements, src_data_rank=None)
        param.copy_(whole)
    model.init_rope_tables()


def mean_over_ranks(value: float, device: torch.device) -> float:
    """The average of a number over all ranks (the loss: each data-parallel rank saw its share of the batch)."""
    tensor = torch.tensor(value, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.item() / dist.get_world_size()


def barrier() -> None:
    dist.barrier()


def broadcast(value):
    """Rank 0's `value` on every rank (a picklable object)."""
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]
