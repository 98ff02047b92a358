"""Training checkpoints: model, optimizer, scheduler, data position and RNG states, written atomically.

A checkpoint is a directory checkpoints/step_NNNNNNN/ with model.safetensors, train_state.pt and
meta.json (step, data position, model config, sha256 of both files). Under torchrun the weights and
optimizer state are a torch.distributed.checkpoint folder, sharded/, each rank writing its own
shards; any layout, one process included, resumes from either kind. It is assembled under a
temporary name and renamed into place; checkpoints/latest is rewritten last, so a kill at any
moment leaves the previous checkpoint as the one that resumes.
"""

import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from mai.errors import MaiError
from mai.loading import check_model_config, checkpoint_weights, read_sharded, save_model_weights, verify_sharded
from mai.model.transformer import Transformer
from mai.run import (
    RunDir,
    atomic_write_text,
    checkpoint_remedy,
    default_mode,
    read_checkpoint_meta,
    sha256_file,
    verify_sha256,
    write_json,
)
from mai.run_files import CheckpointMeta, DataPosition
from mai.train import parallel
from mai.train.optim import parameter_groups


def rng_states() -> dict:
    states = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_checkpoint(
    run: RunDir, step: int, model, optimizer, scheduler, data_state: dict, config, keep: int, layout=None
) -> Path:
    """Write checkpoints/step_N atomically; every rank calls it under torchrun (`layout`), each writing its shards."""
    main = layout is None or layout.is_main
    final = run.checkpoint_dir(step)
    tmp = None
    if main:
        run.checkpoints_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=run.checkpoints_dir, prefix=f".{final.name}."))
        tmp.chmod(default_mode(directory=True))
    if layout is not None:
        tmp = parallel.broadcast(tmp)
    try:
        train_state = {"scheduler": scheduler.state_dict(), "rng": rng_states()}
        if layout is None:
            weights = {"model_sha256": save_model_weights(tmp, model)}
            train_state["optimizer"] = optimizer.state_dict()
        else:
            model_state, optimizer_state = get_state_dict(model, optimizer)
            dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=tmp / "sharded")
            parallel.barrier()  # every rank's shards are written before rank 0 lists them
            weights = {"sharded": {p.name: sha256_file(p) for p in sorted((tmp / "sharded").iterdir())}} if main else {}
        if main:
            torch.save(train_state, tmp / "train_state.pt")
            meta = CheckpointMeta(
                model=config.model,
                tokenizer_sha256=sha256_file(run.tokenizer_path),
                step=step,
                data=DataPosition(**data_state),
                train_state_sha256=sha256_file(tmp / "train_state.pt"),
                **weights,
            )
            write_json(tmp / "meta.json", meta)
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
    except BaseException:
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if main:
        atomic_write_text(run.checkpoints_dir / "latest", final.name + "\n")
        _prune(run, keep)
    if layout is not None:
        parallel.barrier()  # no rank moves on before the checkpoint is in place
    return final


def load_checkpoint(checkpoint: Path, model, optimizer, scheduler, config, layout=None) -> CheckpointMeta:
    """Restore everything saved at `checkpoint` into this process's model and optimizer, whichever
    layout wrote it and whichever this run uses; return its meta (step, data position)."""
    meta = read_checkpoint_meta(checkpoint)
    if meta.train_state_sha256 is None or meta.data is None:
        raise MaiError(f"{checkpoint} holds weights only (it was imported), not a training state to resume")
    verify_sha256(checkpoint / "train_state.pt", meta.train_state_sha256, checkpoint_remedy(checkpoint))
    try:
        state = torch.load(checkpoint / "train_state.pt", weights_only=False)
    except Exception as e:
        raise MaiError(
            f"{checkpoint / 'train_state.pt'} cannot be read ({e}); {checkpoint_remedy(checkpoint)}"
        ) from None
    if meta.sharded is not None:
        _load_sharded(checkpoint, meta, model, optimizer, config)
    elif layout is None:
        weights, _ = checkpoint_weights(checkpoint, config.model, next(model.parameters()).device)
        model.load_state_dict(weights)
        _load_optimizer(checkpoint, optimizer, state["optimizer"])
    else:
        weights, _ = checkpoint_weights(checkpoint, config.model)
        optimizer_state = _by_parameter_name(state["optimizer"], config.model)
        set_state_dict(
            model,
            optimizer,
            model_state_dict=weights,
            optim_state_dict=optimizer_state,
            options=StateDictOptions(full_state_dict=True),
        )
    scheduler.load_state_dict(state["scheduler"])
    restore_rng_states(state["rng"])
    return meta


def _load_sharded(checkpoint: Path, meta: CheckpointMeta, model, optimizer, config) -> None:
    """A distributed checkpoint into any layout: DCP reads each rank's part of every saved shard."""
    check_model_config(checkpoint, meta, config.model)
    verify_sharded(checkpoint, meta)
    model_state, optimizer_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optimizer": optimizer_state}
    read_sharded(state, checkpoint)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])


def _load_optimizer(checkpoint: Path, optimizer, state: dict) -> None:
    try:
        optimizer.load_state_dict(state)
    except ValueError:  # its parameter groups are not this model's
        raise MaiError(
            f"{checkpoint} holds optimizer state for other parameters (mai before 2026-12 fused the q/k/v and "
            "gate/up projections); its weights still load for `mai generate`, `mai eval`, `mai serve` and "
            "`mai export`, but training cannot resume from it: train further in a new run directory"
        ) from None


def _by_parameter_name(state: dict, config) -> dict:
    """A one-process optimizer state (parameters numbered in build_optimizer's order) keyed by
    parameter name instead, as torch.distributed.checkpoint's state-dict helpers take it."""
    with torch.device("meta"):
        names = [name for group in parameter_groups(Transformer(config)) for name in group]
    return {
        "state": {names[index]: value for index, value in state["state"].items()},
        "param_groups": [
            {**group, "params": [names[index] for index in group["params"]]} for group in state["param_groups"]
        ],
    }


def _prune(run: RunDir, keep: int) -> None:
    steps = sorted(p for p in run.checkpoints_dir.glob("step_*") if p.is_dir())
    for old in steps[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in run.checkpoints_dir.glob(".step_*"):  # temporaries of a killed save
        shutil.rmtree(stale, ignore_errors=True)
