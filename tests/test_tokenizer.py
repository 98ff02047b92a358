import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mai.data.corpus import shakespeare
from mai.errors import MaiError
from mai.loading import save_tokenizer
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
    assert chat == f"{BOS}{IM_START}user\nhi{IM_END}\n{IM_START}assistant\n"
    assert reloaded.chat_template == CHAT_TEMPLATE


def test_mai_tokenizer_train_retrains_only_an_untrained_run(prepared_run, trained_run, tmp_path):
    from conftest import copy_run, run_mai

    run = copy_run(prepared_run, tmp_path / "prepared")
    result = run_mai("tokenizer", "train", str(run.path))
    assert result.stdout.startswith(f"{run.tokenizer_path}: 4096 tokens, ") and "bytes/token" in result.stdout

    run = copy_run(trained_run, tmp_path / "trained")
    before = run.tokenizer_path.read_bytes()
    result = run_mai("tokenizer", "train", str(run.path), check=False)
    assert result.returncode == 2 and "step_0000030" in result.stderr and "new run directory" in result.stderr
    assert run.tokenizer_path.read_bytes() == before


def test_a_vocabulary_smaller_than_the_bytes_is_refused_before_the_pipeline(tmp_path):
    from conftest import run_mai

    run = tmp_path / "run"
    run_mai("init", str(run), "--set", "model.vocab_size=259")
    result = run_mai("data", "prepare", str(run), check=False)
    assert result.returncode == 2 and "it needs at least 260 (256 bytes and 4 special tokens)" in result.stderr
    assert not (run / "data").exists()
    with pytest.raises(MaiError, match="model.vocab_size 2 is too small"):
        train_tokenizer(["some text"], 2)
