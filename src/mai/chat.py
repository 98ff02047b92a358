"""`mai chat`: a conversation with a model in the terminal.

The conversation is rendered by the model's own chat template (Tokenizer.encode_chat) each turn,
and the answer streams as it is decoded, up to an end-of-turn token. When the conversation and the
room kept for the answer no longer fit the model's context, the oldest exchanges are dropped (the
system prompt stays) and a notice says so. Ctrl-C stops an answer and keeps what was written of it;
Ctrl-D (or /quit) leaves.
"""

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from mai.errors import MaiError
from mai.generate import decoded_pieces
from mai.tokenizer import Tokenizer

HELP = (
    "/reset forgets the conversation · /system TEXT sets the system prompt · /temp X sets the temperature · "
    "/save FILE appends the conversation to FILE as a JSONL line (sft.data's format) · Ctrl-C stops an answer · "
    "Ctrl-D quits"
)


@dataclass
class Chat:
    """One conversation with a model: its settings and its turns (the system prompt apart)."""

    model: object
    tokenizer: Tokenizer
    max_tokens: int
    temperature: float
    top_k: int
    seed: int | None = None
    system: str = ""
    turns: list[dict[str, str]] = field(default_factory=list)

    def messages(self, turns: list[dict[str, str]] | None = None) -> list[dict[str, str]]:
        """The system prompt, if any, then `turns` (default: the conversation's)."""
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + (self.turns if turns is None else turns)

    def prompt_ids(self) -> tuple[list[int], int]:
        """The conversation's ids with the assistant's turn opened, after dropping the oldest exchanges
        until they leave room for an answer: max_tokens, or a quarter of the context if less (a small
        model's context would otherwise hold no history); (ids, turns dropped). A last message that
        does not fit even alone is taken back, and the conversation kept as it was."""
        context = self.model.config.max_seq_len
        room = min(self.max_tokens, context // 4)
        turns = list(self.turns)
        while True:
            ids = self.tokenizer.encode_chat(self.messages(turns))
            if len(ids) + room <= context or len(turns) <= 1:
                break
            turns.pop(0)
            while turns[0]["role"] != "user":  # a conversation goes on from one of the user's turns
                turns.pop(0)
        if len(ids) >= context:
            self.turns.pop()
            raise MaiError(
                f"this message makes the conversation {len(ids)} tokens, and the model's context is {context}: "
                "shorten it"
            )
        dropped = len(self.turns) - len(turns)
        self.turns[:] = turns
        return ids, dropped

    def answer(self, text: str, write) -> None:
        """Add the user's message, stream the answer through write(piece), and keep it (whole or stopped)."""
        self.turns.append({"role": "user", "content": text})
        ids, dropped = self.prompt_ids()
        if dropped:
            write(
                f"[dropped the {dropped} oldest turns to fit the model's {self.model.config.max_seq_len}-token context]\n"
            )
        room = min(self.max_tokens, self.model.config.max_seq_len - len(ids))
        pieces = decoded_pieces(
            self.model,
            self.tokenizer,
            ids,
            room,
            self.temperature,
            self.top_k,
            1.0,
            self.seed,
            self.tokenizer.end_of_turn_ids,
        )
        reply = []
        try:
            for piece in pieces:
                reply.append(piece)
                write(piece)
        except KeyboardInterrupt:
            pieces.close()
            write(" [stopped]")
        write("\n")
        self.turns.append({"role": "assistant", "content": "".join(reply)})

    def command(self, line: str, write) -> None:
        """A /command: reset, system, temp, save, help."""
        name, _, argument = line[1:].partition(" ")
        argument = argument.strip()
        if name == "reset":
            self.turns.clear()
            write("[conversation forgotten]\n")
        elif name == "system":
            self.system = argument
            write(f"[system prompt {'set' if argument else 'removed'}]\n")
        elif name == "temp":
            try:
                value = float(argument)
            except ValueError:
                value = -1.0
            if not 0 <= value <= 100:
                write(f"[/temp takes a number from 0 (greedy) up, not {argument!r}]\n")
                return
            self.temperature = value
            write(f"[temperature {value:g}]\n")
        elif name == "save":
            if not argument:
                write("[/save takes a file name]\n")
                return
            with open(Path(argument).expanduser(), "a", encoding="utf-8") as f:
                f.write(json.dumps({"messages": self.messages()}, ensure_ascii=False) + "\n")
            write(f"[appended {len(self.messages())} messages to {argument}]\n")
        else:
            write(f"[{HELP}]\n")


def repl(chat: Chat, banner: str) -> None:
    """Read messages and commands from stdin until end of input, writing answers to stdout."""
    try:
        import readline  # noqa: F401 (line editing and history for input())
    except ImportError:
        pass

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    write(f"{banner}\n{HELP}\n")
    while True:
        try:
            line = input("you> ").strip()
        except KeyboardInterrupt:
            write("\n")
            continue
        except EOFError:
            write("\n")
            return
        if line in ("/quit", "/exit"):
            return
        if line.startswith("/"):
            chat.command(line, write)
        elif line:
            write("assistant> ")
            try:
                chat.answer(line, write)
            except MaiError as e:
                write(f"\n[{e}]\n")
