"""Log-likelihoods and completions of the trained tiny model, checked against direct computation."""

import pytest
import torch

from mai.eval.scoring import Scorer
from mai.generate import completion_pieces
from mai.loading import load_run_model
from mai.taskdata import load_task


@pytest.fixture(scope="module")
def scorer(trained_run) -> Scorer:
    model, _, tokenizer = load_run_model(trained_run)
    return Scorer(model, tokenizer)


def direct_logprob(scorer: Scorer, context: str, continuation: str) -> float:
    """One unbatched forward pass over context + continuation, summed by hand."""
    context_ids, continuation_ids = scorer.encode_pair(context, continuation)
    tokens = torch.tensor([context_ids + continuation_ids])
    with torch.no_grad():
        logprobs = torch.log_softmax(scorer.model(tokens[:, :-1]).double(), dim=-1)[0]
    n = len(continuation_ids)
    return sum(logprobs[len(context_ids) - 1 + i, continuation_ids[i]].item() for i in range(n))


def test_batched_loglikelihoods_equal_one_pass_per_pair(scorer):
    task = load_task("hellaswag", 6)
    pairs = [pair for example in task.examples for pair in example.requests()]
    batched = scorer.loglikelihood(pairs)
    for (context, continuation), (logprob, _) in zip(pairs, batched, strict=True):
        assert logprob == pytest.approx(direct_logprob(scorer, context, continuation), abs=1e-3)
    small_batches = Scorer(scorer.model, scorer.tokenizer, batch_tokens=64).loglikelihood(pairs)
    assert [lp for lp, _ in small_batches] == pytest.approx([lp for lp, _ in batched], abs=1e-4)


def test_trailing_spaces_of_the_context_move_to_the_continuation(scorer):
    assert scorer.encode_pair("The king ", "said") == scorer.encode_pair("The king", " said")
    context_ids, continuation_ids = scorer.encode_pair("ROMEO:", " What")
    assert context_ids[0] == scorer.tokenizer.bos_id  # our tokenizer's own BOS, as in training
    assert scorer.tokenizer.decode(continuation_ids) == " What"


def test_is_greedy_matches_greedy_decoding(scorer):
    prompt = "ROMEO:"
    greedy = scorer.generate(prompt, (), 6)
    [(_, is_greedy)] = scorer.loglikelihood([(prompt, greedy)])
    [(_, other)] = scorer.loglikelihood([(prompt, greedy[:-1] + ("x" if greedy[-1] != "x" else "y"))])
    assert is_greedy and not other


def test_generate_is_the_greedy_sample_cut_at_the_stop_string(scorer):
    full = "".join(completion_pieces(scorer.model, scorer.tokenizer, "The king", 40, 0.0, 0, 1.0, None))
    assert scorer.generate("The king", (), 40) == full
    stop = full.strip()[:1] or "e"
    cut = scorer.generate("The king", (stop,), 40)
    assert stop not in cut and full.startswith(cut)


def test_rolling_loglikelihood_conditions_on_bos_and_spans_windows(scorer):
    text = "To be, or not to be, that is the question."
    [rolling] = scorer.loglikelihood_rolling([text])
    assert rolling == pytest.approx(scorer.loglikelihood([("", text)])[0][0], abs=1e-4)


def test_rolling_windows_are_lm_evaluation_harness_windows(scorer):
    """A text several contexts long: the same windows as lm-eval's own rolling-window helper."""
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    text = " ".join(["To be, or not to be, that is the question."] * 60)
    tokens = scorer.tokenizer.encode(text, add_special_tokens=False)
    assert len(tokens) > 2 * scorer.max_len
    windows = get_rolling_token_windows(tokens, scorer.tokenizer.bos_id, scorer.max_len, context_len=1)
    expected = 0.0
    for context, continuation in map(make_disjoint_window, windows):
        row = torch.tensor([context + continuation])
        with torch.no_grad():
            logprobs = torch.log_softmax(scorer.model(row[:, :-1]).double(), dim=-1)[0]
        start = len(context) - 1
        expected += sum(logprobs[start + i, t].item() for i, t in enumerate(continuation))
    assert scorer.loglikelihood_rolling([text])[0] == pytest.approx(expected, abs=1e-2)
