"""Conversations for `mai sft`: read, checked and split into RUN/sft/conversations/.

Sources (config sft.data) are JSONL files in OpenAI's format, one {"messages": [{"role", "content"},
...]} per line; "synth", the prompts `mai synth` sent with the teacher's kept replies; or
"shakespeare-dialogues", exchanges between two speakers of the plays, offline for the demo. A bad
line is a one-line error naming the file, the line and the field. The held-out conversations are
drawn with the seed, and both sets are written as checked JSONL that `mai sft`'s training reads.
"""

import json
import re
from pathlib import Path

import numpy as np

from mai.data.corpus import shakespeare
from mai.errors import MaiError
from mai.run import RunDir, atomic_write_text
from mai.run_files import SynthRecord

ROLES = ("system", "user", "assistant")
SHAKESPEARE_DIALOGUES = "shakespeare-dialogues"

# A speech in the Gutenberg plays: the speaker's name in capitals on a line of its own, ending in a
# full stop, then the lines spoken, up to a blank line.
SPEECH = re.compile(r"^([A-Z][A-Z' ,&-]{1,40})\.\n((?:.+\n?)+)", re.MULTILINE)
LONGEST_SPEECH, TURNS = 400, 4  # characters of speech kept; turns per dialogue (two exchanges)


def check_messages(messages, where: str) -> list[dict[str, str]]:
    """A conversation's messages as {"role", "content"} dicts, or a one-line error naming `where` and the field."""
    if not isinstance(messages, list) or not messages:
        raise MaiError(f"{where}: messages must be a non-empty list of {{role, content}} objects")
    for i, message in enumerate(messages):
        field = f"messages[{i}]"
        if not isinstance(message, dict):
            raise MaiError(f"{where}: {field} is not an object with role and content")
        if message.get("role") not in ROLES:
            raise MaiError(f"{where}: {field}.role is {message.get('role')!r}; use one of {', '.join(ROLES)}")
        if not isinstance(message.get("content"), str):
            raise MaiError(f"{where}: {field}.content must be a string, got {message.get('content')!r}")
    if not any(m["role"] == "assistant" for m in messages):
        raise MaiError(f"{where}: messages has no assistant turn, so there is nothing to learn from it")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def read_jsonl(path: Path) -> list[list[dict[str, str]]]:
    """Conversations from a JSONL file of {"messages": [...]} lines; blank lines are skipped."""
    if not path.is_file():
        raise MaiError(f"sft.data: {path} does not exist", parameter="sft.data")
    conversations = []
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, 1):
            where = f"{path} line {number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise MaiError(f"{where}: not UTF-8 text ({e.reason})") from None
            if line.strip():
                conversations.append(parse_line(line, where))
    if not conversations:
        raise MaiError(f"sft.data: {path} holds no conversations", parameter="sft.data")
    return conversations


def parse_line(line: str, where: str) -> list[dict[str, str]]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise MaiError(f"{where}: not JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(record, dict) or "messages" not in record:
        raise MaiError(f'{where}: expected an object with a "messages" field')
    return check_messages(record["messages"], where)


def synth_conversations(run: RunDir) -> list[list[dict[str, str]]]:
    """The prompts `mai synth` sent and the teacher's kept replies."""
    path = run.synth_dir / "samples.jsonl"
    if not path.is_file():
        raise MaiError(
            f"sft.data 'synth': {path} does not exist; run `mai synth {run.path}` first", parameter="sft.data"
        )
    records = [SynthRecord.model_validate_json(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return [[*r.messages, {"role": "assistant", "content": r.response}] for r in records]


def shakespeare_dialogues() -> list[list[dict[str, str]]]:
    """Exchanges between two speakers of the plays, as conversations: the second speaker is the
    assistant (named in the system prompt), up to TURNS speeches, ending with the assistant's.
    A stage direction or a third speaker ends an exchange."""
    conversations = []
    for play, text in shakespeare():
        title = play.replace("_", " ").title()
        scenes = re.split(r"\n\s*\[[^\]]*\]\s*\n|\n(?:ACT|SCENE) [^\n]*\n", text)
        for scene in scenes:
            speeches = [(name.title(), " ".join(lines.split())) for name, lines in SPEECH.findall(scene)]
            conversations += dialogues(speeches, title)
    return conversations


def dialogues(speeches: list[tuple[str, str]], title: str) -> list[list[dict[str, str]]]:
    """Consecutive, non-overlapping exchanges between two speakers in one scene's speeches."""
    out, i = [], 0
    while i + 1 < len(speeches):
        user, assistant = speeches[i][0], speeches[i + 1][0]
        turns = [speeches[i]]
        for name, words in speeches[i + 1 : i + TURNS]:
            if name != (assistant if len(turns) % 2 else user) or len(words) > LONGEST_SPEECH:
                break
            turns.append((name, words))
        turns = turns[: len(turns) // 2 * 2]  # ends with the assistant's speech
        if user != assistant and turns and len(turns[0][1]) <= LONGEST_SPEECH:
            system = {"role": "system", "content": f"You are {assistant} in {title}."}
            roles = ["user", "assistant"] * TURNS
            out.append([system, *({"role": r, "content": w} for r, (_, w) in zip(roles, turns, strict=False))])
            i += len(turns)
        else:
            i += 1
    return out


def read_sources(sources: list[str], run: RunDir) -> list[list[dict[str, str]]]:
    """Every conversation of sft.data, source by source; `run` is the run whose synth samples 'synth' names."""
    if not sources:
        raise MaiError(
            f"set sft.data: conversation JSONL files, 'synth' or '{SHAKESPEARE_DIALOGUES}'", parameter="sft.data"
        )
    conversations = []
    for source in sources:
        if source == "synth":
            conversations += synth_conversations(run)
        elif source == SHAKESPEARE_DIALOGUES:
            conversations += shakespeare_dialogues()
        else:
            conversations += read_jsonl(Path(source))
    return conversations


def write_conversations(conversations: list, held_out: int, seed: int, folder: Path) -> tuple[int, int]:
    """folder/train.jsonl and folder/held_out.jsonl (held out at random with the seed); the two counts."""
    if len(conversations) <= 2 * held_out:
        raise MaiError(
            f"sft.data has {len(conversations)} conversations; holding out sft.held_out = {held_out} needs more "
            "than twice that: add conversations or lower sft.held_out",
            parameter="sft.held_out",
        )
    order = np.random.default_rng(seed).permutation(len(conversations))
    splits = {"held_out": order[:held_out], "train": order[held_out:]}
    folder.mkdir(parents=True, exist_ok=True)
    for name, indices in splits.items():
        lines = "".join(json.dumps({"messages": conversations[i]}, ensure_ascii=False) + "\n" for i in indices)
        atomic_write_text(folder / f"{name}.jsonl", lines)
    return len(splits["train"]), len(splits["held_out"])
