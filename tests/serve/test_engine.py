"""The batching engine in-process: rows join and leave mid-flight, outputs match decoding alone."""

import re
import threading

import pytest
import torch

from mai.loading import load_run_model
from mai.model.decode import generate, sample_next
from mai.serve.engine import Engine, QueueFull, SamplingParams, Sequence


@pytest.fixture(scope="module")
def loaded(trained_run):
    model, _, tokenizer = load_run_model(trained_run)
    return model, tokenizer


class Collector:
    """Emit callback gathering one sequence's tokens; `done` is set at its finish."""

    def __init__(self, engine=None):
        self.tokens, self.text, self.finish, self.done = [], "", None, threading.Event()
        self.outputs = []
        self.engine, self.batch_sizes, self.finishes = engine, [], []

    def __call__(self, out):
        self.outputs.append(out)
        self.tokens += out.token_ids
        self.text += out.text
        if self.engine is not None:
            self.batch_sizes.append(len(self.engine.running))
        if out.finish_reason:
            self.finish = out.finish_reason
            self.finishes.append(out.finish_reason)
            self.done.set()


def alone(model, ids, n):
    return [int(t[0]) for t in generate(model, torch.tensor([ids]), n, temperature=0)]


def decode_greedy(engine, tokenizer, prompts, lengths, collectors) -> None:
    """Submit each prompt as a greedy request of its own (then start the engine if it is not running), wait, stop."""
    try:
        for prompt, n, c in zip(prompts, lengths, collectors, strict=True):
            engine.submit([Sequence(tokenizer.encode(prompt), SamplingParams(max_tokens=n, temperature=0), c)])
        if not engine.thread.is_alive():
            engine.start()
        for c in collectors:
            assert c.done.wait(60)
    finally:
        engine.stop()


def assert_as_decoded_alone(model, tokenizer, prompts, lengths, collectors) -> None:
    for prompt, n, c in zip(prompts, lengths, collectors, strict=True):
        assert c.tokens == alone(model, tokenizer.encode(prompt), n)
        assert c.text == tokenizer.decode(c.tokens) and c.finish == "length"


def test_sequences_join_and_leave_the_batch_with_unchanged_greedy_output(loaded):
    model, tokenizer = loaded
    engine = Engine(model, tokenizer, max_batch=3, max_context=256, max_waiting=16).start()
    prompts = ["ROMEO:", "JULIET: O", "To be, or not", "What light", "KING HENRY:\nNow"]
    lengths = [30, 5, 18, 9, 24]  # unequal, so rows leave at different steps and waiting ones join
    collectors = [Collector(engine) for _ in prompts]
    decode_greedy(engine, tokenizer, prompts, lengths, collectors)
    assert_as_decoded_alone(model, tokenizer, prompts, lengths, collectors)
    sizes = [s for c in collectors for s in c.batch_sizes]
    assert max(sizes) == 3 and min(sizes) < 3  # a full batch, and rows coming and going
    assert engine.stats().running == 0 and engine.stats().waiting == 0


def test_prompts_arriving_together_share_one_prefill_with_unchanged_greedy_output(loaded, monkeypatch):
    model, tokenizer = loaded
    engine = Engine(model, tokenizer, max_batch=4, max_context=256, max_waiting=16)  # started once all wait
    prefills = []
    together = engine._prefill_together
    monkeypatch.setattr(engine, "_prefill_together", lambda seqs: prefills.append(len(seqs)) or together(seqs))
    prompts = ["ROMEO:", "JULIET: O Romeo, Romeo", "To be", "What light through yonder", "KING HENRY:\nNow"]
    lengths = [12, 1, 20, 7, 9]  # one finishes at its first token; the fifth waits for a free row
    collectors = [Collector() for _ in prompts]
    decode_greedy(engine, tokenizer, prompts, lengths, collectors)
    assert prefills[0] == 4  # four rows prefilled in one pass
    assert_as_decoded_alone(model, tokenizer, prompts, lengths, collectors)
    assert engine.stats().running == 0


def run_together(engine: Engine, prompt: list[int], params: list[SamplingParams]) -> list[Collector]:
    """Queue one sequence per sampling setting, then start the engine so they prefill and decode together."""
    collectors = [Collector() for _ in params]
    try:
        for p, c in zip(params, collectors, strict=True):
            engine.submit([Sequence(prompt, p, c)])
        engine.start()
        for c in collectors:
            assert c.done.wait(60)
    finally:
        engine.stop()
    return collectors


def test_unseeded_rows_sample_in_one_call_and_a_seeded_row_samples_as_generate_does(loaded, monkeypatch):
    model, tokenizer = loaded
    engine = Engine(model, tokenizer, max_batch=6, max_context=128, max_waiting=8)  # started once all wait
    rows_per_call = []
    monkeypatch.setattr(
        "mai.serve.engine.sample_next",
        lambda logits, *args: rows_per_call.append(len(logits)) or sample_next(logits, *args),
    )
    prompt, n = tokenizer.encode("ROMEO:"), 6
    sampled = SamplingParams(max_tokens=n, temperature=0.8, top_p=0.9)
    seeded = SamplingParams(max_tokens=n, temperature=0.8, top_p=0.9, seed=5)
    greedy = SamplingParams(max_tokens=n, temperature=0)
    params = [sampled] * 4 + [seeded, greedy]
    collectors = run_together(engine, prompt, params)
    assert sorted(rows_per_call) == [1] * n + [4] * n  # per step: the four together, the seeded one alone
    expected = generate(model, torch.tensor([prompt]), n, temperature=0.8, top_p=0.9, seed=5)
    assert collectors[4].tokens == [int(t[0]) for t in expected]
    assert collectors[5].tokens == alone(model, prompt, n)
    assert all(len(c.tokens) == n and c.finish == "length" for c in collectors)


def test_a_step_prefills_at_most_its_budget_of_padded_prompt_tokens(loaded):
    model, tokenizer = loaded
    engine = Engine(model, tokenizer, max_batch=8, max_context=256, max_waiting=8)  # not started: steps by hand
    prompt = list(range(20, 40))  # 20 tokens
    engine.submit([Sequence(prompt, SamplingParams(max_tokens=5, temperature=0), Collector()) for _ in range(4)])
    with torch.inference_mode():
        engine._admit(prefill_budget=64)  # three 20-token prompts fit, a fourth would make 80
    assert len(engine.running) == 3 and len(engine.waiting) == 1


def test_a_failed_step_reports_one_error_to_each_unfinished_sequence_and_serving_goes_on(loaded, monkeypatch):
    model, tokenizer = loaded
    engine = Engine(model, tokenizer, max_batch=4, max_context=128, max_waiting=8)  # started once all wait
    advance, advanced = engine._advance, []

    def advance_failing_on_the_third(seq, *args, **kwargs):
        advanced.append(seq)
        if len(advanced) == 3:
            raise RuntimeError("injected failure")
        return advance(seq, *args, **kwargs)

    monkeypatch.setattr(engine, "_advance", advance_failing_on_the_third)
    prompts, lengths = ["ROMEO:", "JULIET: O", "To be"], [1, 5, 5]  # the first finishes before the failure
    collectors = [Collector() for _ in prompts]
    try:
        for prompt, n, c in zip(prompts, lengths, collectors, strict=True):
            engine.submit([Sequence(tokenizer.encode(prompt), SamplingParams(max_tokens=n, temperature=0), c)])
        engine.start()  # the three prefill together; the third's first token fails
        for c in collectors:
            assert c.done.wait(60)
        after = Collector()
        engine.submit([Sequence(tokenizer.encode("What light"), SamplingParams(max_tokens=4, temperature=0), after)])
        assert after.done.wait(60)
    finally:
        engine.stop()
    assert [c.finishes for c in collectors] == [["length"], ["error"], ["error"]]
    assert after.finishes == ["length"] and len(after.tokens) == 4
    assert engine.stats().running == 0


@pytest.mark.slow  # compiles every batch bucket
def test_compiled_decoding_gives_eager_greedy_output(loaded):
    model, tokenizer = loaded
    lines = []  # compiling every bucket takes 5-20 s each: a line as each is done
    engine = Engine(model, tokenizer, max_batch=3, max_context=128, max_waiting=8, compile=True, log=lines.append)
    assert lines[0] == "compiling the decode step for batch sizes 1, 2, 3 (--compile)"
    done = [re.fullmatch(r"compiled decode for batch (\d) \((\d)/3\) in \d+\.\d s", line) for line in lines[1:]]
    assert [m and m.groups() for m in done] == [("1", "1"), ("2", "2"), ("3", "3")]
    engine.start()
    prompts, lengths = ["ROMEO:", "JULIET: O", "To be, or not", "What light"], [20, 6, 14, 9]
    collectors = [Collector() for _ in prompts]
    decode_greedy(engine, tokenizer, prompts, lengths, collectors)
    assert_as_decoded_alone(model, tokenizer, prompts, lengths, collectors)


def test_cancelled_sequence_stops_and_frees_its_row(loaded):
    model, tokenizer = loaded
    engine = Engine(model, tokenizer, max_batch=2, max_context=256, max_waiting=4).start()
    try:
        first_token = threading.Event()
        long = Collector()
        long_emit = lambda out: (long(out), first_token.set())  # noqa: E731
        seq = Sequence(tokenizer.encode("ROMEO:"), SamplingParams(max_tokens=200, temperature=0), long_emit)
        engine.submit([seq])
        assert first_token.wait(30)
        seq.cancel()
        other = Collector()
        engine.submit([Sequence(tokenizer.encode("The"), SamplingParams(max_tokens=4, temperature=0), other)])
        assert other.done.wait(30)
    finally:
        engine.stop()
    assert not long.done.is_set() and len(long.tokens) < 200
    assert engine.stats().running == 0


def test_queue_limit_rejects_a_whole_request(loaded):
    model, tokenizer = loaded
    engine = Engine(model, tokenizer, max_batch=1, max_context=64, max_waiting=2)  # not started: nothing drains
    params = SamplingParams(max_tokens=1)
    engine.submit([Sequence([1], params, print)])
    with pytest.raises(QueueFull):
        engine.submit([Sequence([1], params, print), Sequence([2], params, print)])
    assert engine.stats().waiting == 1


def test_stop_string_is_held_back_until_decided(loaded):
    model, tokenizer = loaded
    ids = tokenizer.encode("ROMEO:")
    reference = tokenizer.decode(alone(model, ids, 40))
    stop = reference[15:18]
    engine = Engine(model, tokenizer, max_batch=1, max_context=256, max_waiting=4).start()
    pieces = Collector()
    try:
        engine.submit([Sequence(ids, SamplingParams(max_tokens=40, temperature=0, stop=(stop,)), pieces)])
        assert pieces.done.wait(30)
    finally:
        engine.stop()
    assert pieces.text == reference[: reference.index(stop)] and pieces.finish == "stop"


def test_a_non_streaming_sequence_is_reported_once_with_what_streaming_reports_in_pieces(loaded):
    model, tokenizer = loaded
    engine = Engine(model, tokenizer, max_batch=2, max_context=256, max_waiting=4).start()
    ids = tokenizer.encode("ROMEO:")
    calls = []
    streamed, held = Collector(), Collector()

    def counted(out):
        calls.append(out)
        held(out)

    try:
        engine.submit([Sequence(ids, SamplingParams(max_tokens=20, temperature=0, logprobs=2), streamed)])
        engine.submit([Sequence(ids, SamplingParams(max_tokens=20, temperature=0, logprobs=2, stream=False), counted)])
        assert streamed.done.wait(60) and held.done.wait(60)
    finally:
        engine.stop()
    assert len(calls) == 1 and len(calls[0].logprobs) == 20
    assert (held.tokens, held.text, held.finish) == (streamed.tokens, streamed.text, streamed.finish)


def test_logit_bias_applies_to_its_own_rows_and_leaves_the_others_greedy_output(loaded):
    model, tokenizer = loaded
    engine = Engine(model, tokenizer, max_batch=3, max_context=128, max_waiting=8)  # started once all wait
    prompt, n = tokenizer.encode("ROMEO:"), 6
    greedy = alone(model, prompt, n)
    params = [
        SamplingParams(max_tokens=n, temperature=0),
        SamplingParams(max_tokens=n, temperature=0, logit_bias=((greedy[0], -100.0),), logprobs=1),
        SamplingParams(max_tokens=n, temperature=1.0, logit_bias=((greedy[0], 100.0),)),
    ]
    collectors = run_together(engine, prompt, params)
    assert collectors[0].tokens == greedy
    assert collectors[1].tokens[0] != greedy[0]
    assert collectors[1].outputs[0].logprobs[0].top[0][0] == greedy[0]  # logprobs are the model's, before the bias
    assert collectors[2].tokens == [greedy[0]] * n
