"""Our tasks as lm-evaluation-harness task files: one JSONL of examples and one YAML per task.

`write_lm_eval_tasks(folder, ["arc_easy", ...], limit)` writes `mai_<task>.jsonl` and
`mai_<task>.yaml` (named with a `mai_` prefix so they never shadow lm-eval's own tasks). Then

    lm_eval --model hf --model_args pretrained=DIR --include_path FOLDER --tasks mai_arc_easy

scores exactly the prompts and continuations `mai eval` scores: the YAML reads the fields as they
are (no templates, no target delimiter), so any difference between the two is the model's.
Choice and generative tasks are written; code tasks need lm-eval's code execution and are not.
"""

import json
from pathlib import Path

from mai.errors import MaiError
from mai.run import atomic_write_text, make_directory
from mai.taskdata import Task, load_task, resolve_tasks

PREFIX = "mai_"


def write_lm_eval_tasks(folder: Path, tasks: list[str], limit: int | None = None) -> list[str]:
    """Write each task's JSONL and YAML into `folder`; return the lm-eval task names."""
    import yaml  # installed with lm-eval

    loaded = [load_task(name, limit) for name in resolve_tasks(tasks)]
    code = [task.name for task in loaded if task.kind == "code"]
    if code:  # refused before anything is written
        raise MaiError(
            f"{', '.join(code)}: code tasks; lm-eval task files are written for choice and generate tasks "
            "only, so leave them out (the core suite and gsm8k: --tasks core,gsm8k)",
            parameter="tasks",
        )
    docs = {task.name: lm_eval_docs(task) for task in loaded}
    folder = folder.resolve()
    make_directory(folder)
    names = []
    for task in loaded:
        lm_name = PREFIX + task.name
        data = folder / f"{lm_name}.jsonl"
        atomic_write_text(data, "".join(json.dumps(doc) + "\n" for doc in docs[task.name]))
        config = lm_eval_config(task, lm_name, data)
        atomic_write_text(folder / f"{lm_name}.yaml", yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
        names.append(lm_name)
    return names


def lm_eval_docs(task: Task) -> list[dict]:
    """One lm-eval document per example, holding the exact strings `mai eval` scores."""
    per_choice = {bool(e.contexts) for e in task.examples}
    if len(per_choice) > 1 or any(e.contexts and len(set(e.choices)) > 1 for e in task.examples):
        raise MaiError(
            f"{task.name}: lm-eval needs either one context per example, or one context per choice "
            "with a single shared continuation; split the task into two files"
        )
    docs = []
    for e in task.examples:
        if task.kind == "generate":
            docs.append({"id": e.id, "prompt": task.prefix + e.context, "answer": e.answer})
        elif e.contexts:  # one context per choice, a shared continuation (lm-eval's "multiple inputs")
            docs.append(
                {
                    "id": e.id,
                    "gold": e.gold,
                    "contexts": [task.prefix + c for c in e.contexts],
                    "continuation": e.choices[0],
                }
            )
        else:
            docs.append({"id": e.id, "context": task.prefix + e.context, "choices": list(e.choices), "gold": e.gold})
    return docs


def lm_eval_config(task: Task, lm_name: str, data: Path) -> dict:
    config = {
        "task": lm_name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test",
    }
    if task.kind == "generate":
        example = task.examples[0]
        pattern = example.pattern or r"(?s)^\s*(.*?)\s*$"
        return config | {
            "output_type": "generate_until",
            "doc_to_text": "prompt",
            "doc_to_target": "answer",
            "generation_kwargs": {
                "until": list(example.stop),
                "max_gen_toks": example.max_new_tokens,
                "do_sample": False,
            },
            "filter_list": [
                {
                    "name": "extract",
                    "filter": [
                        {"function": "regex", "regex_pattern": pattern, "group_select": 0, "fallback": "[no answer]"},
                        {"function": "take_first"},
                    ],
                }
            ],
            "metric_list": [
                {
                    "metric": "exact_match",
                    "aggregation": "mean",
                    "higher_is_better": True,
                    "ignore_case": True,
                    # what mai.eval.runner.normalize_answer ignores
                    "regexes_to_ignore": [
                        r"^\s+",
                        r"\s+$",
                        ",",
                        r"\$",
                        r"(?<=^-)\s+",
                        "[.!?;:)\\]\"'”’]+$",
                        "^[(\"'“‘\\[]+",
                    ],
                }
            ],
            "metadata": {"version": 1.0},
        }
    shared = not task.examples[0].contexts
    return config | {
        "output_type": "multiple_choice",
        "doc_to_text": "context" if shared else "gold",
        "doc_to_choice": "choices" if shared else "contexts",
        "doc_to_target": "gold" if shared else "continuation",
        "target_delimiter": "",
        "metric_list": [
            {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
            {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
        ],
        "metadata": {"version": 1.0},
    }
