"""`mai run` end to end on a small config: every artefact of the run-directory contract, and reruns resume."""

import json

import pytest

from conftest import FAST, run_mai
from mai.run import RunDir


@pytest.mark.slow  # `mai run` end to end, four times
def test_run_writes_the_contract_and_a_rerun_skips_finished_stages(tmp_path):
    path = tmp_path / "demo"
    sft = ["sft.steps=6", "sft.warmup_steps=1", "sft.held_out=4", "sft.answer_tokens=8", "sft.batch_size=4"]
    args = ["run", "tiny", "--run-dir", str(path)] + [a for o in FAST + sft for a in ("--set", o)]
    first = run_mai(*args, "--set", "sample.max_new_tokens=20")
    assert "no checkpoint yet" not in first.stderr  # a fresh run is not a resume
    run = RunDir(path)
    for name in [
        "config.toml",
        "data/manifest.json",
        "tokenizer.json",
        "metrics.jsonl",
        "samples.json",
        "report.md",
        "loss.png",
        "lr.png",
        "throughput.png",
        "checkpoints/latest",
        "eval.json",
        "eval.png",
        "sft/sft.json",
        "sft/report.md",
        "sft/checkpoints/latest",
    ]:
        assert (path / name).is_file(), name
    report = run.report_path.read_text()
    assert "val bits/byte" in report and "## Samples" in report and "shakespeare" in report
    assert "## Evaluation" in report and "CORE-style aggregate" in report and "| hellaswag | acc_norm |" in report
    assert "## Chat fine-tuning" in report and "into [sft/](sft/report.md)" in report
    samples = json.loads(run.samples_path.read_text())["samples"]
    assert [s["prompt"] for s in samples] == ["ROMEO:", "The king"]
    assert all(s["text"].startswith(s["prompt"]) for s in samples)

    checkpoint_mtime = run.latest_checkpoint().stat().st_mtime
    eval_mtime = (path / "eval.json").stat().st_mtime
    rerun = run_mai(*args, "--set", "sample.max_new_tokens=20")
    assert "data: complete, skipped" in rerun.stderr and "is final, skipped" in rerun.stderr
    assert "sft.json is complete, skipped" in rerun.stderr
    assert run.latest_checkpoint().stat().st_mtime == checkpoint_mtime
    assert (path / "eval.json").stat().st_mtime == eval_mtime  # the final checkpoint is evaluated once

    run_mai("eval", str(path), "-t", "arc_easy", "--limit", "2")  # the user's own evaluation is kept
    rerun = run_mai(*args, "--set", "sample.max_new_tokens=20")
    assert "keeping eval.json of another `mai eval` (tasks arc_easy; limit 2)" in " ".join(rerun.stderr.split())
    assert list(json.loads((path / "eval.json").read_text())["tasks"]) == ["arc_easy"]

    changed = run_mai(*args, "--set", "sample.max_new_tokens=21", check=False)
    assert changed.returncode == 2 and "different config" in changed.stderr
