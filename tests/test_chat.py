"""`mai chat` in a real pseudo-terminal, as a person types into it: answers stream, Ctrl-C stops one
and the REPL goes on, old turns are dropped with a notice when the context fills, the commands
work, Ctrl-D quits."""

import json

import pexpect

from conftest import MAI
from mai.tokenizer import Tokenizer

PROMPT = "you> "


def a_message_that_fits_alone_but_not_after(first: str, tokenizer: Tokenizer, room: int, context: int) -> str:
    """A long message that leaves `room` tokens of the context alone, and not after the first exchange."""
    phrase = "O Romeo, Romeo, wherefore art thou Romeo? "
    n = 1
    while len(tokenizer.encode_chat([{"role": "user", "content": phrase * (n + 1)}])) + room <= context:
        n += 1
    message = phrase * n
    after = [
        {"role": "user", "content": first},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": message},
    ]
    assert len(tokenizer.encode_chat(after)) + room > context
    return message


def test_mai_chat_streams_stops_on_ctrl_c_trims_history_and_quits_on_ctrl_d(trained_run, tmp_path):
    first = "Speak again, bright angel."
    long_message = a_message_that_fits_alone_but_not_after(first, Tokenizer.load(trained_run.tokenizer_path), 64, 256)
    # The 30-step base model never ends a turn by itself: each answer runs until Ctrl-C or --max-tokens.
    child = pexpect.spawn(
        MAI,
        ["chat", str(trained_run.path), "--temperature", "0", "--max-tokens", "200"],
        encoding="utf-8",
        timeout=90,
        dimensions=(50, 400),
    )
    child.expect("context 256 tokens")
    child.expect(PROMPT)

    child.sendline(first)
    child.expect("assistant> ")
    child.expect(r"\S")  # the first piece of the answer, while the rest is still being decoded
    child.sendintr()
    child.expect(r"\[stopped\]")
    child.expect(PROMPT)

    child.sendline(long_message)  # with the first exchange, it leaves no room for an answer: that goes
    child.expect(r"\[dropped the 2 oldest turns to fit the model's 256-token context\]")
    child.expect(PROMPT)

    child.sendline("Deny thy father " * 100)  # alone beyond the context: refused, the conversation kept
    child.expect(r"\[this message makes the conversation \d+ tokens, and the model's context is 256")
    child.expect(PROMPT)

    child.sendline("/temp warm")
    child.expect(r"\[/temp takes a number from 0 \(greedy\) up, not 'warm'\]")
    child.sendline("/temp 0.5")
    child.expect(r"\[temperature 0.5\]")
    child.sendline("/system You are Juliet.")
    child.expect(r"\[system prompt set\]")
    saved = tmp_path / "chat.jsonl"
    child.sendline(f"/save {saved}")
    child.expect(r"\[appended 3 messages to ")
    child.expect(PROMPT)
    messages = json.loads(saved.read_text())["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant"]
    assert messages[0]["content"] == "You are Juliet." and messages[1]["content"] == long_message.strip()

    child.sendline("/reset")
    child.expect(r"\[conversation forgotten\]")
    child.sendline("/help")
    child.expect("Ctrl-D quits")
    child.expect(PROMPT)
    child.sendintr()  # at the prompt: a fresh prompt, not an exit
    child.expect(PROMPT)
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
