"""Decoding a completion as it streams costs the same per token however long it grows: a 2,000-token
completion is decoded once, at its end, never again for every new token as it was (O(n²)), in
`mai generate`, in scoring's completions and in the serving engine."""

import threading

from mai.config import load_config
from mai.eval.scoring import Scorer
from mai.generate import completion_pieces
from mai.loading import load_tokenizer
from mai.model.transformer import build_model
from mai.serve.engine import Engine, SamplingParams, Sequence
from mai.tokenizer import Tokenizer

LENGTH = 2000


class CountingTokenizer(Tokenizer):
    """The run's real tokenizer, counting the token ids it is asked to decode in full."""

    decoded = 0

    def decode(self, ids, skip_special_tokens=False):
        self.decoded += len(ids)
        return super().decode(ids, skip_special_tokens)


def long_context_model(vocab_size: int):
    overrides = ["model.d_model=64", "model.n_layers=1", "model.n_heads=2", f"model.max_seq_len={LENGTH + 64}"]
    return build_model(load_config("tiny", [*overrides, f"model.vocab_size={vocab_size}"]).model, seed=0).eval()


def test_a_2000_token_completion_is_decoded_in_linear_time(prepared_run):
    real = load_tokenizer(prepared_run)
    tokenizer = CountingTokenizer(real.backend, real.bos_token, real.eos_token, real.chat_template)
    tokenizer.eos_token = None  # nothing stops the completion before LENGTH tokens
    model = long_context_model(tokenizer.vocab_size)

    pieces = list(completion_pieces(model, tokenizer, "ROMEO:", LENGTH, 1.0, 0, 1.0, seed=0))
    text = "".join(pieces)
    assert len(pieces) > LENGTH / 2 and tokenizer.decoded <= LENGTH  # one full decode, at the end

    assert len(text) >= LENGTH / 2

    tokenizer.decoded = 0  # scoring's greedy completions, checked for a stop string after every token
    completion = Scorer(model, tokenizer).generate("ROMEO:", ("never said",), LENGTH)  # half the context: 1,032
    assert tokenizer.decoded <= LENGTH and len(completion) >= 1000


def test_a_2000_token_stream_from_the_engine_is_decoded_in_linear_time(prepared_run):
    real = load_tokenizer(prepared_run)
    tokenizer = CountingTokenizer(real.backend, real.bos_token, None, real.chat_template)
    tokenizer.eos_token = None
    model = long_context_model(tokenizer.vocab_size)
    engine = Engine(model, tokenizer, max_batch=1, max_context=LENGTH + 64, max_waiting=1).start()
    outputs, done = [], threading.Event()

    def emit(out):
        outputs.append(out)
        if out.finish_reason:
            done.set()

    params = SamplingParams(max_tokens=LENGTH, temperature=1.0, seed=0, stop=("never said",))
    try:
        engine.submit([Sequence(tokenizer.encode("ROMEO:"), params, emit)])
        assert done.wait(120)
    finally:
        engine.stop()
    tokens = [t for out in outputs for t in out.token_ids]
    assert len(tokens) == LENGTH and outputs[-1].finish_reason == "length"
    assert tokenizer.decoded <= LENGTH  # the last flush; the stream and its stop-string checks decode nothing
    assert "".join(out.text for out in outputs) == real.decode(tokens, skip_special_tokens=True)
