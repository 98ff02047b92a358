"""The one chat template: the training mask token by token (ours and SmolLM2's), its refusals, and
transformers' apply_chat_template on an export giving the ids mai renders."""

import pytest

from mai.errors import MaiError
from mai.tokenizer import BOS, IM_END, IM_START, Tokenizer

SYSTEM = {"role": "system", "content": "You are Juliet in Romeo And Juliet."}
CONVERSATION = [
    {"role": "user", "content": "Wilt thou be gone? It is not yet near day."},
    {"role": "assistant", "content": "It was the nightingale, and not the lark."},
    {"role": "user", "content": "Ay me!\n\n  Speak again."},
    {"role": "assistant", "content": "\nO, speak again, bright angel! 日本 🎉"},
]


@pytest.fixture(scope="module")
def tokenizer(prepared_run) -> Tokenizer:
    return Tokenizer.load(prepared_run.tokenizer_path)


@pytest.fixture(scope="module")
def smollm2_tokenizer() -> Tokenizer:
    from conftest import smollm2_dir
    from mai.loading import gguf_fields, gguf_reader, gguf_tokenizer

    path = next(smollm2_dir().glob("*.gguf"))
    return gguf_tokenizer(path, gguf_fields(gguf_reader(path)))


def expected_tokens(tokenizer: Tokenizer, pieces: list[tuple[str, bool]]) -> tuple[list[int], list[bool]]:
    """Ids and mask built piece by piece: each (text, is the assistant's) encoded on its own.
    Pieces meet at special tokens, which the tokenizer splits on first, so this is how it tokenizes
    the whole too."""
    ids, mask = [], []
    for text, learned in pieces:
        piece = tokenizer.encode(text, add_special_tokens=False)
        ids += piece
        mask += [learned] * len(piece)
    return ids, mask


def chatml_pieces(messages: list[dict], start: list[tuple[str, bool]], merges_newlines: bool) -> list[tuple[str, bool]]:
    """ChatML's pieces; merges_newlines: the tokenizer makes one token of the header's newline and the
    content's leading ones (ours does, SmolLM2's does not)."""
    pieces = list(start)
    for m in messages:
        learned = m["role"] == "assistant"
        pieces += [(IM_START, False), (f"{m['role']}\n", False)]
        if learned and m["content"].startswith("\n") and merges_newlines:
            # one token, part header and part content: counted as the assistant's
            pieces[-1] = (f"{m['role']}", False)
            pieces.append(("\n" + m["content"], True))
        else:
            pieces.append((m["content"], learned))
        pieces += [(IM_END, learned), ("\n", False)]
    return pieces


def test_the_mask_covers_exactly_the_assistant_tokens_of_a_conversation_with_a_system_prompt(tokenizer):
    messages = [SYSTEM, *CONVERSATION]
    ids, mask = tokenizer.render_for_training(messages)
    assert (ids, mask) == expected_tokens(tokenizer, chatml_pieces(messages, [(BOS, False)], merges_newlines=True))
    learned = tokenizer.decode([i for i, m in zip(ids, mask, strict=True) if m])
    # the second answer's leading newline shares a token with its header's: that token is the assistant's
    assert (
        learned == f"It was the nightingale, and not the lark.{IM_END}\n\nO, speak again, bright angel! 日本 🎉{IM_END}"
    )
    # training renders the same ids as generation does, turn by turn
    assert ids[: len(tokenizer.encode_chat(messages[:2]))] == tokenizer.encode_chat(messages[:2])


def test_the_mask_works_with_smollm2s_own_template_and_its_default_system_prompt(smollm2_tokenizer):
    tokenizer = smollm2_tokenizer
    assert "SmolLM" in tokenizer.chat_template  # its own template, from the GGUF file
    default_system = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    for messages, system in [(CONVERSATION, default_system), ([SYSTEM, *CONVERSATION], None)]:
        ids, mask = tokenizer.render_for_training(messages)
        head = (
            [] if system is None else [(IM_START, False), (f"system\n{system}", False), (IM_END, False), ("\n", False)]
        )
        assert (ids, mask) == expected_tokens(tokenizer, chatml_pieces(messages, head, merges_newlines=False))
        assert IM_END in tokenizer.decode([ids[i] for i in range(len(ids)) if mask[i]])


@pytest.mark.parametrize(
    ("template", "refusal"),
    [
        (  # renders only user turns: no assistant tokens at all
            "{% for m in messages %}{% if m['role'] != 'assistant' %}<|im_start|>{{ m['content'] }}<|im_end|>"
            "{% endif %}{% endfor %}",
            r"renders nothing for messages\[2\], an assistant turn",
        ),
        (  # never ends a turn: the model would not learn to stop
            "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}assistant: {% endif %}",
            "never learn to stop",
        ),
        (  # the last turn rendered differently from earlier ones: turns are not one after another
            "{% for m in messages %}{{ m['content'] }}{% if loop.last %}<|im_end|>{% else %}|{% endif %}{% endfor %}",
            "one after another",
        ),
    ],
)
def test_a_template_whose_mask_cannot_be_right_is_refused(tokenizer, template, refusal):
    broken = Tokenizer(tokenizer.backend, tokenizer.bos_token, tokenizer.eos_token, template)
    with pytest.raises(MaiError, match=refusal):
        broken.render_for_training([SYSTEM, *CONVERSATION])


def test_transformers_apply_chat_template_on_the_export_gives_our_ids(trained_run, tmp_path):
    from conftest import run_mai

    transformers = pytest.importorskip("transformers")
    run_mai("export", "hf", str(trained_run.path), str(tmp_path / "hf"))
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    ours = Tokenizer.load(trained_run.tokenizer_path)
    for messages in ([SYSTEM, *CONVERSATION], CONVERSATION, CONVERSATION[:1], [SYSTEM, *CONVERSATION[:3]]):
        for add_generation_prompt in (True, False):
            theirs = hf.apply_chat_template(
                messages, tokenize=True, add_generation_prompt=add_generation_prompt, return_dict=False
            )
            assert theirs == ours.encode_chat(messages, add_generation_prompt)
    ids, _ = ours.render_for_training([SYSTEM, *CONVERSATION])
    assert ids == ours.encode_chat([SYSTEM, *CONVERSATION], add_generation_prompt=False)


def test_a_run_saved_with_the_template_before_bos_still_starts_its_chats_with_it(prepared_run, tmp_path):
    import json
    import shutil

    from mai.tokenizer import CHAT_TEMPLATE, CHAT_TEMPLATE_BEFORE_BOS

    shutil.copy(prepared_run.tokenizer_path, tmp_path / "tokenizer.json")
    config = json.loads((prepared_run.path / "tokenizer_config.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config | {"chat_template": CHAT_TEMPLATE_BEFORE_BOS}))
    old = Tokenizer.load(tmp_path / "tokenizer.json")
    assert old.chat_template == CHAT_TEMPLATE and old.encode_chat(CONVERSATION[:1])[0] == old.bos_id
