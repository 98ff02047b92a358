"""`mai sft`'s conversations: bad lines are one-line errors naming file, line and field; the synth
samples and the plays' dialogues become well-formed conversations."""

import json

import pytest

from conftest import run_mai
from mai.data.conversations import read_jsonl, read_sources, shakespeare_dialogues
from mai.errors import MaiError
from mai.run import RunDir
from mai.run_files import SynthRecord

GOOD = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]})


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"{not json", "line 2: not JSON (Expecting property name enclosed in double quotes at column 2)"),
        (b'{"conversation": []}', 'line 2: expected an object with a "messages" field'),
        (b'{"messages": []}', "line 2: messages must be a non-empty list of {role, content} objects"),
        (b'{"messages": ["hi"]}', "line 2: messages[0] is not an object with role and content"),
        (b'{"messages": [{"role": "bot", "content": "hi"}]}', "line 2: messages[0].role is 'bot'; use one of system"),
        (b'{"messages": [{"role": "user", "content": 3}]}', "line 2: messages[0].content must be a string, got 3"),
        (b'{"messages": [{"role": "user", "content": "hi"}]}', "line 2: messages has no assistant turn"),
        (b'{"messages": "\xff"}', "line 2: not UTF-8 text"),
    ],
)
def test_a_bad_line_is_an_error_naming_file_line_and_field(tmp_path, line, message):
    path = tmp_path / "chats.jsonl"
    path.write_bytes(GOOD.encode() + b"\n" + line + b"\n\n")
    with pytest.raises(MaiError) as error:
        read_jsonl(path)
    assert str(error.value).startswith(f"{path} {message}") and "\n" not in str(error.value)


def test_mai_sft_refuses_bad_conversations_before_writing_anything(tmp_path):
    run = tmp_path / "run"
    run_mai("init", str(run))
    data = tmp_path / "chats.jsonl"
    data.write_text(GOOD + '\n{"messages": [{"role": "bot", "content": "hi"}]}\n')
    result = run_mai("sft", str(run), "--set", f'sft.data=["{data}"]', check=False)
    assert result.returncode == 2
    assert result.stderr == f"error: {data} line 2: messages[0].role is 'bot'; use one of system, user, assistant\n"
    result = run_mai("sft", str(run), "--set", "sft.data=[]", check=False)
    assert result.returncode == 2 and "set sft.data" in result.stderr
    result = run_mai("sft", str(run), check=False)  # the tiny preset's dialogues, but nothing to fine-tune yet
    assert result.returncode == 2 and "has no checkpoint; train it with `mai train" in result.stderr
    assert not RunDir(run).sft_dir.exists()


def test_synth_samples_are_the_prompts_with_the_teachers_replies(tmp_path):
    run = RunDir(tmp_path / "run")
    run.synth_dir.mkdir(parents=True)
    prompt = [{"role": "user", "content": "Can you explain gravity to me?"}]
    record = SynthRecord(
        id="a1",
        index=0,
        seed={"topic": "gravity"},
        messages=prompt,
        teacher="t",
        params={},
        response="It pulls.",
        finish_reason="stop",
        prompt_tokens=9,
        completion_tokens=3,
        cost=0.0,
        attempts=1,
        seconds=0.1,
        text="It pulls.",
    )
    (run.synth_dir / "samples.jsonl").write_text(record.model_dump_json() + "\n")
    assert read_sources(["synth"], run) == [[*prompt, {"role": "assistant", "content": "It pulls."}]]
    with pytest.raises(MaiError, match="run `mai synth"):
        read_sources(["synth"], RunDir(tmp_path / "other"))


def test_the_plays_give_thousands_of_two_speaker_exchanges_ending_with_the_assistant():
    conversations = shakespeare_dialogues()
    assert len(conversations) > 5000
    for messages in conversations:
        assert messages[0]["role"] == "system" and messages[0]["content"].startswith("You are ")
        roles = [m["role"] for m in messages[1:]]
        assert roles == ["user", "assistant"] * (len(roles) // 2) and roles
        assert all(m["content"] and "\n" not in m["content"] for m in messages)
