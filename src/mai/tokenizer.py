"""Byte-level BPE with Hugging Face `tokenizers`: training, special tokens, chat template.

Every string is encoded through its UTF-8 bytes, so encode→decode is lossless for any Unicode
text. The document-boundary token `<|endoftext|>` is prepended by the tokenizer's own
post-processor, so transformers' PreTrainedTokenizerFast adds it exactly as we do.

Conversations are rendered here and nowhere else: for generation (`encode_chat`, which `mai serve`
and `mai chat` use) and for training (`render_for_training`, which `mai sft` uses), through one
chat template: ours is ChatML (`<|im_start|>role\\n...<|im_end|>\\n`) after the document token, an
imported model keeps its own. The training mask is found from the template itself, by rendering
the conversation turn by turn, so it needs no `{% generation %}` markers in the template.
"""

import functools
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors, trainers
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
# Llama 3's spelling of the same split, as its tokenizer.json (and llama.cpp's "llama-bpe") has it.
LLAMA3_SPLIT_PATTERN = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# The template runs and GGUF exports made before it wrote the document token itself hold: read as
# CHAT_TEMPLATE, their chat prompts keep the <|endoftext|> that encode() used to prepend.
CHAT_TEMPLATE_BEFORE_BOS = CHAT_TEMPLATE.removeprefix("{{ bos_token }}")


class Tokenizer:
    """A thin wrapper over a `tokenizers.Tokenizer` that knows the project's special tokens."""

    def __init__(
        self,
        backend: HFTokenizer,
        bos_token: str | None = BOS,
        eos_token: str | None = None,
        chat_template: str | None = CHAT_TEMPLATE,
    ):
        self.backend = backend
        self.bos_token = bos_token
        self.eos_token = eos_token or bos_token
        self.chat_template = _current_template(chat_template)

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
            config.get("chat_template"),
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

    @property
    def end_of_turn_ids(self) -> tuple[int, ...]:
        """The tokens that end an assistant's turn (ChatML's <|im_end|>, the end-of-sequence token):
        a chat answer stops at the first of them."""
        ids = (self.backend.token_to_id(IM_END), self.eos_id)
        return tuple(dict.fromkeys(i for i in ids if i is not None))

    def render_chat(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """Conversation turns ({"role", "content"}) as the text the model reads, through the chat template
        (ours, ChatML, or an imported model's own), ending with the assistant's turn opened when asked."""
        return self._template.render(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token or "",
            eos_token=self.eos_token or "",
        )

    def encode_chat(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> list[int]:
        """The ids of a rendered conversation, as transformers' `apply_chat_template(tokenize=True)` gives
        them: the template writes any document token itself."""
        return self.encode(self.render_chat(messages, add_generation_prompt), add_special_tokens=False)

    def render_for_training(self, messages: list[dict[str, str]]) -> tuple[list[int], list[bool]]:
        """The ids of a whole conversation and, for each, whether it is the assistant's to write: the
        content and end-of-turn token of every assistant turn (not the role header before it, nor the
        template's newline after it).

        Each assistant turn's text is found by rendering the conversation up to it with the turn
        opened, then with the turn written: what the second adds to the first. A template that does
        not render a conversation as its turns one after another, or that never ends an assistant
        turn with an end-of-turn token, is an error: the mask would be wrong, or teach no stopping.
        """
        text = self.render_chat(messages, add_generation_prompt=False)
        spans = [self._assistant_span(messages, i, text) for i, m in enumerate(messages) if m["role"] == "assistant"]
        encoding = self.backend.encode(text, add_special_tokens=False)
        mask = [any(start < end and begin < stop for begin, end in spans) for start, stop in encoding.offsets]
        return encoding.ids, mask

    def _assistant_span(self, messages: list[dict[str, str]], i: int, text: str) -> tuple[int, int]:
        """Where messages[i], an assistant turn, lies in `text` (the whole rendering), in characters."""
        opened = self.render_chat(messages[:i], add_generation_prompt=True)
        written = self.render_chat(messages[: i + 1], add_generation_prompt=False)
        if not (written.startswith(opened) and text.startswith(written)):
            raise MaiError(
                "this chat template does not render a conversation as its turns one after another "
                f"(messages[{i}] changes what comes before it), so the assistant's tokens cannot be found"
            )
        if written == opened:  # the one way a turn's mask could be all zeros: each span holds its end-of-turn token
            raise MaiError(
                f"this chat template renders nothing for messages[{i}], an assistant turn: no tokens to learn"
            )
        markers = [self.backend.id_to_token(t) for t in self.end_of_turn_ids]
        ends = [written.rfind(m) + len(m) for m in markers if written.rfind(m) >= len(opened)]
        if not ends:
            raise MaiError(
                f"this chat template ends an assistant turn with none of the end-of-turn tokens "
                f"({', '.join(markers)}), so a model trained on it would never learn to stop"
            )
        return len(opened), max(ends)

    @functools.cached_property
    def _template(self):
        """The chat template compiled as transformers compiles it (sandboxed, trim_blocks, lstrip_blocks,
        loop controls), so an imported model's template renders here exactly as there."""
        from jinja2.sandbox import ImmutableSandboxedEnvironment  # here: only chat needs jinja2

        environment = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
        )
        environment.globals["raise_exception"] = _template_error
        return environment.from_string(self.chat_template)

    def gguf_vocab(self) -> "GgufVocab":
        """The vocabulary as llama.cpp's GGUF metadata holds it (tokenizer.ggml.*), for `mai export gguf`."""
        spec = json.loads(self.backend.to_str())
        if spec.get("normalizer") is not None:
            raise MaiError("this tokenizer normalizes text before splitting it, which llama.cpp's BPE does not do")
        pre = llama_cpp_pre_tokenizer(spec["pre_tokenizer"], spec["model"].get("ignore_merges", False))
        added = {t.content: t for t in self.backend.get_added_tokens_decoder().values()}
        tokens, types = [], []
        for i in range(self.vocab_size):
            token = self.backend.id_to_token(i)
            tokens.append(token if token is not None else f"[PAD{i}]")
            if token is None:
                types.append(TOKEN_UNUSED)
            elif token in added:
                types.append(TOKEN_CONTROL if added[token].special else TOKEN_USER_DEFINED)
            else:
                types.append(TOKEN_NORMAL)
        merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
        probe = self.encode("a")
        add_bos = self.bos_id is not None and probe[0] == self.bos_id and probe != self.encode("a", False)
        pad = self.backend.token_to_id(PAD)
        return GgufVocab(pre, tokens, types, merges, add_bos, self.bos_id, self.eos_id, pad, self.chat_template)

    @classmethod
    def from_gguf_vocab(cls, vocab: "GgufVocab") -> "Tokenizer":
        """The tokenizer a GGUF file's metadata describes, splitting text as llama.cpp does for its `pre` name."""
        if vocab.pre not in LLAMA_CPP_PRE_TOKENIZERS:
            raise MaiError(
                f"the GGUF tokenizer's pre-tokenizer {vocab.pre!r} is not one mai reads "
                f"({', '.join(LLAMA_CPP_PRE_TOKENIZERS)}); import the model from its transformers checkpoint instead"
            )
        make_pre_tokenizer, ignore_merges = LLAMA_CPP_PRE_TOKENIZERS[vocab.pre]
        ids = {token: i for i, token in enumerate(vocab.tokens)}
        merges = [tuple(m.split(" ", 1)) for m in vocab.merges]
        backend = HFTokenizer(models.BPE(ids, merges, ignore_merges=ignore_merges))
        backend.pre_tokenizer = make_pre_tokenizer()
        backend.decoder = decoders.ByteLevel()
        backend.add_tokens(
            [
                AddedToken(t, special=False, normalized=False)
                for t, k in zip(vocab.tokens, vocab.types, strict=True)
                if k == TOKEN_USER_DEFINED
            ]
        )
        backend.add_special_tokens(
            [AddedToken(t, special=True) for t, k in zip(vocab.tokens, vocab.types, strict=True) if k == TOKEN_CONTROL]
        )
        name = functools.partial(_token_name, vocab.tokens)
        bos, eos = name(vocab.bos_id), name(vocab.eos_id)
        if vocab.add_bos and bos is not None:
            backend.post_processor = processors.TemplateProcessing(
                single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, vocab.bos_id)]
            )
        return cls(backend, bos, eos, vocab.chat_template)

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


def _current_template(template: str | None) -> str:
    """A stored chat template as the tokenizer uses it: ours when there is none or it is our old one."""
    return CHAT_TEMPLATE if template in (None, "", CHAT_TEMPLATE_BEFORE_BOS) else template


def _template_error(message: str):
    raise MaiError(f"the chat template refuses this conversation: {message}")


def _token_text(token) -> str | None:
    """tokenizer_config.json stores a token as a string or as {"content": ...}."""
    return token.get("content") if isinstance(token, dict) else token


# llama.cpp's token types (llama_token_type), as GGUF's tokenizer.ggml.token_type lists them.
TOKEN_NORMAL, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED = 1, 3, 4, 5


@dataclass
class GgufVocab:
    """A byte-level BPE vocabulary as GGUF stores it: llama.cpp's pre-tokenizer name, the tokens in id
    order (byte-level strings), their types, the merges ("a b"), whether BOS is prepended, and the
    special ids."""

    pre: str
    tokens: list[str]
    types: list[int]
    merges: list[str]
    add_bos: bool
    bos_id: int | None
    eos_id: int | None
    pad_id: int | None
    chat_template: str | None = None


def _split_then_bytes(pattern: str) -> Callable[[], pre_tokenizers.PreTokenizer]:
    return lambda: pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


# The pre-tokenizations llama.cpp knows by name (tokenizer.ggml.pre) that mai writes and reads:
# name → (the `tokenizers` pre-tokenizer splitting text the same way, whether whole words found in
# the vocabulary skip the merges). llama.cpp has no name for a split it does not implement, so a
# tokenizer must match one of these exactly. "dbrx" splits as GPT-4 and Llama 3 do, with merges
# always applied, as our own tokenizers (and transformers' BPE by default) apply them.
LLAMA_CPP_PRE_TOKENIZERS: dict[str, tuple[Callable[[], pre_tokenizers.PreTokenizer], bool]] = {
    "dbrx": (_split_then_bytes(SPLIT_PATTERN), False),
    "llama-bpe": (_split_then_bytes(LLAMA3_SPLIT_PATTERN), True),
    "gpt-2": (lambda: pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True), False),
    "smollm": (
        lambda: pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
        ),
        False,
    ),
}


def llama_cpp_pre_tokenizer(pre_tokenizer: dict | None, ignore_merges: bool) -> str:
    """llama.cpp's name for a tokenizer.json's pre-tokenizer (and BPE ignore_merges), or an error saying why none fits."""
    wanted = _without_offsets(pre_tokenizer)
    for name, (make, ignores) in LLAMA_CPP_PRE_TOKENIZERS.items():
        if ignores == ignore_merges and _without_offsets(_pre_tokenizer_spec(make())) == wanted:
            return name
    raise MaiError(
        f"llama.cpp has no pre-tokenizer that splits text as this tokenizer does ({json.dumps(pre_tokenizer)[:200]}); "
        f"mai exports tokenizers that split as {', '.join(LLAMA_CPP_PRE_TOKENIZERS)} do"
    )


def _pre_tokenizer_spec(pre_tokenizer: pre_tokenizers.PreTokenizer) -> dict:
    backend = HFTokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizer
    return json.loads(backend.to_str())["pre_tokenizer"]


def _without_offsets(spec):
    """A pre-tokenizer spec without trim_offsets, which changes offsets but never ids."""
    if isinstance(spec, dict):
        return {k: _without_offsets(v) for k, v in spec.items() if k != "trim_offsets"}
    if isinstance(spec, list):
        return [_without_offsets(v) for v in spec]
    return spec


def _token_name(tokens: list[str], token_id: int | None) -> str | None:
    return tokens[token_id] if token_id is not None and 0 <= token_id < len(tokens) else None
