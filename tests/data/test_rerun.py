"""A rerun of `mai data prepare` redoes only what changed: new tokenizer settings keep the pipeline's
outputs, a deleted or corrupt shard is rewritten alone, and a trained run's data is never replaced."""

import re

import numpy as np
import pytest

from conftest import FAST, PIPELINE_STAGES, copy_run, run_mai
from mai.config import load_config
from mai.data.prepare import prepare_data
from mai.errors import MaiError
from mai.loading import load_tokenizer
from mai.run import RunDir, sha256_file
from mai.stages import init_run

SKIPPED = [f"data: {stage} done before, skipped" for stage in PIPELINE_STAGES]


def file_states(path) -> dict:
    """Size and mtime of a file or of every file under a folder: what a step that ran would change."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in files}


def pipeline_outputs(run: RunDir) -> dict:
    """Every file the stages before the shards wrote (their outputs, logs, completion markers, rejects)."""
    work = run.data_dir / "work"
    shard_stage = (work / "logs" / "shards", work / "shard_summaries", work / "config.json")
    states = file_states(work) | file_states(run.data_dir / "rejected")
    return {p: s for p, s in states.items() if not any(p.is_relative_to(d) for d in shard_stage)}


def stderr_lines(capsys) -> list[str]:
    return [re.sub(r" in \d+\.\d s$", " in N s", line) for line in capsys.readouterr().err.splitlines()]


def test_a_deleted_and_a_corrupt_shard_are_rewritten_alone(prepared_run, tmp_path, capsys):
    run = copy_run(prepared_run, tmp_path / "run")
    shards = run.read_manifest().shards
    originals = {s.path: (run.data_dir / s.path).read_bytes() for s in shards}
    deleted = shards[0].path  # shards/{split}_{task}_{n}.bin: two shards of two tasks
    corrupt = next(s.path for s in shards if s.path.split("_")[1] != deleted.split("_")[1])
    (run.data_dir / deleted).unlink()
    data = bytearray(originals[corrupt])
    data[10] ^= 0xFF
    (run.data_dir / corrupt).write_bytes(bytes(data))
    pipeline, tokenizer = pipeline_outputs(run), file_states(run.tokenizer_path)

    manifest = prepare_data(run, run.read_config())
    assert manifest.shards == shards
    assert {s.path: (run.data_dir / s.path).read_bytes() for s in shards} == originals
    for split in ("train", "val"):
        run.read_tokens(split)  # verifies every shard's sha256
    assert stderr_lines(capsys) == [
        *SKIPPED,
        f"data: 2 shards missing or corrupt ({', '.join(sorted([deleted, corrupt]))}), rewriting them",
        "data: shards, 2 of 4 tasks in N s",
    ]
    assert pipeline_outputs(run) == pipeline, "an earlier stage was rerun"
    assert file_states(run.tokenizer_path) == tokenizer, "the tokenizer was retrained"


def test_a_new_vocab_size_retrains_the_tokenizer_and_not_the_pipeline(prepared_run, tmp_path, capsys):
    run = copy_run(prepared_run, tmp_path / "run")
    config = load_config("tiny", [*FAST, "model.vocab_size=2048"])
    run.write_config(config)
    pipeline = pipeline_outputs(run)

    manifest = prepare_data(run, config)
    assert stderr_lines(capsys) == [
        "data: tokenizer settings changed (model.vocab_size), retraining the tokenizer and rewriting shards",
        *SKIPPED,
        "data: shards, 4 tasks in N s",
    ]
    assert pipeline_outputs(run) == pipeline, "an earlier stage was rerun"
    assert load_tokenizer(run).vocab_size == manifest.vocab_size == 2048
    assert manifest.tokenizer_sha256 == sha256_file(run.tokenizer_path)
    assert int(np.asarray(run.read_tokens("train")).max()) < 2048
    assert manifest.tokens.train > prepared_run.read_manifest().tokens.train  # fewer merges, more tokens


def test_shard_settings_keep_the_tokenizer_and_workers_change_nothing(prepared_run, tmp_path, capsys):
    run = copy_run(prepared_run, tmp_path / "run")
    config = load_config("tiny", [*FAST, "data.workers=1", "data.val_fraction=0.2"])
    run.write_config(config)
    pipeline, tokenizer = pipeline_outputs(run), file_states(run.tokenizer_path)

    manifest = prepare_data(run, config)
    assert stderr_lines(capsys) == [
        "data: shard settings changed (data.val_fraction), rewriting shards",
        *SKIPPED,
        "data: shards, 4 tasks in N s",
    ]
    assert pipeline_outputs(run) == pipeline and file_states(run.tokenizer_path) == tokenizer
    assert len(manifest.val_documents) > len(prepared_run.read_manifest().val_documents)
    listed = {run.data_dir / s.path for s in manifest.shards}
    assert set(run.shards_dir.iterdir()) == listed  # no shard of the old split is left behind


# The stages after filtering are not what these tests are about; skipping them saves ~45 s a test.
SMALL = [
    'data.sources=[{name = "shakespeare", max_mb = 0.3}]',
    "tokenizer.sample_mb=0.3",
    "model.vocab_size=1024",
    "data.exact_dedup=false",
    "data.minhash_dedup=false",
    "data.decontaminate=false",
    "data.tasks=1",
]


def test_a_pipeline_setting_reruns_the_pipeline_and_says_why(tmp_path, capsys):
    run = RunDir(tmp_path / "run")
    init_run(run, load_config("tiny", SMALL))
    prepare_data(run, run.read_config())
    capsys.readouterr()
    config = load_config("tiny", [*SMALL, "data.language_threshold=0.5"])
    run.write_config(config)
    prepare_data(run, config)
    lines = stderr_lines(capsys)
    assert lines[0] == "data: data settings changed (data.language_threshold), rerunning the pipeline"
    assert [line.split(",")[0] for line in lines[1:]] == ["data: filter", "data: clean", "data: shards"]
    assert "done before" not in "".join(lines)


def edit_config(run: RunDir, old: str, new: str) -> None:
    text = run.config_path.read_text()
    assert old in text
    run.config_path.write_text(text.replace(old, new))


@pytest.mark.parametrize(
    ("old", "new", "changed"),
    [
        ("sample_mb = 1.0", "sample_mb = 0.5", "tokenizer.sample_mb"),
        ("val_fraction = 0.05", "val_fraction = 0.1", "data.val_fraction"),
    ],
)
def test_a_trained_run_refuses_new_data_settings_before_touching_anything(trained_run, tmp_path, old, new, changed):
    run = copy_run(trained_run, tmp_path / "run")
    edit_config(run, old, new)
    before = file_states(run.path)
    result = run_mai("data", "prepare", str(run.path), check=False)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    checkpoint = run.latest_checkpoint().name
    assert result.stderr.startswith(f"error: {run.path} has {checkpoint}, trained on its data and tokenizer; ")
    assert f"({changed})" in result.stderr and "new run directory (`mai init`)" in result.stderr
    assert file_states(run.path) == before


def test_a_trained_run_reruns_as_a_no_op_and_repairs_a_shard(trained_run, tmp_path, capsys):
    run = copy_run(trained_run, tmp_path / "run")
    before = file_states(run.path)
    assert prepare_data(run, run.read_config()) == run.read_manifest()
    assert stderr_lines(capsys) == [*SKIPPED, "data: shards done before, skipped"]
    assert file_states(run.path) == before  # not even the manifest is rewritten

    shard = run.read_manifest().shards[0].path
    original = (run.data_dir / shard).read_bytes()
    (run.data_dir / shard).unlink()
    prepare_data(run, run.read_config())
    assert (run.data_dir / shard).read_bytes() == original
    assert file_states(run.tokenizer_path) == {run.tokenizer_path: before[run.tokenizer_path]}


def test_a_trained_run_without_its_tokenizer_is_refused(trained_run, tmp_path):
    run = copy_run(trained_run, tmp_path / "run")
    run.tokenizer_path.unlink()
    before = file_states(run.path)
    with pytest.raises(
        MaiError, match=r"^tokenizer.json is missing \(step_\d+ was trained with the original\).*restore the original"
    ):
        prepare_data(run, run.read_config())
    assert file_states(run.path) == before
