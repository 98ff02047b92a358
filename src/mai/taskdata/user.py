"""A user's own task: a JSONL file, one example per line, its kind told by its fields.

    choice:   {"context": "...", "choices": [" a", " b"], "gold": 0}   (optional "contexts": one per choice)
    generate: {"context": "...", "answer": "42", "pattern": "answer is (\\d+)", "stop": ["\\n"], "max_new_tokens": 32}
    code:     {"context": "def f(x):\n", "test": "assert f(1) == 2", "prompt_is_code": true, "stop": ["\\ndef"]}

Every line may carry an "id". Choices are continuations: put the separating space in them. Each
kind's line is a strict pydantic model whose field descriptions say what the field must be, so a
bad line is one error naming the file, the line and the field, before any model loads.
"""

import json
import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mai.errors import MaiError
from mai.taskdata.example import CODE_STOPS, Example, Task

METRICS = {"choice": "acc_norm", "generate": "exact_match", "code": "pass@1"}


class Line(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    id: str | int | None = Field(None, description="a string or an integer")
    context: str | None = Field(None, description="a string")


class ChoiceLine(Line):
    choices: list[str] = Field(description="a list of strings")
    contexts: list[str] | None = Field(None, description="a list of strings")
    gold: int = Field(ge=0, description="an integer ≥ 0")


class DecodingLine(Line):
    """A line whose example is decoded: where decoding stops."""

    stop: str | list[str] = Field([], description="a non-empty string or a list of them")

    @field_validator("stop")
    @classmethod
    def _non_empty(cls, stop):
        if not all(stop if isinstance(stop, list) else [stop]):
            raise ValueError("empty stop string")
        return stop

    def stops(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class GenerateLine(DecodingLine):
    answer: str | int | float = Field(description="a string or a number")  # arithmetic answers often are numbers
    pattern: str = Field("", description="a string")
    max_new_tokens: int = Field(32, ge=1, description="an integer ≥ 1")


class CodeLine(DecodingLine):
    test: str = Field(description="a string")
    prompt_is_code: bool = Field(False, description="true or false")
    max_new_tokens: int = Field(256, ge=1, description="an integer ≥ 1")


def load_jsonl_task(path: Path) -> Task:
    """The task in a user's JSONL file (see the module docstring)."""
    if not path.is_file():
        raise MaiError(f"task file {path} does not exist", parameter="tasks")
    examples, kinds, first_line = [], set(), {}
    for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as e:
            raise MaiError(f"{path}:{number}: not JSON ({e})", parameter="tasks") from None
        kind, example = example_from_record(record, f"{path.stem}/{number}", f"{path}:{number}")
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
    return Task(path.stem, kind, METRICS[kind], str(path), examples)


def example_from_record(record, default_id: str, where: str) -> tuple[str, Example]:
    if not isinstance(record, dict):
        raise MaiError(f"{where}: each line must be a JSON object", parameter="tasks")
    if "choices" in record:
        line = parse(ChoiceLine, record, where)
        if len(line.choices) < 2 or line.gold >= len(line.choices):
            raise MaiError(f"{where}: a choice example needs 2+ 'choices' and an integer 'gold' index among them")
        if line.contexts is not None and len(line.contexts) != len(line.choices):
            raise MaiError(f"{where}: 'contexts' must have one entry per choice")
        choices = tuple(line.choices)
        example = Example(
            **common(line, default_id, where, needs_context=line.contexts is None),
            choices=choices,
            contexts=tuple(line.contexts or ()),
            gold=line.gold,
            reference=choices[line.gold],
        )
        return "choice", example
    if "test" in record:
        line = parse(CodeLine, record, where)
        return "code", Example(
            **common(line, default_id, where),
            test=line.test,
            prompt_is_code=line.prompt_is_code,
            stop=line.stops() or CODE_STOPS,
            max_new_tokens=line.max_new_tokens,
        )
    if "answer" in record:
        line = parse(GenerateLine, record, where)
        try:
            re.compile(line.pattern)
        except re.error as e:
            raise MaiError(f"{where}: 'pattern' is not a valid regex ({e})") from None
        return "generate", Example(
            **common(line, default_id, where),
            answer=str(line.answer),
            pattern=line.pattern,
            stop=line.stops() or ("\n",),
            max_new_tokens=line.max_new_tokens,
            reference=str(line.answer),
        )
    raise MaiError(f"{where}: a line needs 'choices' (choice), 'answer' (generate) or 'test' (code)")


def parse(model: type[Line], record: dict, where: str) -> Line:
    """`record` as a line of `model`, or a MaiError naming the first field that is not as it must be."""
    try:
        return model.model_validate(record)
    except ValidationError as e:
        key = str(e.errors()[0]["loc"][0])
        wanted = model.model_fields[key].description
        if key not in record:
            raise MaiError(f"{where}: the line needs '{key}', {wanted}", parameter="tasks") from None
        raise MaiError(f"{where}: '{key}' must be {wanted}, not {json.dumps(record[key])}", parameter="tasks") from None


def common(line: Line, default_id: str, where: str, needs_context: bool = True) -> dict:
    """The fields every kind of example has: its id and its context."""
    if line.context is None and needs_context:
        raise MaiError(f"{where}: the line needs a string 'context'", parameter="tasks")
    return {"id": default_id if line.id is None else str(line.id), "context": line.context or ""}
