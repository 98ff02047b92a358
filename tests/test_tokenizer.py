import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mai.data.corpus import shakespeare
from mai.run import save_tokenizer
from mai.tokenizer import BOS, CHAT_TEMPLATE, IM_END, IM_START, Tokenizer, train_tokenizer

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def plays():
    docs = [text for _, text in shakespeare()]
    return docs[:6], docs[6:8]


@pytest.fixture(scope="module")
def tokenizer(plays):
    return train_tokenizer(plays[0], 1024)


@given(st.text(max_size=300))
@settings(max_examples=300, deadline=None)
def test_encode_decode_is_lossless_for_any_unicode(tokenizer, text):
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text
    ids = tokenizer.encode(text)
    assert ids[0] == tokenizer.bos_id
    assert tokenizer.decode(ids[1:]) == text


def test_trained_to_exact_vocab_with_special_tokens(tokenizer):
    assert tokenizer.vocab_size == 1024
    for token in (BOS, IM_START, IM_END):
        assert tokenizer.backend.token_to_id(token) is not None
    assert (
        tokenizer.decode(tokenizer.encode(f"{IM_START}user\nhi{IM_END}", add_special_tokens=False))
        == f"{IM_START}user\nhi{IM_END}"
    )


def test_compresses_held_out_text(tokenizer, plays):
    assert tokenizer.bytes_per_token(plays[1]) > 2.0  # raw bytes would be 1.0


def test_token_bytes_sum_to_text_bytes(tokenizer, plays):
    sizes = tokenizer.token_bytes()
    for text in (plays[1][0][:5000], "日本語のテキスト — naïve café 🎉"):
        assert sum(sizes[i] for i in tokenizer.encode(text)) == len(text.encode())


def test_transformers_loads_it_with_the_same_ids_and_bos(tokenizer, tmp_path):
    save_tokenizer(tokenizer, tmp_path)
    reloaded = Tokenizer.load(tmp_path / "tokenizer.json")
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    for text in ["ROMEO: But soft!", "héllo wörld 日本 🎉", ""]:
        assert hf(text).input_ids == tokenizer.encode(text) == reloaded.encode(text)
        assert hf.decode(tokenizer.encode(text), skip_special_tokens=True) == text
    assert hf.bos_token == BOS
    chat = hf.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert chat == f"{IM_START}user\nhi{IM_END}\n{IM_START}assistant\n"
    assert reloaded.chat_template == CHAT_TEMPLATE
