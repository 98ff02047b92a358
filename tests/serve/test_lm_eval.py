"""lm-evaluation-harness' local-completions model scores a multiple-choice task through the server.

Loglikelihoods come back through echo + logprobs; each must match the model computed in-process.
"""

from pathlib import Path

import pytest
import torch

from conftest import run_mai
from mai.loading import load_run_model

TASK = """\
task: mai_tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
target_delimiter: " "
metric_list:
  - metric: acc
"""


@pytest.mark.slow  # lm-eval's API model over HTTP
def test_local_completions_loglikelihoods_match_in_process(server, trained_run, tmp_path):
    from lm_eval import simple_evaluate
    from lm_eval.models.openai_completions import LocalCompletionsAPI
    from lm_eval.tasks import TaskManager

    hf_dir = tmp_path / "hf"
    run_mai("export", "hf", str(trained_run.path), str(hf_dir))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    data = Path(__file__).parent / "data" / "tiny_mc.jsonl"
    (tasks / "mai_tiny_mc.yaml").write_text(TASK.format(data=data))
    lm = LocalCompletionsAPI(
        base_url=f"{server.url}/v1/completions",
        model=server.model,
        tokenizer=str(hf_dir),
        tokenizer_backend="huggingface",
        max_retries=1,
        max_length=256,
    )
    results = simple_evaluate(
        model=lm, tasks=["mai_tiny_mc"], task_manager=TaskManager(include_path=str(tasks)), log_samples=True
    )
    assert 0 <= results["results"]["mai_tiny_mc"]["acc,none"] <= 1
    samples = results["samples"]["mai_tiny_mc"]
    assert len(samples) == 8

    model, _, _ = load_run_model(trained_run)
    for sample in samples:
        for (context, continuation), resp in zip(sample["arguments"], sample["resps"], strict=True):
            context_ids, continuation_ids = lm._encode_pair(context, continuation)
            tokens = torch.tensor([context_ids + continuation_ids])
            with torch.no_grad():
                logprobs = model(tokens)[0, :-1].log_softmax(-1)
            targets = tokens[0, 1:]
            expected = logprobs.gather(-1, targets[:, None])[-len(continuation_ids) :].sum().item()
            assert abs(float(resp[0][0]) - expected) < 1e-3
