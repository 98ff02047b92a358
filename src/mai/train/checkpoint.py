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
from mai.run import (
    RunDir,
    atomic_write_json,
    atomic_write_text,
    checkpoint_remedy,
    default_mode,
    load_model_weights,
    save_model_weights,
    sha256_file,
    verify_sha256,
)


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
        meta = save_model_weights(tmp, model, config.model, sha256_file(run.tokenizer_path))
        train_state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_states()}
        torch.save(train_state, tmp / "train_state.pt")
        meta |= {"step": step, "data": data_state, "train_state_sha256": sha256_file(tmp / "train_state.pt")}
        atomic_write_json(tmp / "meta.json", meta)
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_text(run.checkpoints_dir / "latest", final.name + "\n")
    _prune(run, keep)
    return final


def load_checkpoint(checkpoint: Path, model, optimizer, scheduler, config) -> dict:
    """Restore everything saved at `checkpoint`; return its meta (step, data position)."""
    meta = load_model_weights(checkpoint, model, config.model)
    if "train_state_sha256" not in meta:
        raise MaiError(f"{checkpoint} holds weights only (it was imported), not a training state to resume")
    verify_sha256(checkpoint / "train_state.pt", meta["train_state_sha256"], checkpoint_remedy(checkpoint))
    try:
        state = torch.load(checkpoint / "train_state.pt", weights_only=False)
    except Exception as e:
        raise MaiError(
            f"{checkpoint / 'train_state.pt'} cannot be read ({e}); {checkpoint_remedy(checkpoint)}"
        ) from None
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    restore_rng_states(state["rng"])
    return meta


def _prune(run: RunDir, keep: int) -> None:
    steps = sorted(p for p in run.checkpoints_dir.glob("step_*") if p.is_dir())
    for old in steps[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in run.checkpoints_dir.glob(".step_*"):  # temporaries of a killed save
        shutil.rmtree(stale, ignore_errors=True)
