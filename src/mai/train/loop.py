"""The training loop: AdamW with warmup and decay, accumulation, clipping, precision, eval, checkpoints.

`train(run)` reads everything from the run directory (config, tokenizer, shards), appends one JSON
record per logged step to metrics.jsonl, and saves checkpoints that `train(run, resume=True)`
continues from exactly: same batches, same RNG, same optimizer state, bit-identical weights.
"""

import contextlib
import math
import time

import torch
import torch.nn.functional as F
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from torch.utils.checkpoint import checkpoint

from mai.bpb import bits_per_byte, check_validation_tokens, validation_windows
from mai.config import RunConfig
from mai.console import console
from mai.errors import MaiError
from mai.loading import check_tokenizer_matches, load_tokenizer
from mai.model.info import model_info
from mai.model.transformer import build_model
from mai.precision import autocast, default_device, resolve_precision
from mai.run import RunDir, append_metrics, read_metrics, truncate_metrics
from mai.run_files import MetricsRecord
from mai.tokenizer import Tokenizer
from mai.train import parallel
from mai.train.batches import WindowSampler
from mai.train.checkpoint import load_checkpoint, save_checkpoint
from mai.train.optim import build_optimizer, build_scheduler, clip_grad_norm, use_optimizer_settings


@contextlib.contextmanager
def deterministic(device: torch.device):
    """Same config, same seed, same weights bit for bit, compiled or not, on CPUs.

    Compiled, inductor turns the embedding's backward into a scatter-add with atomic adds, whose
    order (and so the rounding) changes from run to run: two runs, or a run and its resumption,
    drift apart by about 1e-7 a step. PyTorch's deterministic mode makes it use ATen's serial
    kernel instead, at no measurable cost here. Uninitialised memory is left unfilled, as without
    the mode. GPUs are left alone: there the mode costs speed (torchtitan makes it a debug option).
    The mode is process-wide, so the previous settings come back on exit.
    """
    if device.type != "cpu":
        yield
        return
    previous = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.utils.deterministic.fill_uninitialized_memory,
    )
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.utils.deterministic.fill_uninitialized_memory = previous[2]


def describe(layout) -> str:
    """A layout as the start-up line names it: "FSDP2 ×2, TP ×2"."""
    parts = [("HSDP replicas", layout.dp_replicate), ("FSDP2", layout.dp_shard), ("TP", layout.tp)]
    return ", ".join(f"{name} ×{size}" for name, size in parts if size > 1)


def loss_fn(model, inputs, targets, device, precision, chunk: int = 0) -> torch.Tensor:
    """Mean next-token cross-entropy; with `chunk`, over that many tokens' logits at a time.

    Chunked, each chunk's fp32 logits are freed after its loss and recomputed in the backward
    (activation checkpointing of the head): at vocab 128k and 8k tokens a sequence, the whole
    logits would take 4 GB in fp32, and their log-softmax and gradient as much again each.
    """
    targets = targets.to(device).flatten()
    with autocast(device, precision):
        if not chunk:
            return F.cross_entropy(model(inputs.to(device)).float().flatten(0, 1), targets)
        hidden = model(inputs.to(device), head=False).flatten(0, 1)  # (B·T, D)
        total = sum(
            checkpoint(_summed_loss, model, hidden[i : i + chunk], targets[i : i + chunk], use_reentrant=False)
            for i in range(0, len(targets), chunk)
        )
    return total / len(targets)


def _summed_loss(model, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model.project(hidden).float(), targets, reduction="sum")


@torch.no_grad()
def validation_loss(model, val_tokens, token_bytes: torch.Tensor, tc, device, precision) -> dict:
    """Validation loss and bits per byte over the fixed leading validation windows."""
    model.eval()
    result = bits_per_byte(
        model,
        validation_windows(val_tokens, tc.seq_len, tc.batch_size, tc.eval_batches),
        token_bytes,
        lambda: autocast(device, precision),
    )
    model.train()
    return {"val_loss": result["val_loss"], "val_bpb": result["val_bpb"]}


class NextToken:
    """Pretraining's objective: next-token cross-entropy over windows of the run's token shards,
    validated in bits per byte on its validation shards.

    An objective is what `train` runs: `settings` (the [train] schedule, batch and cadence it
    uses), `init_weights(model)` after the seeded init of a run that starts from step 0, `sampler()`
    (the batches, resumable),
    `loss(model, *batch, device, precision)` and `validate(model)` (val_loss and val_bpb).
    """

    def __init__(self, run: RunDir, config: RunConfig, tokenizer: Tokenizer, device, precision, layout=None):
        self.settings, self.device, self.precision, self.layout = config.train, device, precision, layout
        check_tokenizer_matches(run, run.read_manifest().tokenizer_sha256, "the data shards were tokenized with")
        self.train_tokens, self.val_tokens = run.read_tokens("train"), run.read_tokens("val")
        check_validation_tokens(self.val_tokens, self.settings.seq_len)
        padding = [0] * (config.model.vocab_size - tokenizer.vocab_size)
        self.token_bytes = torch.tensor(tokenizer.token_bytes() + padding, device=device)

    def init_weights(self, model) -> None:
        """Pretraining starts from the seeded init."""

    def sampler(self):
        tc = self.settings
        dp = (self.layout.dp_rank, self.layout.dp_size) if self.layout is not None else (0, 1)
        return WindowSampler(self.train_tokens, tc.seq_len, tc.batch_size, tc.seed, *dp)

    def loss(self, model, inputs, targets, device, precision) -> torch.Tensor:
        return loss_fn(model, inputs, targets, device, precision, self.settings.loss_chunk)

    def validate(self, model) -> dict:
        return validation_loss(model, self.val_tokens, self.token_bytes, self.settings, self.device, self.precision)


def train_step(
    model, compute_loss, optimizer, scheduler, sampler, tc, device, precision, layout=None
) -> tuple[float, float, float]:
    """One optimizer step over grad_accum micro-batches; returns (loss, gradient norm, lr used).

    A batch is (inputs, targets) and what the objective adds (distillation's teacher part, SFT's positions).
    Under FSDP2 only the last micro-batch reduces gradients across ranks; the loss is the mean over ranks.
    """
    loss = 0.0
    for micro in range(tc.grad_accum):
        if layout is not None and layout.dp_size > 1:
            model.set_requires_gradient_sync(micro == tc.grad_accum - 1)
        micro_loss = compute_loss(model, *sampler.next_batch(), device, precision) / tc.grad_accum
        micro_loss.backward()
        loss += micro_loss.item()
    if layout is not None:
        loss = parallel.mean_over_ranks(loss, device)
    if not math.isfinite(loss):
        raise RuntimeError(f"loss became {loss}; lower train.lr or check the data")
    grad_norm = clip_grad_norm(model.parameters(), tc.grad_clip or float("inf"))
    lr = scheduler.get_last_lr()[0]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss, grad_norm, lr


def train(
    run: RunDir, resume: bool = False, config: RunConfig | None = None, device: str | None = None, objective=None
) -> MetricsRecord:
    """Train the run's model to config.train.steps; return the final record.

    A `config` differing from config.toml (new overrides) replaces it once every input has been
    checked, so a rejected run leaves the directory as it was. `objective(run, config, tokenizer,
    device, precision)` makes another objective than pretraining's NextToken: distillation
    (train/distill.py) or fine-tuning on conversations (train/sft.py).

    Under torchrun every process calls it: config.parallel lays them out (train/parallel.py), each
    reads its share of every batch, and rank 0 alone writes metrics, config and checkpoint metadata.
    """
    config = config or run.read_config()
    checkpoint = run.latest_checkpoint()
    if checkpoint is not None and not resume:
        raise MaiError(
            f"{run.path} already has {checkpoint.name}; pass --resume to continue it, or use a new run directory"
        )
    device = torch.device(device) if device else default_device()
    layout = parallel.start(config.parallel, device.type)
    if layout is None:
        return _train(run, config, checkpoint, resume, device, objective, None)
    if objective is not None:
        raise MaiError("mai distill and mai sft run in one process for now; start them without torchrun")
    try:
        return _train(run, config, checkpoint, resume, layout.device, objective, layout)
    finally:
        parallel.stop()


def _train(run: RunDir, config: RunConfig, checkpoint, resume: bool, device, objective, layout) -> MetricsRecord:
    main = layout is None or layout.is_main
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    precision = resolve_precision(config.train.precision, device)
    tokenizer = load_tokenizer(run, config.model.vocab_size)
    if objective is None:
        made = NextToken(run, config, tokenizer, device, precision, layout)
    else:
        made = objective(run, config, tokenizer, device, precision)
    tc = made.settings
    if layout is not None:
        parallel.check_divisible(config.model, layout, tc.batch_size)

    torch.manual_seed(tc.seed)
    if layout is None:
        model = build_model(config.model, seed=tc.seed, device=device)
    else:
        model = parallel.build_parallel_model(config.model, layout, config.parallel, precision, tc.compile, tc.seed)
    if checkpoint is None:
        made.init_weights(model)  # a checkpoint's weights replace them otherwise
    optimizer = build_optimizer(model, tc)
    scheduler = build_scheduler(optimizer, tc)
    sampler, compute_loss = made.sampler(), made.loss
    start_step = 0
    if checkpoint is not None:
        meta = load_checkpoint(checkpoint, model, optimizer, scheduler, config, layout)
        check_tokenizer_matches(run, meta.tokenizer_sha256, "this model was trained with")
        sampler.load_state_dict(meta.data.model_dump())
        start_step = meta.step
        use_optimizer_settings(optimizer, scheduler, tc)
        if main:
            console.print(f"resuming {run.path} from step {start_step}")
    elif resume and main:
        console.print(f"{run.path} has no checkpoint yet: training from step 0")
    # Compiling model and loss together lets inductor fuse the norms, RoPE, SwiGLU and the
    # log-softmax of the loss: ~1.4× the eager tokens/s of the tiny preset on a 2-core CPU. Under
    # torchrun each block is compiled instead (build_parallel_model): FSDP2's hooks sit between them.
    compute_loss = torch.compile(compute_loss) if tc.compile and layout is None else compute_loss

    info = model_info(config.model, tc.seq_len)
    tokens_per_step = tc.batch_size * tc.seq_len * tc.grad_accum
    if start_step >= tc.steps:
        console.print(
            f"{run.path} is already trained to step {start_step} of {tc.steps}; "
            "to train further, raise train.steps (--set train.steps=N)"
        )
        return (read_metrics(run) or [MetricsRecord(step=start_step)])[-1]
    record = None
    if start_step == 0:
        record = MetricsRecord(step=0, **made.validate(model))
    # Only now, with every input checked and the first evaluation done, does the run change.
    if main:
        if config != run.read_config():
            run.write_config(config)
        truncate_metrics(run, start_step if checkpoint is not None else -1)
        if record is not None:
            append_metrics(run, record)
        where = device.type if layout is None else f"{layout.world_size} processes ({describe(layout)})"
        console.print(
            f"training {info['params'] / 1e6:.2f}M parameters on {where} in {precision}, "
            f"{tokens_per_step} tokens/step, steps {start_step}→{tc.steps}"
        )
    if layout is not None:
        parallel.barrier()  # no rank logs a step before rank 0 has truncated the metrics
    columns = [
        TextColumn("[bold]train"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[status]}"),
        TimeRemainingColumn(),
    ]
    with deterministic(device), Progress(*columns, console=console, disable=not main) as progress:
        task = progress.add_task("train", total=tc.steps, completed=start_step, status="")
        window_start, window_tokens = time.perf_counter(), 0
        for step in range(start_step + 1, tc.steps + 1):
            loss, grad_norm, lr = train_step(
                model, compute_loss, optimizer, scheduler, sampler, tc, device, precision, layout
            )
            window_tokens += tokens_per_step
            if step % tc.log_every == 0 or step == tc.steps or step % tc.eval_every == 0:
                tokens_per_s = window_tokens / (time.perf_counter() - window_start)
                validation = {}
                if step % tc.eval_every == 0 or step == tc.steps:
                    validation = made.validate(model)
                    if main:
                        progress.console.print(
                            f"step {step}/{tc.steps}: loss {loss:.4f}, val_loss {validation['val_loss']:.4f}, "
                            f"val_bpb {validation['val_bpb']:.4f}, {tokens_per_s:,.0f} tokens/s"
                        )
                record = MetricsRecord(
                    step=step,
                    loss=loss,
                    lr=lr,
                    grad_norm=grad_norm,
                    tokens=step * tokens_per_step,
                    tokens_per_s=tokens_per_s,
                    flops_per_s=tokens_per_s * info["flops_per_token"],
                    **validation,
                )
                if main:
                    append_metrics(run, record)
                window_start, window_tokens = time.perf_counter(), 0
                progress.update(task, status=f"loss {loss:.3f} · {tokens_per_s:,.0f} tok/s")
            if step % tc.checkpoint_every == 0 or step == tc.steps:
                save_checkpoint(
                    run, step, model, optimizer, scheduler, sampler.state_dict(), config, tc.keep_checkpoints, layout
                )
            progress.update(task, completed=step)
    return record
