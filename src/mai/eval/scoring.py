"""Log-likelihoods and greedy completions under a model: what every task kind is scored with.

`Scorer` answers the three questions lm-evaluation-harness asks of a model, with the same
conventions, so `mai eval` and `lm_eval --model mai` give the same numbers:

- loglikelihood(context, continuation): summed log-probability of the continuation's tokens and
  whether greedy decoding would produce them. As in lm-eval, trailing spaces of the context move
  to the continuation; the continuation's tokens are those of the whole pair past the number of
  tokens the context alone encodes to.
- rolling loglikelihood(text): the whole text's log-probability, in windows of the model's
  context length, each prediction made with as much preceding context as fits.
- generate(context, stop): greedy decoding with the KV cache, cut before the first stop string.

Requests are sorted by length and batched up to a budget of logits, right-padded (the model is
causal, so padding never changes the scored positions); inputs longer than the model's context
keep their last max_seq_len tokens.
"""

from collections.abc import Callable

import torch

from mai.model.decode import generate
from mai.model.quantize import quantize_weights
from mai.precision import InferencePrecision, autocast, resolve_precision, weight_bits

LOGIT_BUDGET = 1 << 27  # logits per forward pass (B·T·V): 512 MiB in fp32
PAD_LIMIT = 0.75  # a row shorter than this fraction of its batch's longest starts a new batch


class Scorer:
    def __init__(self, model, tokenizer, precision: InferencePrecision = "fp32", batch_tokens: int | None = None):
        """precision: fp32, bf16 (autocast over fp32 weights), auto: bf16 where the device computes it
        natively (CUDA, AVX512-BF16 or AMX CPUs), as training and `mai generate` resolve it, or int8/int4
        (the model's weights quantized here, in place). The resolved one is self.precision, which
        eval.json records."""
        self.device = next(model.parameters()).device
        self.precision = resolve_precision(precision, self.device)
        bits = weight_bits(self.precision)
        self.model, self.tokenizer = quantize_weights(model, bits) if bits else model, tokenizer
        self.max_len = model.config.max_seq_len
        vocab = model.config.vocab_size
        self.batch_tokens = batch_tokens or max(self.max_len, min(16384, LOGIT_BUDGET // vocab))
        # Text is encoded the way the tokenizer itself says (ours prepend BOS, SmolLM2's adds nothing);
        # an empty context is conditioned on BOS, or EOS when there is no BOS (lm-eval's prefix token).
        fallback = tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.eos_id
        self.empty_context = tokenizer.encode("") or ([fallback] if fallback is not None else [0])

    def autocast(self):
        return autocast(self.device, self.precision)

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Token ids of a context and its continuation, split as lm-evaluation-harness splits them."""
        if not context:
            return list(self.empty_context), self.tokenizer.encode(continuation, add_special_tokens=False)
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole = self.tokenizer.encode(context + continuation)
        context_ids = self.tokenizer.encode(context)
        return context_ids, whole[len(context_ids) :]

    def loglikelihood(
        self, pairs: list[tuple[str, str]], on_done: Callable[[list[int]], None] | None = None
    ) -> list[tuple[float, bool]]:
        """(log-probability, is greedy) of each continuation given its context."""
        rows = []
        for context, continuation in pairs:
            context_ids, continuation_ids = self.encode_pair(context, continuation)
            rows.append((context_ids + continuation_ids, len(continuation_ids)))
        return self.score_rows(rows, on_done)

    def loglikelihood_rolling(self, texts: list[str]) -> list[float]:
        """Log-probability of each whole text, predicted from the empty context onward."""
        rows, owners = [], []
        for i, text in enumerate(texts):
            tokens = list(self.empty_context[-1:]) + self.tokenizer.encode(text, add_special_tokens=False)
            for start in range(1, len(tokens), self.max_len):  # predict tokens[start:end] ...
                end = min(start + self.max_len, len(tokens))
                rows.append((tokens[max(0, end - 1 - self.max_len) : end], end - start))  # ... after all that fits
                owners.append(i)
        totals = [0.0] * len(texts)
        for owner, (logprob, _) in zip(owners, self.score_rows(rows), strict=True):
            totals[owner] += logprob
        return totals

    def score_rows(
        self, rows: list[tuple[list[int], int]], on_done: Callable[[list[int]], None] | None = None
    ) -> list[tuple[float, bool]]:
        """Score the last n tokens of each token row given the tokens before them."""
        results: list[tuple[float, bool]] = [(0.0, True)] * len(rows)
        trimmed = [(tokens[-(self.max_len + 1) :], min(n, self.max_len)) for tokens, n in rows]
        order = sorted(range(len(rows)), key=lambda i: -len(trimmed[i][0]))
        for batch in self._batches(order, [len(t) - 1 for t, _ in trimmed]):
            for i, result in zip(batch, self._score_batch([trimmed[i] for i in batch]), strict=True):
                results[i] = result
            if on_done is not None:
                on_done(batch)
        return results

    def _batches(self, order: list[int], lengths: list[int]):
        """Consecutive rows (longest first) while the padded batch fits the budget and pads little."""
        batch: list[int] = []
        for i in order:
            width = lengths[batch[0]] if batch else 0
            if batch and ((len(batch) + 1) * width > self.batch_tokens or lengths[i] < PAD_LIMIT * width):
                yield batch
                batch = []
            batch.append(i)
        if batch:
            yield batch

    @torch.inference_mode()
    def _score_batch(self, rows: list[tuple[list[int], int]]) -> list[tuple[float, bool]]:
        width = max(len(tokens) - 1 for tokens, _ in rows)
        inputs = torch.zeros(len(rows), width, dtype=torch.long)
        row_index, positions, targets = [], [], []
        for r, (tokens, n) in enumerate(rows):
            length = len(tokens) - 1
            inputs[r, :length] = torch.tensor(tokens[:-1])
            row_index += [r] * n
            positions += range(length - n, length)
            targets += tokens[-n:] if n else []
        with self.autocast():
            logits = self.model(inputs.to(self.device))  # (B, T, V)
        picked = logits[torch.tensor(row_index), torch.tensor(positions)].float()  # (N, V): scored positions only
        logprobs = torch.log_softmax(picked, dim=-1)
        target = torch.tensor(targets, dtype=torch.long, device=logprobs.device)
        token_logprobs = logprobs.gather(1, target[:, None]).squeeze(1).double().cpu()
        greedy = (logprobs.argmax(dim=-1) == target).cpu()
        results, offset = [], 0
        for _, n in rows:
            results.append((float(token_logprobs[offset : offset + n].sum()), bool(greedy[offset : offset + n].all())))
            offset += n
        return results

    def generate(self, context: str, stop: tuple[str, ...], max_new_tokens: int) -> str:
        """Greedy completion of `context`, cut before the first stop string (or at EOS)."""
        max_new_tokens = max(1, min(max_new_tokens, self.max_len // 2))
        ids = self.tokenizer.encode(context)[-(self.max_len - max_new_tokens) :]
        stop_ids = tuple(i for i in {self.tokenizer.eos_id} if i is not None)
        completion: list[int] = []
        stream, text = self.tokenizer.text_stream(), ""
        longest_stop = max(map(len, stop), default=0)
        with self.autocast():
            for token in generate(self.model, torch.tensor([ids]), max_new_tokens, 0.0, stop_ids=stop_ids):
                token_id = int(token[0])
                if token_id in stop_ids:
                    break
                completion.append(token_id)
                piece = stream.step(token_id)
                text += piece
                # only a stop string that ends in the new piece can be new
                if piece and any(s in text[-(len(piece) + longest_stop) :] for s in stop):
                    break
        text = self.tokenizer.decode(completion, skip_special_tokens=True)  # with an unfinished last character
        cut = min((text.index(s) for s in stop if s in text), default=len(text))
        return text[:cut]
