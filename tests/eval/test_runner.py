"""`mai eval` as a user runs it: bits per byte, task scores, the CORE aggregate, eval.json, comparisons."""

import json
import math
import shutil

import pytest
import torch

from conftest import metric_records, run_mai
from mai.config import apply_overrides
from mai.errors import MaiError
from mai.eval.runner import evaluate
from mai.export import export_hf
from mai.loading import save_model_weights
from mai.model.transformer import build_model
from mai.run import RunDir, atomic_write_json, atomic_write_text, sha256_file, write_json
from mai.run_files import CheckpointMeta
from mai.taskdata import CHOICE_TASKS


@pytest.fixture(scope="module")
def untrained_run(prepared_run, tmp_path_factory) -> RunDir:
    """A freshly initialised small model (the prepared run's tokenizer) saved as checkpoint step 0."""
    run = RunDir(tmp_path_factory.mktemp("untrained") / "run")
    shutil.copytree(prepared_run.path, run.path)
    small = ["model.d_model=64", "model.n_layers=2", "model.n_heads=2", "model.n_kv_heads=1"]
    config = apply_overrides(run.read_config(), small)
    run.write_config(config)
    checkpoint = run.checkpoint_dir(0)
    checkpoint.mkdir(parents=True)
    model_sha256 = save_model_weights(checkpoint, build_model(config.model, seed=0))
    meta = CheckpointMeta(
        model=config.model, model_sha256=model_sha256, tokenizer_sha256=sha256_file(run.tokenizer_path), step=0
    )
    write_json(checkpoint / "meta.json", meta)
    atomic_write_text(run.checkpoints_dir / "latest", checkpoint.name + "\n")
    return run


def test_an_untrained_model_scores_at_chance(untrained_run, tmp_path):
    """Centring on each task's random baseline makes chance 0, so the aggregate cannot flatter."""
    n = 60
    record = evaluate(untrained_run.path, CHOICE_TASKS, limit=n, out=tmp_path / "eval.json", bpb=False)
    for name, task in record.tasks.items():
        b = task.baseline
        assert abs(task.score - b) <= 4 * math.sqrt(b * (1 - b) / n), (name, task.score, b)
    assert abs(record.core) < 0.1, record.core


def test_bits_per_byte_is_the_one_training_measured(trained_run, tmp_path):
    record = evaluate(trained_run.path, ["arc_easy"], limit=2, out=tmp_path / "eval.json")
    last = [m for m in metric_records(trained_run) if "val_bpb" in m][-1]
    assert record.bpb.val_bpb == pytest.approx(last["val_bpb"], rel=1e-5)
    assert record.bpb.val_loss == pytest.approx(last["val_loss"], rel=1e-5)


def test_mai_eval_writes_eval_json_samples_and_a_table(trained_run, tmp_path):
    run = RunDir(tmp_path / "run")
    shutil.copytree(trained_run.path, run.path)
    result = run_mai("eval", str(run.path), "--tasks", "arc_easy,winogrande", "-t", "lambada", "--limit", "4")
    record = json.loads((run.path / "eval.json").read_text())
    assert list(record["tasks"]) == ["arc_easy", "winogrande", "lambada"]
    assert record["checkpoint"] == run.latest_checkpoint().name and record["settings"]["limit"] == 4
    tasks = record["tasks"]
    assert tasks["arc_easy"]["metric"] == "acc_norm" and tasks["winogrande"]["metric"] == "acc"
    assert all(t["examples"] == 4 for t in tasks.values())
    centred = [(t["score"] - t["baseline"]) / (1 - t["baseline"]) for t in tasks.values()]
    assert record["core"] == pytest.approx(sum(centred) / 3)
    samples = [json.loads(line) for line in (run.path / "eval_samples.jsonl").read_text().splitlines()]
    assert len(samples) == 12 and all(len(s["logprobs"]) == 4 for s in samples if s["task"] == "arc_easy")
    assert all("completion" in s for s in samples if s["task"] == "lambada")
    for name in ("arc_easy", "winogrande", "lambada", "CORE"):
        assert name in result.stdout
    assert "bits/byte" in result.stdout and "ex/s" in result.stderr


def test_a_users_jsonl_task(trained_run, tmp_path):
    task = tmp_path / "sonnets.jsonl"
    task.write_text(
        json.dumps({"context": "Shall I compare thee to a summer's", "choices": [" day", " pie"], "gold": 0})
    )
    record = evaluate(trained_run.path, [str(task)], out=tmp_path / "eval.json", bpb=False)
    assert record.tasks["sonnets"].examples == 1 and record.tasks["sonnets"].baseline == 0.5
    assert json.loads((tmp_path / "eval.json").read_text())["tasks"]["sonnets"]["source"] == str(task)


def test_a_later_eval_of_the_same_weights_adds_its_tasks(trained_run, tmp_path):
    """Scoring one more task keeps the others in eval.json; results of other weights or settings go."""
    run = RunDir(tmp_path / "run")
    shutil.copytree(trained_run.path, run.path)
    task = tmp_path / "sonnets.jsonl"
    task.write_text(
        json.dumps({"context": "Shall I compare thee to a summer's", "choices": [" day", " pie"], "gold": 0})
    )

    def saved() -> tuple[dict, list[str]]:
        samples = (run.path / "eval_samples.jsonl").read_text().splitlines()
        return json.loads((run.path / "eval.json").read_text()), [json.loads(line)["task"] for line in samples]

    evaluate(run.path, ["arc_easy", "lambada"], limit=2, bpb=False)
    evaluate(run.path, ["lambada", str(task)], limit=2, bpb=False)
    record, sample_tasks = saved()
    assert list(record["tasks"]) == ["arc_easy", "lambada", "sonnets"] == record["settings"]["tasks"]
    assert record["core"] == pytest.approx(sum(t["centered"] for t in record["tasks"].values()) / 3)
    assert sorted(sample_tasks) == ["arc_easy"] * 2 + ["lambada"] * 2 + ["sonnets"]

    evaluate(run.path, [str(task)], limit=1, bpb=False)  # another --limit
    assert list(saved()[0]["tasks"]) == ["sonnets"]
    evaluate(run.path, ["arc_easy"], limit=1, bpb=False)
    record, _ = saved()
    atomic_write_json(run.path / "eval.json", record | {"model_sha256": "0" * 64})  # as if other weights wrote it
    evaluate(run.path, [str(task)], limit=1, bpb=False)
    record, sample_tasks = saved()
    assert list(record["tasks"]) == ["sonnets"] and sample_tasks == ["sonnets"]


def test_code_tasks_are_executed_and_scored(trained_run, tmp_path):
    """The tiny model's HumanEval completions run in the sandbox; they fail, and the run completes."""
    record = evaluate(trained_run.path, ["humaneval"], limit=2, out=tmp_path / "eval.json", bpb=False)
    assert record.tasks["humaneval"].pass_at_1 == 0.0 and record.tasks["humaneval"].baseline == 0.0
    samples = [json.loads(line) for line in (tmp_path / "eval_samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2 and all(s["status"] in ("failed", "timeout", "memory") for s in samples)


def test_a_transformers_export_scores_like_its_run(trained_run, tmp_path):
    export_hf(trained_run, tmp_path / "hf")
    ours = evaluate(trained_run.path, ["arc_easy,piqa"], limit=3, out=tmp_path / "run.json")
    exported = evaluate(tmp_path / "hf", ["arc_easy,piqa"], limit=3, out=tmp_path / "hf.json")
    for name in ("arc_easy", "piqa"):
        assert exported.tasks[name].score == ours.tasks[name].score
    assert exported.checkpoint == "imported" and exported.bpb is None  # no validation shards there


def test_eval_of_a_model_directory_writes_only_where_asked(trained_run, tmp_path):
    """A transformers or GGUF directory may be someone else's (site-packages): eval.json goes to --out only."""
    export_hf(trained_run, tmp_path / "hf")
    before = sorted((tmp_path / "hf").iterdir())
    result = run_mai("eval", str(tmp_path / "hf"), "-t", "arc_easy", "--limit", "2")
    assert "arc_easy" in result.stdout and "pass --out FILE" in " ".join(result.stderr.split())
    assert sorted((tmp_path / "hf").iterdir()) == before


@pytest.mark.parametrize("native_bf16", [True, False])
def test_precision_auto_scores_and_is_recorded_in_the_precision_it_resolves_to(
    trained_run, tmp_path, monkeypatch, native_bf16
):
    """auto is bf16 where the hardware computes it natively, as for `mai generate`; eval.json names
    the resolved precision, so records from different machines compare like with like."""
    monkeypatch.setattr("mai.precision.cpu_has_native_bf16", lambda: native_bf16)
    resolved = "bf16" if native_bf16 or torch.cuda.is_available() else "fp32"
    logprobs = {}
    for precision in ("auto", resolved):
        out = tmp_path / precision / "eval.json"
        record = evaluate(trained_run.path, ["arc_easy"], limit=2, precision=precision, out=out, bpb=False)
        assert record.settings.precision == json.loads(out.read_text())["settings"]["precision"] == resolved
        samples = out.with_name("eval_samples.jsonl").read_text().splitlines()
        logprobs[precision] = [json.loads(line)["logprobs"] for line in samples]
    assert logprobs["auto"] == logprobs[resolved]


def test_user_mistakes_are_one_line_errors(trained_run, tmp_path):
    result = run_mai("eval", str(trained_run.path), "-t", "hellaswagg", check=False)
    assert result.returncode == 2 and result.stderr.startswith("error: unknown task 'hellaswagg'")
    for kwargs, phrase in [
        ({"limit": 0}, "--limit must be at least 1"),
        ({"precision": "fp8"}, "--precision must be one of auto, fp32, bf16, int8, int4, not 'fp8'"),
        ({"tasks": [""]}, "no tasks to evaluate"),
    ]:
        with pytest.raises(MaiError, match=phrase):
            evaluate(trained_run.path, **{"tasks": ["arc_easy"], "out": tmp_path / "eval.json"} | kwargs)
    with pytest.raises(MaiError, match="does not exist"):
        evaluate(tmp_path / "missing", ["arc_easy"])
    assert not (tmp_path / "eval.json").exists()


def test_compare_prints_a_table_and_draws_a_chart(trained_run, untrained_run, tmp_path):
    paths = []
    for name, run in (("trained", trained_run), ("untrained", untrained_run)):
        paths.append(tmp_path / name / "eval.json")
        evaluate(run.path, ["arc_easy,boolq"], limit=3, out=paths[-1])
    chart = tmp_path / "compare.png"
    result = run_mai("eval", "compare", *map(str, paths), "--chart", str(chart))
    header, *rows = result.stdout.splitlines()
    assert header.split()[1:] == ["trained", "untrained"]
    assert [r.split()[0] for r in rows[:2]] == ["arc_easy", "boolq"] and "CORE" in result.stdout
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "warning" not in result.stdout
    evaluate(untrained_run.path, ["arc_easy,boolq"], limit=2, out=paths[-1])
    mismatched = run_mai("eval", "compare", *map(str, paths), "--chart", str(chart)).stdout
    assert "warning: evaluated with different --limit (trained 3, untrained 2)" in mismatched
    lone = run_mai("eval", "compare", str(paths[0]), check=False)
    assert lone.returncode == 2 and "at least two" in lone.stderr


def test_a_bad_out_fails_before_any_work(tmp_path):
    """--out is checked before the tasks or the model load, and a user's file is never overwritten."""
    (tmp_path / "emptydir").mkdir()
    (tmp_path / "notes.txt").write_text("mine\n")
    for out, phrase in [
        ("emptydir", "is a directory; name a file such as"),
        ("notes.txt", "exists and is not an eval.json; choose another file"),
        ("notes.txt/eval.json", "is a file, not a folder"),
    ]:
        with pytest.raises(MaiError, match=phrase):
            evaluate(tmp_path / "missing", ["arc_easy"], limit=1, out=tmp_path / out)
    assert (tmp_path / "notes.txt").read_text() == "mine\n" and list((tmp_path / "emptydir").iterdir()) == []
    result = run_mai(
        "eval",
        str(tmp_path / "missing"),
        "--tasks",
        "arc_easy",
        "--limit",
        "1",
        "--out",
        str(tmp_path / "emptydir"),
        check=False,
    )
    assert result.returncode == 2 and result.stderr.startswith(f"error: --out {tmp_path / 'emptydir'} is a directory")
