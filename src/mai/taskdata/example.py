"""What every evaluation set becomes: examples of one of three kinds, grouped into a task.

- choice: score each (context, continuation) pair by log-likelihood; the gold one should win.
- generate: greedy-decode from the context, extract the answer, compare it with `answer`.
- code: greedy-decode a program, run it with its `test` in a sandbox; exit code 0 passes.
"""

from collections.abc import Callable
from dataclasses import dataclass, field

CODE_STOPS = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")  # the Codex paper's stop sequences


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
