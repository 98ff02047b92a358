"""Cluster planner: per-GPU memory, step time, tokens per day and GPU-hours of a model on N GPUs.

For every layout (tensor-parallel, pipeline and data-parallel degrees, activation checkpointing)
it counts what a rank of `mai train` holds: sharded parameters, gradients and AdamW moments (FSDP2
over the data-parallel ranks), the blocks FSDP2 gathers, the activations autograd saves, and the
fp32 logits of the loss. Time is the model's FLOPs at a stated MFU plus the communication that
cannot hide behind compute. Pipeline parallelism is planned here before mai implements it, so that
a plan can say when it would be needed. Every assumption is in `Assumptions` and is printed.
"""

import functools
import math
from dataclasses import asdict, dataclass, field

from mai.config import ModelConfig, TrainConfig
from mai.errors import MaiError
from mai.model.info import model_info as _model_info

GiB = 2**30


@functools.lru_cache(maxsize=16)
def model_info(model: ModelConfig, seq_len: int) -> dict:
    """model_info, built once per model and seq_len: a plan evaluates ~80 layouts of the same model."""
    return _model_info(model, seq_len)


@dataclass(frozen=True)
class Gpu:
    name: str
    memory: float  # bytes
    peak_flops: float  # dense bf16 FLOP/s
    nvlink: float  # bytes/s each way within a node
    network: float  # bytes/s per GPU across nodes (InfiniBand or RoCE)
    per_node: int


GPUS = {
    "h100": Gpu("H100 SXM 80 GB", 80 * GiB, 989e12, 450e9, 50e9, 8),
    "h200": Gpu("H200 SXM 141 GB", 141 * GiB, 989e12, 450e9, 50e9, 8),
    "a100": Gpu("A100 SXM 80 GB", 80 * GiB, 312e12, 300e9, 25e9, 8),
    "b200": Gpu("B200 192 GB", 192 * GiB, 2250e12, 900e9, 100e9, 8),
    "cpu": Gpu("CPU process (memory check only)", 64 * GiB, 1e12, 10e9, 10e9, 1024),
}
CHECKPOINTING = ("none", "selective", "full")
# Extra compute of recomputing in the backward: a whole forward (1/3 of a step) for full, the
# elementwise ops between matmuls (a few % of FLOPs) for selective.
RECOMPUTE = {"none": 1.0, "selective": 1.03, "full": 4 / 3}


@dataclass(frozen=True)
class Assumptions:
    """What the estimate takes as given; `mai plan` prints each."""

    mfu: float = 0.40  # model FLOPs / peak, end to end (published MFUs include the pipeline bubble)
    batch_tokens: int = 4 * 2**20  # tokens per optimizer step
    micro_batch: int = 1  # sequences per forward pass
    activation_bytes: int = 2  # bf16 activations
    param_bytes: int = 2  # FSDP2 gathers bf16 parameters
    reduce_bytes: int = 4  # and reduces fp32 gradients
    state_bytes: int = 16  # fp32 parameter, gradient and two AdamW moments per parameter
    usable_memory: float = 0.90  # the rest goes to the CUDA context, NCCL buffers and fragmentation
    loss_chunk: int = 0  # train.loss_chunk: tokens whose logits exist at once (0: all)


@dataclass
class Layout:
    tp: int
    pp: int
    dp: int
    checkpointing: str
    memory: dict[str, float] = field(default_factory=dict)  # bytes per GPU, by part
    fits: bool = False
    why_not: str = ""
    compute_s: float = 0.0
    communication_s: dict[str, float] = field(default_factory=dict)
    step_s: float = 0.0
    bubble: float = 0.0
    grad_accum: int = 0

    @property
    def gpus(self) -> int:
        return self.tp * self.pp * self.dp

    @property
    def total_memory(self) -> float:
        return sum(self.memory.values())

    @property
    def implemented(self) -> bool:
        return self.pp == 1


def memory_per_gpu(model: ModelConfig, seq_len: int, tp: int, pp: int, dp: int, checkpointing: str, a=None) -> dict:
    """Bytes one rank holds at its peak, by part, for this layout (see the module docstring)."""
    a = a or Assumptions()
    info = model_info(model, seq_len)
    d, f, kv = model.d_model, model.hidden_dim, model.kv_heads * model.head_dim
    outside = info["breakdown"]["embedding"] + info["breakdown"]["output"]  # not split by TP
    per_block = (info["params"] - outside) / model.n_layers
    blocks_here = math.ceil(model.n_layers / pp)
    held = (blocks_here * per_block / tp + outside) / dp  # the first stage also holds embedding and head
    tokens = a.micro_batch * seq_len
    in_flight = pp  # 1F1B: the first stage holds the activations of pp micro-batches
    # Elements autograd saves per token and layer: replicated (norm inputs and outputs, outside
    # the TP region) and split by TP (q, k, v, attention output, SwiGLU's four F-wide tensors).
    whole_layer = 4 * d + (3 * d + 2 * kv + 4 * f) / tp
    saved = {
        "none": whole_layer,
        "selective": 3 * d + (2 * d + 2 * kv + 2 * f) / tp,  # block input, matmul and attention outputs
        "full": d,  # the block input only
    }[checkpointing]
    activations = tokens * a.activation_bytes * saved * blocks_here * in_flight
    memory = {
        "parameters, gradients, AdamW": held * a.state_bytes,
        "activations": activations,
        # the block whose backward is running recomputes all it saved
        "recompute": tokens * a.activation_bytes * whole_layer if checkpointing != "none" else 0.0,
        # at the loss's backward: the fp32 log-softmax it saved, and the gradients into and out of
        # it, 12 bytes a logit; chunked, one chunk's worth, plus the final norm's output it recomputes from
        "logits and loss": min(tokens, a.loss_chunk or tokens) * model.vocab_size * 12
        + (tokens * d * a.activation_bytes if a.loss_chunk else 0),
    }
    if dp > 1:
        # FSDP2 gathers one block while the next prefetches and holds one block's unsharded gradient;
        # the head (an embedding-sized group of its own) is gathered with its gradient at the end.
        # A tied embedding stays with the root group, gathered from first forward to last backward.
        head = info["breakdown"]["output"] or info["breakdown"]["embedding"]
        blocks = per_block / tp * (2 * a.param_bytes + a.reduce_bytes)
        root = head * (a.param_bytes + a.reduce_bytes)
        memory["FSDP2 gathered"] = blocks + root if model.tie_embeddings else max(blocks, root)
    return memory


def one_device_memory(model: ModelConfig, train: TrainConfig) -> dict:
    """What training takes on one device, no sharding or checkpointing (`mai model info`)."""
    a = Assumptions(
        micro_batch=train.batch_size,
        activation_bytes=4 if train.precision == "fp32" else 2,
        loss_chunk=train.loss_chunk,
    )
    return memory_per_gpu(model, train.seq_len, 1, 1, 1, "none", a)


def evaluate(model: ModelConfig, gpu: Gpu, seq_len: int, layout: Layout, a: Assumptions) -> Layout:
    """Fill in the layout's memory, fit, and time per step."""
    info = model_info(model, seq_len)
    layout.memory = memory_per_gpu(model, seq_len, layout.tp, layout.pp, layout.dp, layout.checkpointing, a)
    sequences = a.batch_tokens // seq_len
    per_rank = sequences / (layout.dp * a.micro_batch)
    layout.grad_accum = max(1, round(per_rank))
    budget = gpu.memory * a.usable_memory
    if per_rank < 1:
        layout.why_not = f"{layout.dp} data-parallel ranks but only {sequences} sequences per step"
    elif layout.total_memory > budget:
        biggest = max(layout.memory, key=layout.memory.get)
        layout.why_not = (
            f"needs {layout.total_memory / GiB:,.1f} GiB of {budget / GiB:,.1f} usable "
            f"({biggest}: {layout.memory[biggest] / GiB:,.1f} GiB)"
        )
    layout.fits = not layout.why_not
    flops = info["flops_per_token"] * a.batch_tokens * RECOMPUTE[layout.checkpointing]
    layout.compute_s = flops / (layout.gpus * gpu.peak_flops * a.mfu)
    layout.communication_s = communication(model, gpu, seq_len, layout, a)
    hidden = layout.communication_s["data parallel"] + layout.communication_s["pipeline"]
    # Tensor-parallel all-reduces sit between a block's matmuls; the rest overlaps with compute.
    layout.step_s = layout.compute_s + layout.communication_s["tensor parallel"] + max(0.0, hidden - layout.compute_s)
    micro_batches = layout.grad_accum
    layout.bubble = (layout.pp - 1) / (micro_batches + layout.pp - 1)
    return layout


def communication(model: ModelConfig, gpu: Gpu, seq_len: int, layout: Layout, a: Assumptions) -> dict:
    """Seconds per step each kind of traffic takes on one GPU at the stated bandwidths."""
    info = model_info(model, seq_len)
    params_here = info["params"] / (layout.tp * layout.pp)
    ring = (layout.dp - 1) / layout.dp
    # FSDP2: gather parameters for forward and again for backward, reduce-scatter gradients once.
    dp_bytes = params_here * ring * (2 * a.param_bytes + a.reduce_bytes)
    dp_bandwidth = gpu.network if layout.tp * layout.dp > gpu.per_node else gpu.nvlink
    tokens_here = a.batch_tokens / layout.dp
    activation = tokens_here * model.d_model * a.activation_bytes
    # TP: two all-reduces of the block's output forward and two backward, per block on this stage.
    tp_bytes = 4 * math.ceil(model.n_layers / layout.pp) * activation * 2 * (layout.tp - 1) / layout.tp
    pp_bytes = 2 * activation if layout.pp > 1 else 0.0
    return {
        "data parallel": dp_bytes / dp_bandwidth,
        "tensor parallel": tp_bytes / gpu.nvlink,
        "pipeline": pp_bytes / gpu.network,
    }


def candidate_layouts(model: ModelConfig, gpus: int, gpu: Gpu) -> list[tuple[int, int, int, str]]:
    """(tp, pp, dp, checkpointing) for TP within a node, pipeline stages up to 64, dp the rest."""
    layouts = []
    for tp in (1, 2, 4, 8, 16):
        if tp > gpu.per_node or model.n_heads % tp or model.kv_heads % tp or model.hidden_dim % tp:
            continue
        for pp in (1, 2, 4, 8, 16, 32, 64):
            if pp > model.n_layers or gpus % (tp * pp):
                continue
            layouts += [(tp, pp, gpus // (tp * pp), ac) for ac in CHECKPOINTING]
    return layouts


def plan(model: ModelConfig, gpus: int, gpu: Gpu, seq_len: int, a: Assumptions) -> list[Layout]:
    """Every candidate layout evaluated, best first: those that fit; among them those mai runs today
    (no pipeline stages), then the fastest, then the smallest pipeline bubble."""
    if gpus <= 0:
        raise MaiError("--gpus must be positive", parameter="gpus")
    layouts = [evaluate(model, gpu, seq_len, Layout(*c), a) for c in candidate_layouts(model, gpus, gpu)]
    if not layouts:
        raise MaiError(f"no layout splits this model over {gpus} GPUs; use a multiple of 8 GPUs", parameter="gpus")
    return sorted(layouts, key=lambda x: (not x.fits, not x.implemented, round(x.step_s, 3), x.bubble, x.tp))


def training_time(model: ModelConfig, gpus: int, seq_len: int, layout: Layout, tokens: float, a: Assumptions) -> dict:
    """Tokens per day, days and GPU-hours to train on `tokens` in `layout`."""
    tokens_per_day = a.batch_tokens / layout.step_s * 86400
    days = tokens / tokens_per_day
    return {"tokens_per_day": tokens_per_day, "days": days, "gpu_hours": days * 24 * gpus}


def parse_layout(text: str) -> tuple[int, int, int]:
    """'tp=8,pp=16,dp=128' as (tp, pp, dp); a missing degree is 1."""
    degrees = {"tp": 1, "pp": 1, "dp": 1}
    for part in text.split(","):
        key, _, value = part.partition("=")
        if key.strip() not in degrees or not value.strip().isdigit():
            raise MaiError(f"--layout takes tp=N,pp=N,dp=N, not {text!r}", parameter="layout")
        degrees[key.strip()] = int(value)
    return degrees["tp"], degrees["pp"], degrees["dp"]


def plan_report(model_name: str, model: ModelConfig, gpus: int, gpu: Gpu, seq_len: int, tokens: float, a, layouts):
    """The plan as a dict (`mai plan --json`): assumptions, every layout, the recommendation and its cost."""
    best = layouts[0]
    return {
        "model": model_name,
        "params": model_info(model, seq_len)["params"],
        "gpus": gpus,
        "gpu": asdict(gpu),
        "seq_len": seq_len,
        "tokens": tokens,
        "assumptions": asdict(a),
        "recommended": _layout_dict(best) if best.fits else None,
        "cost": training_time(model, gpus, seq_len, best, tokens, a) if best.fits else None,
        "layouts": [_layout_dict(layout) for layout in layouts],
    }


def _layout_dict(layout: Layout) -> dict:
    return {
        "tp": layout.tp,
        "pp": layout.pp,
        "dp": layout.dp,
        "activation_checkpoint": layout.checkpointing,
        "fits": layout.fits,
        "why_not": layout.why_not or None,
        "memory_gib": {part: size / GiB for part, size in layout.memory.items()},
        "total_gib": layout.total_memory / GiB,
        "compute_s": layout.compute_s,
        "communication_s": layout.communication_s,
        "step_s": layout.step_s,
        "grad_accum": layout.grad_accum,
        "bubble": layout.bubble,
        "implemented": layout.implemented,
    }


def parse_count(text: str, option: str) -> float:
    """'10T', '500B', '4M' or a plain number as a count."""
    scale = {"K": 1e3, "M": 1e6, "B": 1e9, "T": 1e12}
    text = text.strip().upper()
    try:
        return float(text[:-1]) * scale[text[-1]] if text and text[-1] in scale else float(text)
    except ValueError:
        raise MaiError(
            f"{option} takes a count such as 10T, 500B or 4M, not {text!r}", parameter=option.lstrip("-")
        ) from None


def plan_command(config, gpus: int, gpu_name: str, tokens: str, mfu: float, batch_tokens: str, layout, ac, as_json):
    """`mai plan`'s output: every layout (or the one given) for config.model on `gpus` GPUs."""
    import json

    if gpu_name not in GPUS:
        raise MaiError(f"--gpu must be one of {', '.join(GPUS)}, not {gpu_name!r}", parameter="gpu")
    if not 0 < mfu <= 1:
        raise MaiError(f"--mfu is a fraction of peak, in (0, 1], not {mfu}", parameter="mfu")
    if ac not in CHECKPOINTING:
        raise MaiError(f"--ac must be one of {', '.join(CHECKPOINTING)}, not {ac!r}", parameter="ac")
    gpu, seq_len = GPUS[gpu_name], config.train.seq_len
    # By default a step has 4M tokens, or one sequence per rank when TP 8 leaves more ranks than that.
    default_batch = max(4 * 2**20, gpus // min(8, gpu.per_node) * seq_len)
    a = Assumptions(
        mfu=mfu,
        batch_tokens=int(parse_count(batch_tokens, "--batch-tokens")) if batch_tokens else default_batch,
        loss_chunk=config.train.loss_chunk,
    )
    if layout:
        tp, pp, dp = parse_layout(layout)
        if tp * pp * dp != gpus:
            raise MaiError(f"--layout {layout} uses {tp * pp * dp} GPUs, not --gpus {gpus}", parameter="layout")
        layouts = [evaluate(config.model, gpu, seq_len, Layout(tp, pp, dp, ac), a)]
    else:
        layouts = plan(config.model, gpus, gpu, seq_len, a)
    report = plan_report(config.preset, config.model, gpus, gpu, seq_len, parse_count(tokens, "--tokens"), a, layouts)
    return json.dumps(report, indent=2) + "\n" if as_json else format_plan(report)


def format_plan(report: dict, planned_shown: int = 3) -> str:
    """The plan as `mai plan` prints it: every layout mai runs today, and the best few with pipeline stages."""
    a, gpu = report["assumptions"], report["gpu"]
    lines = [
        f"{report['model']}: {report['params'] / 1e9:,.1f}B parameters on {report['gpus']:,} × {gpu['name']}, "
        f"seq_len {report['seq_len']:,}, {report['tokens'] / 1e12:,.2f}T tokens",
        "assumptions:",
        f"  MFU {a['mfu']:.2f} end to end (as published runs report it, pipeline bubble included), "
        f"peak {gpu['peak_flops'] / 1e12:,.0f} TFLOP/s bf16",
        f"  {a['batch_tokens']:,} tokens per step, micro-batch {a['micro_batch']} sequence(s)",
        f"  NVLink {gpu['nvlink'] / 1e9:,.0f} GB/s within a node of {gpu['per_node']}, "
        f"network {gpu['network'] / 1e9:,.0f} GB/s per GPU across nodes",
        f"  {a['state_bytes']} bytes/parameter of state sharded by FSDP2 (fp32 weight, gradient, AdamW moments), "
        f"gathered in {a['param_bytes']}-byte, reduced in {a['reduce_bytes']}-byte floats",
        f"  activations {a['activation_bytes']} bytes; {a['usable_memory']:.0%} of GPU memory usable; "
        f"loss over {a['loss_chunk'] or 'all'} tokens' logits at once (train.loss_chunk)",
        "  TP all-reduces are on the critical path; FSDP2 and pipeline traffic hide behind compute until it exceeds it",
        "",
        f"{'tp':>3} {'pp':>3} {'dp':>6} {'ckpt':>9} {'GiB/GPU':>8} {'step s':>8} {'comm s':>7} {'bubble':>6}  verdict",
    ]
    implemented = [x for x in report["layouts"] if x["implemented"]]
    planned = [x for x in report["layouts"] if not x["implemented"] and x["fits"]][:planned_shown]
    for layout in implemented + planned:
        verdict = "fits" if layout["fits"] else f"does not fit: {layout['why_not']}"
        if layout["fits"] and not layout["implemented"]:
            verdict += " (pipeline parallelism: planned, not yet in mai)"
        lines.append(
            f"{layout['tp']:>3} {layout['pp']:>3} {layout['dp']:>6} {layout['activation_checkpoint']:>9} "
            f"{layout['total_gib']:>8,.1f} {layout['step_s']:>8.2f} {sum(layout['communication_s'].values()):>7.2f} "
            f"{layout['bubble']:>6.0%}  {verdict}"
        )
    if len(report["layouts"]) > len(implemented) + len(planned):
        lines.append(f"… {len(report['layouts']) - len(implemented) - len(planned)} more with pipeline stages (--json)")
    best, cost = report["recommended"], report["cost"]
    if best is None:
        lines.append("\nno layout fits: add GPUs, shorten seq_len, or choose GPUs with more memory")
        return "\n".join(lines) + "\n"
    lines += [
        "",
        f"recommended: tp {best['tp']} × pp {best['pp']} × dp {best['dp']}, "
        f"activation checkpointing {best['activation_checkpoint']}, {best['total_gib']:,.1f} GiB per GPU:",
    ]
    lines += [f"  {part:<30} {size:>8,.2f} GiB" for part, size in best["memory_gib"].items()]
    lines += [
        f"  step {best['step_s']:.2f} s (compute {best['compute_s']:.2f} s, grad_accum {best['grad_accum']})",
        f"  {cost['tokens_per_day'] / 1e9:,.1f}B tokens/day, {cost['days']:,.1f} days, "
        f"{cost['gpu_hours'] / 1e6:,.2f}M GPU-hours",
    ]
    if best["implemented"]:
        lines.append(
            f"  config: --set parallel.tp={best['tp']} --set parallel.dp_shard={best['dp']} "
            f"--set parallel.activation_checkpoint={best['activation_checkpoint']}"
        )
    return "\n".join(lines) + "\n"
