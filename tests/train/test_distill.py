"""`mai distill` end to end on the tiny run: a local teacher cached once (and resumed), live, or the
top-k log-probabilities `mai synth` recorded from a served teacher; and the tokenizer check."""

import json
import shutil

import numpy as np
import pytest

from conftest import copy_run, metric_records, run_mai, smollm2_dir
from data.test_synth import synth_settings
from mai.config import load_config
from mai.loading import load_tokenizer
from mai.train.distill import SynthSampler, synth_rows

SHORT = ["train.steps=4", "train.warmup_steps=1", "train.eval_every=4", "train.checkpoint_every=2", "train.log_every=1"]


def losses(run) -> list:
    return [(r["step"], r.get("loss"), r.get("val_loss")) for r in metric_records(run)]


def distill(run, *settings, resume=False, check=True):
    args = [arg for s in [*SHORT, *settings] for arg in ("--set", s)]
    return run_mai("distill", str(run.path), *(["--resume"] if resume else []), *args, check=check)


@pytest.mark.slow  # builds the cache twice
def test_a_cached_teacher_is_built_once_resumes_after_a_kill_and_teaches(prepared_run, trained_run, tmp_path):
    student = copy_run(prepared_run, tmp_path / "student")
    result = distill(student, f"distill.teacher={json.dumps(str(trained_run.path))}", "distill.top_k=4")
    assert "80 bytes/token" not in result.stderr and "16 bytes/token" in result.stderr  # 4 × (uint16 id + fp16)
    cache = student.path / "distill" / "teacher_top4"
    ids, values = np.load(cache / "ids.npy"), np.load(cache / "values.npy")
    assert ids.shape[2] == 4 and (values[..., 0] >= values[..., 1]).all() and (values <= 0).all()
    records = metric_records(student)
    assert [r["step"] for r in records] == [0, 1, 2, 3, 4] and np.isfinite([r["loss"] for r in records[1:]]).all()

    # as if killed while building: half the windows recorded, the rest garbage
    progress = json.loads((cache / "progress.json").read_text())
    half = progress["windows_done"] // 2
    for name in ("ids.npy", "values.npy"):
        array = np.load(cache / name, mmap_mode="r+")
        array[half:] = 0
        array.flush()
    (cache / "progress.json").write_text(json.dumps(progress | {"windows_done": half}))
    again = copy_run(prepared_run, tmp_path / "again")
    shutil.copytree(cache, again.path / "distill" / "teacher_top4")
    distill(again, f"distill.teacher={json.dumps(str(trained_run.path))}", "distill.top_k=4")
    assert np.array_equal(np.load(again.path / "distill/teacher_top4/ids.npy"), ids)
    assert np.array_equal(np.load(again.path / "distill/teacher_top4/values.npy"), values)
    assert losses(again) == losses(student)


def test_a_live_teacher_on_full_logits_resumes_exactly(prepared_run, trained_run, tmp_path):
    teacher = f"distill.teacher={json.dumps(str(trained_run.path))}"
    whole = copy_run(prepared_run, tmp_path / "whole")
    distill(whole, teacher, "distill.top_k=0", "distill.loss=jsd")
    # as a crash after the step-2 checkpoint leaves it: no step 4, metrics past step 2 unwritten or torn
    rewound = copy_run(whole, tmp_path / "rewound")
    shutil.rmtree(rewound.checkpoint_dir(4))
    (rewound.checkpoints_dir / "latest").write_text("step_0000002")
    distill(rewound, teacher, "distill.top_k=0", "distill.loss=jsd", resume=True)
    assert losses(rewound) == losses(whole)


def test_distilling_from_the_api_top_k_that_synth_recorded(prepared_run, trained_run, server, tmp_path):
    student = copy_run(prepared_run, tmp_path / "student")
    settings = synth_settings(f"{server.url}/v1", server.model, samples=6, max_tokens=24, top_logprobs=5)
    run_mai("synth", str(student.path), *[arg for s in settings for arg in ("--set", s)])
    tokenizer = load_tokenizer(student)
    rows = synth_rows(student, tokenizer, 128, server.model)
    samples = [json.loads(line) for line in (student.synth_dir / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == len(samples)
    for (tokens, ids, values, start), sample in zip(rows, samples, strict=True):
        # the teacher's own tokens, found in our vocabulary by their bytes, spell its reply exactly
        assert sample["response"].startswith(tokenizer.decode(tokens[start:].tolist()))
        assert ids.shape[1] == 6 and np.isfinite(values[:, 1]).all()
    tc = load_config("tiny", ["train.batch_size=2", "train.seq_len=128"]).train
    inputs, targets, (ids, values, mask) = SynthSampler(rows, tc).next_batch()
    assert ((targets != -100) == mask).all()  # the teacher's positions, and only those, are taught
    distill(student, 'distill.teacher="synth"')
    assert metric_records(student)[-1]["step"] == 4


def test_a_teacher_with_another_tokenizer_is_refused_naming_both(prepared_run, tmp_path):
    student = copy_run(prepared_run, tmp_path / "student")
    gguf = next(smollm2_dir().glob("*.gguf"))
    result = distill(student, f"distill.teacher={json.dumps(str(gguf))}", check=False)
    assert result.returncode == 2
    assert str(gguf) in result.stderr and "tokenizer.copy_from" in result.stderr
    assert not (student.path / "checkpoints").exists()


@pytest.mark.parametrize("missing", ['distill.teacher=""', 'distill.teacher="synth"'])
def test_missing_teacher_inputs_are_one_line_errors(prepared_run, tmp_path, missing):
    student = copy_run(prepared_run, tmp_path / "student")
    result = distill(student, missing, check=False)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "distill.teacher" in result.stderr or "mai synth" in result.stderr
