"""`mai sft`: packed rows that keep conversations apart, long conversations cut after a whole answer,
a fine-tuning run end to end (from its own run or a transformers checkpoint), and a killed one
resumed to the same weights."""

import os
import signal
import subprocess
import time

import numpy as np
import pytest
import torch

from conftest import MAI, copy_run, run_mai
from mai.config import load_config
from mai.model.transformer import build_model
from mai.run import RunDir, read_json
from mai.run_files import SftRecord
from mai.stages import sft_done
from mai.train.sft import Conversation, pack_rows, row_batch

SFT = [
    'sft.data=["shakespeare-dialogues"]',
    "sft.held_out=8",
    "sft.steps=8",
    "sft.batch_size=4",
    "sft.seq_len=128",
    "sft.warmup_steps=2",
    "sft.eval_every=4",
    "sft.checkpoint_every=4",
    "sft.answer_tokens=8",
]


def conversation(length: int, seed: int) -> Conversation:
    ids = np.random.default_rng(seed).integers(0, 97, length)
    return Conversation(ids, np.arange(length) >= length // 2)


def test_a_tokens_logits_do_not_change_when_the_other_conversations_in_its_pack_change():
    config = load_config("tiny", ["model.d_model=64", "model.n_layers=2", "model.vocab_size=97"]).model
    model = build_model(config, seed=3).eval()
    target = conversation(11, 0)
    others = [conversation(7, 1), conversation(13, 2), conversation(5, 3)]
    conversations = [target, *others]
    # the target alone (then padding), after one other conversation, before two others
    rows = [[0], [1, 0], [0, 2, 3]]
    inputs, targets, positions = row_batch(conversations, rows, 31, pad_id=0)
    with torch.no_grad():
        logits = model(inputs, positions)
    alone, after, before = logits[0, :11], logits[1, 7:18], logits[2, :11]
    torch.testing.assert_close(after, alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(before, alone, atol=1e-5, rtol=0)
    with torch.no_grad():  # without the positions the rows are one sequence each, and the others do leak in
        leaked = model(inputs)[1, 7:18]
    assert (leaked - alone).abs().max() > 1e-3
    # only the assistant's next tokens are targets; the padding and the other conversations' turns are not
    assert targets[0, :10].tolist() == [t if m else -100 for t, m in zip(target.ids[1:], target.mask[1:], strict=True)]
    assert (targets[0, 10:] == -100).all()


def test_packing_fits_whole_conversations_into_rows_and_padding_gives_each_its_own():
    conversations = [conversation(n, i) for i, n in enumerate([40, 70, 20, 60, 30, 90])]
    packed = pack_rows(conversations, 129, packing=True, seed=0)
    assert sorted(i for row in packed for i in row) == list(range(6))
    assert all(sum(len(conversations[i].ids) for i in row) <= 129 for row in packed)
    assert len(packed) == 3
    assert sorted(map(len, pack_rows(conversations, 129, packing=False, seed=0))) == [1] * 6


def test_mai_sft_fine_tunes_into_run_sft(trained_run, tmp_path):
    run = copy_run(trained_run, tmp_path / "run")
    overrides = [arg for o in SFT for arg in ("--set", o)]
    result = run_mai("sft", str(run.path), *overrides)
    record = read_json(run.sft_dir / "sft.json", SftRecord)
    assert record.val_loss < record.base_val_loss  # held-out loss per assistant token falls
    assert len(record.before.texts) == len(record.after.texts) == 8 and len(record.exchanges) == 3
    assert f"answers ending with the end-of-turn token {record.before.end_of_turn_rate:.0%} → " in result.stdout
    out = RunDir(run.sft_dir)
    config = out.read_config()
    assert config.sft.init_from == str(run.path) and config.model == run.read_config().model
    assert (out.path / "conversations" / "held_out.jsonl").read_text().count("\n") == 8
    report = (out.path / "report.md").read_text()
    assert "## Chat fine-tuning" in report and record.exchanges[0].prompt in report
    assert sft_done(run, run.read_config().model_copy(update={"sft": config.sft})) is not None


def test_sft_init_from_fine_tunes_a_transformers_checkpoint_from_any_run_directory(trained_run, tmp_path):
    run_mai("export", "hf", str(trained_run.path), str(tmp_path / "hf"))
    run_mai("init", str(tmp_path / "run"), "--set", "model.n_layers=1")  # its own model shapes do not matter
    overrides = [*SFT, "sft.steps=2", "sft.warmup_steps=0", f'sft.init_from="{tmp_path / "hf"}"']
    run_mai("sft", str(tmp_path / "run"), *(arg for o in overrides for arg in ("--set", o)))
    out = RunDir(tmp_path / "run" / "sft")
    tuned, base = out.read_config().model, trained_run.read_config().model  # the checkpoint's shapes
    assert tuned.model_dump(exclude={"ffn_dim"}) == base.model_dump(exclude={"ffn_dim"})
    assert tuned.hidden_dim == base.hidden_dim  # spelled out by the import
    assert read_json(out.sft_path, SftRecord).base == str(tmp_path / "hf")
    assert (out.path / "tokenizer.json").read_text() == trained_run.tokenizer_path.read_text()


def test_a_long_conversation_ends_after_its_last_whole_assistant_turn_that_fits(prepared_run):
    from mai.tokenizer import IM_END, Tokenizer
    from mai.train.sft import tokenize

    tokenizer = Tokenizer.load(prepared_run.tokenizer_path)
    turns = [{"role": "user", "content": "Speak."}, {"role": "assistant", "content": "Ay."}]
    long = [*turns, {"role": "user", "content": "More. " * 50}, {"role": "assistant", "content": "Nay. " * 50}]
    whole = len(tokenizer.render_for_training(turns)[0])
    (kept,), cut = tokenize([long], tokenizer, whole + 20)
    assert cut == 1 and len(kept.ids) == whole - 1  # up to the first answer's end-of-turn token
    assert tokenizer.decode(kept.ids[kept.mask].tolist()) == f"Ay.{IM_END}"
    (kept,), _ = tokenize([[turns[0], {"role": "assistant", "content": "Nay. " * 80}]], tokenizer, 40)
    assert len(kept.ids) == 40 and kept.mask[-1]  # no whole answer fits: cut, still learning its start


@pytest.mark.slow  # trains twice, one of them killed
def test_a_killed_sft_resumes_to_the_uninterrupted_weights(trained_run, tmp_path):
    overrides = [*SFT, "sft.steps=40", "sft.checkpoint_every=20", "sft.eval_every=20"]
    args = [arg for o in overrides for arg in ("--set", o)]
    reference = copy_run(trained_run, tmp_path / "reference")
    run_mai("sft", str(reference.path), *args)

    killed = copy_run(trained_run, tmp_path / "killed")
    process = subprocess.Popen(
        [MAI, "sft", str(killed.path), *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    sft = RunDir(killed.sft_dir)
    latest, deadline = sft.checkpoints_dir / "latest", time.time() + 300
    while not (latest.exists() and "step_0000020" in latest.read_text()):
        assert process.poll() is None and time.time() < deadline, "fine-tuning ended before its first checkpoint"
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    assert not sft.checkpoint_dir(40).exists() and not sft.sft_path.exists()

    run_mai("sft", str(killed.path), "--resume", *args)
    final = (RunDir(reference.sft_dir).checkpoint_dir(40) / "model.safetensors").read_bytes()
    assert (sft.checkpoint_dir(40) / "model.safetensors").read_bytes() == final
    ours, theirs = read_json(sft.sft_path, SftRecord), read_json(RunDir(reference.sft_dir).sft_path, SftRecord)
    assert ours.model_dump(exclude={"base"}) == theirs.model_dump(exclude={"base"})
