"""Training checkpoints: model, optimizer, scheduler, data position and RNG states, written atomically.

A checkpoint is a directory checkpoints/step_NNNNNNN/ with model.safetensors, train_state.pt and
meta.json (step, data position, model config, sha256 of both files). It is assembled under a
temporary name and renamed into place; checkpoints/latest is rewritten last, so a kill at any
moment leaves the previous checkpoint as the one that resumes.
"""

import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from mai.errors import MaiError
from mai.loading import checkpoint_weights, save_model_weights
from mai.run import RunDir, atomic_write_text, checkpoint_remedy, default_mode, sha256_file, verify_sha256, write_json
from mai.run_files import CheckpointMeta, DataPosition


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


def save_checkpoint(run: RunDir, step: int, model, optimizer, scheduler, data_state: dict, config, keep: int) -> Path:
    run.checkpoints_dir.mkdir(parents=True, exist_ok=True)
    final = run.checkpoint_dir(step)
    tmp = Path(tempfile.mkdtemp(dir=run.checkpoints_dir, prefix=f".{final.name}."))
    try:
        tmp.chmod(default_mode(directory=True))
        model_sha256 = save_model_weights(tmp, model)
        train_state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_states()}
        torch.save(train_state, tmp / "train_state.pt")
        meta = CheckpointMeta(
            model=config.model,
            model_sha256=model_sha256,
            tokenizer_sha256=sha256_file(run.tokenizer_path),
            step=step,
            data=DataPosition(**data_state),
            train_state_sha256=sha256_file(tmp / "train_state.pt"),
        )
        write_json(tmp / "meta.json", meta)
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_text(run.checkpoints_dir / "latest", final.name + "\n")
    _prune(run, keep)
    return final


def load_checkpoint(checkpoint: Path, model, optimizer, scheduler, config) -> CheckpointMeta:
    """Restore everything saved at `checkpoint`; return its meta (step, data position)."""
    state, meta = checkpoint_weights(checkpoint, config.model, next(model.parameters()).device)
    model.load_state_dict(state)
    if meta.train_state_sha256 is None or meta.data is None:
        raise MaiError(f"{checkpoint} holds weights only (it was imported), not a training state to resume")
    verify_sha256(checkpoint / "train_state.pt", meta.train_state_sha256, checkpoint_remedy(checkpoint))
    try:
        state = torch.load(checkpoint / "train_state.pt", weights_only=False)
    except Exception as e:
        raise MaiError(
            f"{checkpoint / 'train_state.pt'} cannot be read ({e}); {checkpoint_remedy(checkpoint)}"
        ) from None
    try:
        optimizer.load_state_dict(state["optimizer"])
    except ValueError:  # its parameter groups are not this model's
        raise MaiError(
            f"{checkpoint} holds optimizer state for other parameters (mai before 2026-12 fused the q/k/v and "
            "gate/up projections); its weights still load for `mai generate`, `mai eval`, `mai serve` and "
            "`mai export`, but training cannot resume from it: train further in a new run directory"
        ) from None
    scheduler.load_state_dict(state["scheduler"])
    restore_rng_states(state["rng"])
    return meta


def _prune(run: RunDir, keep: int) -> None:
    steps = sorted(p for p in run.checkpoints_dir.glob("step_*") if p.is_dir())
    for old in steps[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in run.checkpoints_dir.glob(".step_*"):  # temporaries of a killed save
        shutil.rmtree(stale, ignore_errors=True)
