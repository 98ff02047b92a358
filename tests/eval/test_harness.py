"""lm-evaluation-harness interop: our tasks as lm-eval task files, our model as lm-eval's `mai`."""

import json
import subprocess
import sys

import pytest
import yaml

from conftest import run_mai
from mai.errors import MaiError
from mai.eval.lm_eval_tasks import write_lm_eval_tasks

TASKS = "arc_easy,winogrande"


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """The task files are local: keep `datasets` from looking for a hub."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def lm_eval_samples(output: str, task: str) -> list[dict]:
    from pathlib import Path

    [path] = Path(output).rglob(f"samples_{task}_*.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()]


def ours_by_id(path) -> dict[tuple[str, str], dict]:
    samples = [json.loads(line) for line in path.read_text().splitlines()]
    return {(s["task"], s["id"]): s for s in samples}


def test_task_files_hold_exactly_what_mai_eval_scores(tmp_path):
    names = write_lm_eval_tasks(tmp_path, [TASKS, "lambada"], limit=3)
    assert names == ["mai_arc_easy", "mai_winogrande", "mai_lambada"]
    config = yaml.safe_load((tmp_path / "mai_arc_easy.yaml").read_text())
    assert config["output_type"] == "multiple_choice" and config["target_delimiter"] == ""
    doc = json.loads((tmp_path / "mai_arc_easy.jsonl").read_text().splitlines()[0])
    assert doc["context"] == "Question: Which technology was developed most recently?\nAnswer:"
    assert doc["choices"][doc["gold"]] == " cellular telephone"
    winogrande = yaml.safe_load((tmp_path / "mai_winogrande.yaml").read_text())
    assert (winogrande["doc_to_text"], winogrande["doc_to_choice"]) == ("gold", "contexts")
    assert yaml.safe_load((tmp_path / "mai_lambada.yaml").read_text())["output_type"] == "generate_until"
    with pytest.raises(MaiError, match="code task"):
        write_lm_eval_tasks(tmp_path, ["humaneval"], limit=1)
    elsewhere = tmp_path / "all"
    with pytest.raises(MaiError, match="humaneval, mbpp: code tasks.*--tasks core,gsm8k"):
        write_lm_eval_tasks(elsewhere, ["all"], limit=1)
    assert not elsewhere.exists()  # refused before any file is written


@pytest.mark.slow  # lm-eval over our model
def test_lm_eval_with_the_mai_model_agrees_with_mai_eval_per_example(trained_run, tmp_path):
    """The acceptance check: per-example log-likelihoods from `lm_eval --model mai` equal ours within 1e-3."""
    folder, output = tmp_path / "tasks", tmp_path / "lm_eval"
    run_mai("eval", "lm-eval-tasks", str(folder), "--tasks", TASKS, "--limit", "8")
    run_mai(
        *["eval", "lm-eval", "--model", "mai", "--model_args", f"run={trained_run.path}"],
        *["--include_path", str(folder), "--tasks", "mai_arc_easy,mai_winogrande"],
        *["--log_samples", "--output_path", str(output)],
    )
    run_mai("eval", str(trained_run.path), "-t", TASKS, "--limit", "8", "--out", str(tmp_path / "eval.json"))
    ours = ours_by_id(tmp_path / "eval_samples.jsonl")
    for task in TASKS.split(","):
        samples = lm_eval_samples(str(output), f"mai_{task}")
        assert len(samples) == 8
        for sample in samples:
            theirs = [float(resp[0]) for resp in sample["filtered_resps"]]
            mine = ours[(task, sample["doc"]["id"])]
            assert theirs == pytest.approx(mine["logprobs"], abs=1e-3)
            assert sample["acc"] == mine["acc"]


@pytest.mark.slow  # lm-eval over transformers
def test_lm_eval_with_transformers_agrees_with_mai_eval_per_example(trained_run, tmp_path):
    """lm-eval's own hf model on our export scores the same examples the same (BOS as our tokenizer adds it)."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    run_mai("export", "hf", str(trained_run.path), str(tmp_path / "hf"))
    names = write_lm_eval_tasks(tmp_path / "tasks", [TASKS], limit=8)
    results = lm_eval.simple_evaluate(
        model="hf",
        model_args={"pretrained": str(tmp_path / "hf"), "add_bos_token": True, "dtype": "float32"},
        tasks=names,
        task_manager=TaskManager(include_path=str(tmp_path / "tasks")),
        log_samples=True,
        batch_size=8,
        device="cpu",
    )
    run_mai("eval", str(trained_run.path), "-t", TASKS, "--limit", "8", "--out", str(tmp_path / "eval.json"))
    ours = ours_by_id(tmp_path / "eval_samples.jsonl")
    for name in names:
        for sample in results["samples"][name]:
            theirs = [float(resp[0]) for resp in sample["filtered_resps"]]
            assert theirs == pytest.approx(ours[(name.removeprefix("mai_"), sample["doc"]["id"])]["logprobs"], abs=1e-3)


def test_registering_mai_leaves_lm_evals_own_models_registered():
    """lm-eval fills its model registry only when it is empty at the first lookup; `mai` must not be all it has."""
    code = "import mai.eval.harness; from lm_eval.api.registry import get_model; print(get_model('hf').__name__)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "HFLM", result.stderr[-2000:]
