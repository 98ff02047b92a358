"""Byte-level BPE with Hugging Face `tokenizers`: training, special tokens, chat template.

Every string is encoded through its UTF-8 bytes, so encode→decode is lossless for any Unicode
text. The document-boundary token `<|endoftext|>` is prepended by the tokenizer's own
post-processor, so transformers' PreTrainedTokenizerFast adds it exactly as we do. Chat turns use
ChatML (`<|im_start|>role\\n...<|im_end|>`).
"""

import functools
import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, decoders, models, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as HFTokenizer
from tokenizers.decoders import DecodeStream

from mai.errors import MaiError

BOS = "<|endoftext|>"
IM_START, IM_END, PAD = "<|im_start|>", "<|im_end|>", "<|pad|>"
SPECIAL_TOKENS = [BOS, IM_START, IM_END, PAD]

# GPT-4's split pattern: contractions, letter runs, numbers in groups of up to three digits,
# punctuation runs, and whitespace, so merges never cross these boundaries.
SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
)

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class Tokenizer:
    """A thin wrapper over a `tokenizers.Tokenizer` that knows the project's special tokens."""

    def __init__(
        self,
        backend: HFTokenizer,
        bos_token: str | None = BOS,
        eos_token: str | None = None,
        chat_template: str = CHAT_TEMPLATE,
    ):
        self.backend = backend
        self.bos_token = bos_token
        self.eos_token = eos_token or bos_token
        self.chat_template = chat_template

    @classmethod
    def load(cls, path: Path) -> "Tokenizer":
        """Read tokenizer.json and, when present, the BOS/EOS choice in tokenizer_config.json beside it."""
        try:
            backend = HFTokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises bare Exceptions on malformed JSON
            raise MaiError(f"{path} is not a valid tokenizer.json ({e}); retrain or restore it") from None
        config_path = path.with_name("tokenizer_config.json")
        if not config_path.is_file():
            return cls(backend)
        config = json.loads(config_path.read_text())
        return cls(
            backend,
            _token_text(config.get("bos_token")),
            _token_text(config.get("eos_token")),
            config.get("chat_template") or CHAT_TEMPLATE,
        )

    def hf_config(self) -> dict:
        """tokenizer_config.json for transformers' PreTrainedTokenizerFast (BOS comes from the post-processor)."""
        return {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "pad_token": PAD if self.backend.token_to_id(PAD) is not None else self.eos_token,
            "chat_template": self.chat_template,
            "clean_up_tokenization_spaces": False,
            "model_max_length": 1_000_000,
        }

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def bos_id(self) -> int | None:
        return self.backend.token_to_id(self.bos_token) if self.bos_token else None

    @property
    def eos_id(self) -> int | None:
        return self.backend.token_to_id(self.eos_token) if self.eos_token else None

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_batch(self, texts: list[str], add_special_tokens: bool = True) -> list[list[int]]:
        return [e.ids for e in self.backend.encode_batch(texts, add_special_tokens=add_special_tokens)]

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return self.backend.decode(ids, skip_special_tokens=skip_special_tokens)

    def render_chat(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """Conversation turns ({"role", "content"}) as the text the model reads, through the chat template
        (ours, ChatML, or an imported model's own), ending with the assistant's turn opened when asked."""
        import jinja2  # here: only chat needs it

        template = jinja2.Environment().from_string(self.chat_template)
        return template.render(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token or "",
            eos_token=self.eos_token or "",
        )

    def text_stream(self) -> "TextStream":
        """A decoder for token ids that arrive one at a time (special tokens left out)."""
        return TextStream(self.backend)

    def token_bytes(self) -> list[int]:
        """UTF-8 bytes each token stands for; 0 for special tokens (they carry no text)."""
        return [len(b) for b in self.token_byte_strings]

    @functools.cached_property
    def token_byte_strings(self) -> list[bytes]:
        """The bytes each token stands for (b"" for special tokens), as OpenAI's logprobs report them.

        A byte-level token's string has one character per byte, even when it holds part of a
        multi-byte character (which would decode on its own to U+FFFD).
        """
        special = {t.content for t in self.backend.get_added_tokens_decoder().values() if t.special}
        byte_of = byte_level_alphabet()
        strings = []
        for i in range(self.vocab_size):
            token = self.backend.id_to_token(i)
            if token is None or token in special:
                strings.append(b"")
            elif set(token) <= byte_of.keys():
                strings.append(bytes(byte_of[c] for c in token))
            else:
                strings.append(self.decode([i]).encode())
        return strings

    def bytes_per_token(self, texts: Iterable[str]) -> float:
        texts = list(texts)
        tokens = sum(len(ids) for ids in self.encode_batch(texts, add_special_tokens=False))
        return sum(len(t.encode()) for t in texts) / max(tokens, 1)


class TextStream:
    """The text of a growing completion, one piece per token, at a cost per token that does not grow with it.

    tokenizers' DecodeStream decodes only the last few tokens each step, where decoding the whole
    completion again would cost O(n) per token. A step that ends inside a multi-byte character gives
    "" and the character comes whole with a later token; the pieces joined are the full decode,
    less an unfinished character at the end.
    """

    def __init__(self, backend: HFTokenizer):
        self.backend = backend
        self.stream = DecodeStream(skip_special_tokens=True)

    def step(self, token_id: int) -> str:
        return self.stream.step(self.backend, token_id) or ""


def byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-level alphabet, reversed: the character standing for each byte → the byte.

    Printable Latin-1 bytes stand for themselves; the others, in order, for U+0100 onwards.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = iter(range(256, 512))
    return {(chr(b) if b in printable else chr(next(others))): b for b in range(256)}


def check_vocab_size(vocab_size: int) -> None:
    """Byte-level BPE starts from every byte and the special tokens: a smaller vocabulary cannot exist."""
    smallest = 256 + len(SPECIAL_TOKENS)
    if vocab_size < smallest:
        raise MaiError(
            f"model.vocab_size {vocab_size} is too small for a byte-level BPE tokenizer: it needs at least "
            f"{smallest} (256 bytes and {len(SPECIAL_TOKENS)} special tokens)",
            parameter="model.vocab_size",
        )


def train_tokenizer(texts: Iterable[str], vocab_size: int, whole_corpus: bool = False) -> Tokenizer:
    """Train byte-level BPE to exactly `vocab_size` tokens (special tokens included).

    `whole_corpus`: the texts are all the data there is, so a larger sample cannot help.
    """
    check_vocab_size(vocab_size)
    backend = HFTokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer)
    if backend.get_vocab_size() < vocab_size:
        remedy = (
            "add data or lower model.vocab_size"
            if whole_corpus
            else "lower model.vocab_size or raise tokenizer.sample_mb"
        )
        raise MaiError(
            f"the tokenizer sample{' (all the data)' if whole_corpus else ''} only supports "
            f"{backend.get_vocab_size()} tokens, fewer than model.vocab_size {vocab_size}; {remedy}"
        )
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, backend.token_to_id(BOS))]
    )
    return Tokenizer(backend)


def _token_text(token) -> str | None:
    """tokenizer_config.json stores a token as a string or as {"content": ...}."""
    return token.get("content") if isinstance(token, dict) else token
