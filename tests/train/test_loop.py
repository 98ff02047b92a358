"""Training behaviour on real data: learning happens, metrics are written, resume is exact."""

import json
import os
import signal
import stat
import subprocess
import time

import pytest
import torch
from safetensors.torch import load_file

from conftest import MAI, copy_run, metric_records, run_mai
from mai.config import apply_overrides, load_config
from mai.model.transformer import build_model
from mai.run import default_mode
from mai.train.loop import loss_fn, train


def test_training_lowers_validation_bpb_and_logs_metrics(trained_run):
    records = metric_records(trained_run)
    evals = [r for r in records if "val_bpb" in r]
    assert [r["step"] for r in evals] == [0, 10, 20, 30]
    assert evals[-1]["val_bpb"] < 0.9 * evals[0]["val_bpb"]
    train_records = [r for r in records if "loss" in r]
    assert [r["step"] for r in train_records] == [5, 10, 15, 20, 25, 30]
    assert all(r["tokens_per_s"] > 0 and r["lr"] > 0 for r in train_records)
    assert sorted(p.name for p in trained_run.checkpoints_dir.glob("step_*")) == [
        "step_0000010",
        "step_0000020",
        "step_0000030",
    ]


@pytest.mark.slow  # compiles, trains three times, kills
def test_sigkill_then_resume_is_bit_identical(prepared_run, tmp_path):
    """Compiled, as the presets train."""
    settings = ["train.steps=40", "train.checkpoint_every=20", "train.eval_every=20", "train.compile=true"]
    reference = copy_run(prepared_run, tmp_path / "reference")
    reference.write_config(apply_overrides(reference.read_config(), settings))
    run_mai("train", str(reference.path))

    killed = copy_run(prepared_run, tmp_path / "killed")
    killed.write_config(apply_overrides(killed.read_config(), settings))
    process = subprocess.Popen([MAI, "train", str(killed.path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest, deadline = killed.checkpoints_dir / "latest", time.time() + 300
    while not (latest.exists() and "step_0000020" in latest.read_text()):
        assert process.poll() is None and time.time() < deadline, "training ended before its first checkpoint"
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    assert not killed.checkpoint_dir(40).exists()

    run_mai("train", str(killed.path), "--resume")

    def after_checkpoint(run):
        timing = ("tokens_per_s", "flops_per_s")
        return [{k: v for k, v in r.items() if k not in timing} for r in metric_records(run) if r["step"] > 20]

    assert after_checkpoint(killed) == after_checkpoint(reference)
    assert [r["step"] for r in metric_records(killed)] == [r["step"] for r in metric_records(reference)]
    ours = load_file(killed.checkpoint_dir(40) / "model.safetensors")
    theirs = load_file(reference.checkpoint_dir(40) / "model.safetensors")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_train_refuses_to_overwrite_without_resume(trained_run, tmp_path):
    run = copy_run(trained_run, tmp_path / "run")
    result = run_mai("train", str(run.path), check=False)
    assert result.returncode == 2 and "--resume" in result.stderr


def test_resume_at_final_step_is_a_no_op(trained_run, tmp_path):
    run = copy_run(trained_run, tmp_path / "run")
    before = run.metrics_path.read_text()
    result = run_mai("train", str(run.path), "--resume")
    assert run.metrics_path.read_text() == before
    said = " ".join(result.stderr.split())  # rich wraps lines at 80 columns when stderr is not a terminal
    assert "already trained to step 30 of 30" in said and "--set train.steps=N" in said
    assert json.loads(result.stdout) == metric_records(run)[-1]  # the final record, as a finished training prints


def test_resume_uses_the_new_optimizer_settings(trained_run, tmp_path):
    """Loading the optimizer's state brings back its old lr and betas; --set on resume must win."""
    logged = {}
    for lr in (None, "1e-4"):
        run = copy_run(trained_run, tmp_path / f"lr{lr}")
        overrides = ["train.steps=35"] + ([f"train.lr={lr}", "train.beta2=0.9"] if lr else [])
        train(run, resume=True, config=apply_overrides(run.read_config(), overrides))
        logged[lr] = [r["lr"] for r in metric_records(run) if r["step"] > 30 and "lr" in r]
        assert run.read_config().train.lr == (float(lr) if lr else trained_run.read_config().train.lr)
    ratio = 1e-4 / trained_run.read_config().train.lr
    assert logged["1e-4"] == pytest.approx([lr * ratio for lr in logged[None]], rel=1e-9)


def test_resume_with_fewer_steps_leaves_the_config_as_it_was(trained_run, tmp_path):
    run = copy_run(trained_run, tmp_path / "run")
    before = run.config_path.read_text()
    result = run_mai("train", str(run.path), "--resume", "--set", "train.steps=20")
    assert "already trained to step 30 of 20" in " ".join(result.stderr.split())
    assert run.config_path.read_text() == before


def test_a_missing_latest_pointer_means_the_newest_checkpoint(trained_run, tmp_path):
    """A crash between a checkpoint's rename and the pointer's update, or a deleted pointer, must
    not let training start over on top of the run's checkpoints."""
    run = copy_run(trained_run, tmp_path / "run")
    (run.checkpoints_dir / "latest").unlink()
    assert run.latest_checkpoint() == run.checkpoint_dir(30)
    result = run_mai("train", str(run.path), "--set", "train.seed=7", check=False)
    assert result.returncode == 2 and "step_0000030" in result.stderr and "--resume" in result.stderr
    (run.checkpoints_dir / "latest").write_bytes(b"../../other/step_0000010\xff\n")
    result = run_mai("generate", str(run.path), "--prompt", "x", check=False)
    assert result.returncode == 2 and "not a checkpoint of this run" in result.stderr


def test_checkpoints_get_the_umask_mode(trained_run):
    """tempfile and safetensors make private files (0600, directories 0700); a run is shared like any file."""
    checkpoint = trained_run.checkpoint_dir(30)
    assert stat.S_IMODE(checkpoint.stat().st_mode) == default_mode(directory=True)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in checkpoint.iterdir()}
    assert len(modes) == 3 and modes == dict.fromkeys(modes, default_mode())
    assert stat.S_IMODE(trained_run.config_path.stat().st_mode) == default_mode()


@pytest.mark.parametrize("precision", ["bf16"])
def test_bf16_autocast_trains(prepared_run, tmp_path, precision):
    run = copy_run(prepared_run, tmp_path / "run")
    run_mai("train", str(run.path), "--set", f"train.precision={precision}", "--set", "train.steps=10")
    record = json.loads(run.metrics_path.read_text().splitlines()[-1])
    assert record["step"] == 10 and record["val_bpb"] < metric_records(run)[0]["val_bpb"]


@pytest.mark.slow  # compiles
def test_compiled_training_matches_eager(prepared_run, tmp_path):
    losses = {}
    for compile_ in ("false", "true"):
        run = copy_run(prepared_run, tmp_path / compile_)
        run_mai("train", str(run.path), "--set", f"train.compile={compile_}", "--set", "train.steps=8")
        losses[compile_] = [r["loss"] for r in metric_records(run) if "loss" in r]
    assert losses["true"] == pytest.approx(losses["false"], rel=1e-3)


def test_training_restores_the_process_deterministic_mode(prepared_run, tmp_path):
    """Training turns PyTorch's deterministic mode on (CPU) for its steps only: `mai run`'s
    evaluation and sampling, and whatever else runs in the process afterwards, see it as before."""
    run = copy_run(prepared_run, tmp_path / "run")
    config = apply_overrides(run.read_config(), ["train.steps=2", "train.warmup_steps=1"])
    torch.use_deterministic_algorithms(False)  # PyTorch's default
    train(run, config=config, device="cpu")
    assert not torch.are_deterministic_algorithms_enabled()
    assert torch.utils.deterministic.fill_uninitialized_memory


def test_metrics_lines_that_are_not_records_are_skipped(trained_run, tmp_path):
    run = copy_run(trained_run, tmp_path / "run")
    records = metric_records(run)
    with open(run.metrics_path, "ab") as f:
        f.write(b'5\n{}\n[1]\n{"step": "x"}\n\xff\xfe\n{"step": 3')  # the last one torn by a kill
    assert metric_records(run) == records


def test_a_finished_run_without_metrics_or_with_an_emptied_config(trained_run, tmp_path):
    run = copy_run(trained_run, tmp_path / "run")
    run.metrics_path.unlink()
    assert json.loads(run_mai("train", str(run.path), "--resume").stdout) == {"step": 30}
    run.config_path.write_text("")
    result = run_mai("generate", str(run.path), "--prompt", "x", check=False)
    assert result.returncode == 2 and "config.toml is empty" in result.stderr


@pytest.mark.parametrize("tie_embeddings", [True, False])
def test_a_chunked_loss_gives_the_whole_loss_and_its_gradients(tie_embeddings):
    """train.loss_chunk: logits 100 tokens at a time (not a divisor of the 2 × 130), recomputed in
    the backward, against the loss over all logits at once."""
    config = load_config("tiny", ["model.n_layers=2", f"model.tie_embeddings={str(tie_embeddings).lower()}"]).model
    model = build_model(config, seed=0)
    tokens = torch.randint(0, config.vocab_size, (2, 131), generator=torch.Generator().manual_seed(0))
    results = []
    for chunk in (0, 100):
        model.zero_grad()
        loss = loss_fn(model, tokens[:, :-1], tokens[:, 1:], torch.device("cpu"), "fp32", chunk)
        loss.backward()
        results.append((loss.item(), {name: p.grad.clone() for name, p in model.named_parameters()}))
    (whole, whole_grads), (chunked, chunked_grads) = results
    assert chunked == pytest.approx(whole, rel=1e-6)
    for name, grad in whole_grads.items():
        torch.testing.assert_close(chunked_grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)
