"""The serving engine: continuous batching over a KV cache with one row per running sequence.

A sequence is one returned choice. Submitted sequences wait in a queue; one background thread loops:

1. admit waiting sequences into free cache rows: prefill a lone prompt exactly as `mai generate`
   does and copy its keys and values into the row, or prompts that arrived together in one padded
   forward pass straight into their rows; sample each first token;
2. decode one token for every running row together, a ragged batch in which each row is at its own
   position; on CUDA the step replays a captured graph, on CPUs with
   `compile` it runs a compiled one (fixed_shapes.py);
3. retire rows that finished (stop token, stop string, max_tokens, context) or whose client went
   away, moving the last row into the gap so the running rows stay 0..n-1.

The cache is allocated once: max_batch rows of max_context positions, the memory budget. Results go
back through each sequence's `emit` callback, called on the engine thread.
"""

import threading
import time
import traceback
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from mai.errors import MaiError
from mai.model.decode import sample_next
from mai.model.transformer import KVCache, Transformer
from mai.serve.fixed_shapes import CompiledDecode, GraphedDecode
from mai.serve.kv_cache import BatchCache

PAD_TO = 32  # prompts prefilled together are right-padded to a multiple of this


class QueueFull(MaiError):
    """The waiting queue is at its limit: a 429 asking the client to retry shortly."""

    def __init__(self, waiting: int, limit: int):
        super().__init__(
            f"the server is busy ({waiting} sequences are waiting (limit {limit})); retry shortly",
            status=429,
            type="rate_limit_error",
            headers={"Retry-After": "1"},
        )


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_ids: tuple[int, ...] = ()
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias added to its logit) pairs
    logprobs: int | None = None  # alternatives to report per token; None reports no logprobs
    prompt_logprobs: bool = False  # also the prompt's tokens (echo with logprobs)
    stream: bool = True  # emit every token; otherwise one Output at the end (no text until then)


@dataclass
class TokenLogprob:
    token_id: int
    logprob: float
    top: list[tuple[int, float]]  # the most likely alternatives, best first


@dataclass
class Output:
    """What a sequence reports after a step: new text and tokens, and finish_reason on the last one."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprob | None] | None = None
    finish_reason: str | None = None


@dataclass
class Stats:
    """Counters and gauges the server exposes as metrics."""

    running: int = 0
    waiting: int = 0
    kv_cache_used_tokens: int = 0
    kv_cache_capacity_tokens: int = 0


class Sequence:
    """One choice being generated: its prompt, sampling, tokens so far and text sent so far."""

    def __init__(self, prompt_ids: list[int], params: SamplingParams, emit: Callable[[Output], None]):
        self.prompt_ids = prompt_ids
        self.params = params
        self.emit = emit
        self.cancelled = False
        self.submitted = time.perf_counter()
        self.first_token_at: float | None = None
        self.last_token_at: float | None = None
        self.output_ids: list[int] = []
        self.generator = None  # seeded on the model's device at prefill, as `mai generate` seeds it
        self.bias: torch.Tensor | None = None  # (V,) on the model's device from prefill, when there is a logit_bias
        self.text = ""  # decoded completion so far
        self.sent = 0  # characters of self.text already emitted
        self.text_stream = None  # the tokenizer's TextStream over output_ids, from prefill
        self.held: Output | None = None  # what a non-streaming sequence has produced so far
        self.finished = False  # its last output (the one with a finish_reason) has been reported

    def report(self, out: Output) -> None:
        """Emit `out`, or for a non-streaming sequence hold it until the last one and emit them as one."""
        self.finished = out.finish_reason is not None
        if self.params.stream:
            self.emit(out)
            return
        if self.held is None:
            self.held = out
        else:
            self.held.text += out.text
            self.held.token_ids += out.token_ids
            self.held.logprobs += out.logprobs
            self.held.finish_reason = out.finish_reason
        if out.finish_reason is not None:
            self.emit(self.held)

    def fail(self) -> None:
        """Finish with an error (the engine failed mid-step), unless its last output has already gone out."""
        if not self.finished:
            self.finished = True
            self.emit(Output(finish_reason="error"))

    def cancel(self) -> None:
        """Stop generating at the next step (the client went away); safe from any thread."""
        self.cancelled = True


class Engine:
    """Continuous batching of sequences over `model`, on a background thread started by start()."""

    def __init__(
        self,
        model: Transformer,
        tokenizer,
        max_batch: int,
        max_context: int,
        max_waiting: int,
        compile: bool = False,
        log: Callable[[str], None] = lambda line: None,
    ):
        """compile: on CPUs, decode through a compiled graph per batch-size bucket, all compiled here, now,
        with a line to `log` as each bucket is done."""
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.max_context = max_context
        self.max_waiting = max_waiting
        self.device = next(model.parameters()).device
        fixed_shapes = self.device.type == "cuda" or compile
        # as `generate` makes its cache; fixed shapes decode over the cache's whole width
        self.cache = BatchCache.for_decoding(model, max_batch, max_context, fixed_span=fixed_shapes)
        self.scratch = KVCache.for_decoding(model, 1, max_context)
        self.lengths = torch.zeros(max_batch, dtype=torch.long, device=self.device)  # tokens in each row
        self.fixed = None  # the decode step at fixed shapes, when there is one (fixed_shapes.py)
        if self.device.type == "cuda":
            self.fixed = GraphedDecode(model, self.cache, self.lengths)
        elif compile:
            self.fixed = CompiledDecode(model, self.cache, self.lengths)
            with torch.inference_mode():
                self.fixed.compile_all(log)
        self.running: list[Sequence] = []
        self.waiting: deque[Sequence] = deque()
        self.wake = threading.Condition()
        self.stopping = False
        self.thread = threading.Thread(target=self._loop, name="mai-engine", daemon=True)
        self.on_token: Callable[[Sequence, float], None] = lambda seq, now: None  # metrics hook

    def start(self) -> "Engine":
        self.thread.start()
        return self

    def stop(self) -> None:
        with self.wake:
            self.stopping = True
            self.wake.notify()
        self.thread.join()

    def submit(self, sequences: list[Sequence]) -> None:
        """Queue sequences (all or none); QueueFull when the queue would pass max_waiting."""
        with self.wake:
            if len(self.waiting) + len(sequences) > self.max_waiting:
                raise QueueFull(len(self.waiting), self.max_waiting)
            self.waiting.extend(sequences)
            self.wake.notify()

    def stats(self) -> Stats:
        running = list(self.running)
        return Stats(
            running=len(running),
            waiting=len(self.waiting),
            kv_cache_used_tokens=sum(len(s.prompt_ids) + len(s.output_ids) for s in running),
            kv_cache_capacity_tokens=self.max_batch * self.max_context,
        )

    def _loop(self) -> None:
        with torch.inference_mode():
            while True:
                with self.wake:
                    while not self.stopping and not self.waiting and not self.running:
                        self.wake.wait()
                    if self.stopping:
                        return
                try:
                    self._admit()
                    if self.running:
                        self._decode()
                except Exception:  # a bug: fail the batch, keep serving, keep the traceback in the log
                    traceback.print_exc()
                    for seq in self.running:
                        seq.fail()
                    self.running.clear()

    def _admit(self, prefill_budget: int = 4096) -> None:
        """Prefill waiting sequences into free rows, up to prefill_budget padded prompt tokens per step
        (a longer prompt still goes, alone).

        A lone prompt, or one whose prompt logprobs are wanted, is prefilled alone, exactly as
        `mai generate` prefills it; several that arrive together share one forward pass.
        """
        admitted, longest = [], 0
        while len(self.running) + len(admitted) < self.max_batch:
            with self.wake:
                if not self.waiting:
                    break
                seq = self.waiting[0]
                if admitted and max(longest, len(seq.prompt_ids)) * (len(admitted) + 1) > prefill_budget:
                    break  # it waits for the next step
                self.waiting.popleft()
            if not seq.cancelled:
                longest = max(longest, len(seq.prompt_ids))
                admitted.append(seq)
        together = [s for s in admitted if not s.params.prompt_logprobs and s.params.max_tokens > 0]
        if len(together) < 2:
            together = []
        try:
            for seq in admitted:
                if seq not in together:
                    self._prefill(seq)
            if together:
                self._prefill_together(together)
        except Exception:
            for seq in admitted:
                if seq not in self.running:  # the caller fails the running ones
                    seq.fail()
            raise

    def _prefill(self, seq: Sequence) -> None:
        T = len(seq.prompt_ids)
        self._prepare(seq)
        prompt = torch.tensor([seq.prompt_ids], device=self.device)
        # (T, V) when the prompt's logprobs are wanted, else (1, V) for the last position as `generate` computes it
        last = None if seq.params.prompt_logprobs else torch.tensor([T - 1], device=self.device)
        logits = self.model(prompt, cache=self.scratch, logits_at=last)[0]
        prompt_logprobs = None
        if seq.params.prompt_logprobs:
            k = max(seq.params.logprobs or 0, 1)
            targets = torch.tensor(seq.prompt_ids[1:], device=self.device)
            prompt_logprobs = [None, *token_logprobs(logits[:-1], targets, k)]
        if seq.params.max_tokens == 0:
            seq.report(Output(prompt_logprobs=prompt_logprobs, finish_reason="length"))
            return
        row = len(self.running)
        self.cache.copy_row(row, self.scratch, 0, T)
        self.lengths[row] = T
        self.running.append(seq)
        if not self._advance(seq, self._pick([seq], logits[-1:])[0], logits[-1:], prompt_logprobs):
            self._retire([row])

    def _prefill_together(self, seqs: list[Sequence]) -> None:
        """Prefill several prompts in one forward pass, right-padded, straight into the next free rows.

        The padding writes keys past each prompt's end; decoding overwrites a position before any
        query can see it, so they are never read.
        """
        first = len(self.running)
        # Padded to a multiple of PAD_TO: fewer distinct shapes, so the allocator and oneDNN's
        # kernel cache settle instead of growing with every new (rows, length) pair.
        T = min(-(-max(len(s.prompt_ids) for s in seqs) // PAD_TO) * PAD_TO, self.max_context)
        tokens = torch.zeros(len(seqs), T, dtype=torch.long)
        for i, seq in enumerate(seqs):
            tokens[i, : len(seq.prompt_ids)] = torch.tensor(seq.prompt_ids)
            self._prepare(seq)
        prompt_lengths = torch.tensor([len(s.prompt_ids) for s in seqs], device=self.device)
        rows = self.cache.rows(first, first + len(seqs))
        logits = self.model(tokens.to(self.device), cache=rows, logits_at=prompt_lengths - 1)[:, 0]
        self.lengths[first : first + len(seqs)] = prompt_lengths
        self.running += seqs
        picks = self._pick(seqs, logits)
        done = [first + i for i, seq in enumerate(seqs) if not self._advance(seq, picks[i], logits[i : i + 1])]
        self._retire(done)

    def _prepare(self, seq: Sequence) -> None:
        """Seed seq's generator, lay out its logit bias on the model's device, start its text."""
        seq.text_stream = self.tokenizer.text_stream()
        if seq.params.seed is not None:
            seq.generator = torch.Generator(device=self.device)
            seq.generator.manual_seed(seq.params.seed)
        if seq.params.logit_bias:
            ids, biases = zip(*seq.params.logit_bias, strict=True)
            seq.bias = torch.zeros(self.model.config.vocab_size, device=self.device)
            seq.bias[torch.tensor(ids, device=self.device)] = torch.tensor(biases, device=self.device)

    def _decode(self) -> None:
        n = len(self.running)
        tokens = torch.tensor([[s.output_ids[-1]] for s in self.running], device=self.device)  # (n, 1)
        if self.fixed is not None:
            logits = self.fixed(tokens, n)  # (n, V)
        else:
            logits = self.model(tokens, self.lengths[:n, None], self.cache)[:, -1]  # (n, V)
        self.lengths[:n] += 1
        picks = self._pick(self.running, logits)
        done = [
            row for row, seq in enumerate(self.running) if not self._advance(seq, picks[row], logits[row : row + 1])
        ]
        self._retire(done)

    def _pick(self, seqs: list[Sequence], logits: torch.Tensor) -> list[int]:
        """Each sequence's next token from its row of logits (n, V), with one device sync for all rows.

        Rows with a logit bias add it first, in one op for all of them; the logits are left as they
        are, so reported logprobs stay the model's own, as vLLM reports them by default. Greedy rows
        take the argmax. A seeded row samples alone with its own generator, as `mai generate --seed`
        does; the other rows sample together, one call per distinct setting, instead of one call and
        one sync each.
        """
        biased = [row for row, seq in enumerate(seqs) if seq.bias is not None]
        if biased:
            index = torch.tensor(biased, device=logits.device)
            logits = logits.float().index_add(0, index, torch.stack([seqs[row].bias for row in biased]))
        picks = logits.argmax(dim=-1)
        together = defaultdict(list)  # (temperature, top_k, top_p) -> rows
        for row, seq in enumerate(seqs):
            p = seq.params
            if p.temperature == 0:
                continue
            if seq.generator is not None:
                picks[row] = sample_next(logits[row : row + 1], p.temperature, p.top_k, p.top_p, seq.generator)[0]
            else:
                together[p.temperature, p.top_k, p.top_p].append(row)
        for (temperature, top_k, top_p), rows in together.items():
            index = torch.tensor(rows, device=logits.device)
            picks[index] = sample_next(logits[index], temperature, top_k, top_p, None)
        return picks.tolist()

    def _advance(self, seq: Sequence, token: int, logits: torch.Tensor, prompt_logprobs=None) -> bool:
        """Emit seq's next token (its logits (1, V) give the logprobs, when asked for); False when seq is finished."""
        if seq.cancelled:
            return False
        p = seq.params
        now = time.perf_counter()
        self.on_token(seq, now)
        seq.first_token_at = seq.first_token_at or now
        seq.last_token_at = now
        out = Output(token_ids=[token], prompt_logprobs=prompt_logprobs)
        if p.logprobs is not None:
            out.logprobs = token_logprobs(logits, torch.tensor([token], device=logits.device), max(p.logprobs, 1))
        if token in p.stop_ids:
            out.text, out.finish_reason = self._flush(seq), "stop"
        else:
            seq.output_ids.append(token)
            if p.stream or p.stop:  # otherwise the text is decoded once, at the end (_flush)
                out.text, out.finish_reason = self._detokenize(seq)
        if out.finish_reason is None:
            total = len(seq.prompt_ids) + len(seq.output_ids)
            if len(seq.output_ids) >= p.max_tokens or total >= self.max_context:
                out.finish_reason = "length"
                out.text += self._flush(seq)
        seq.report(out)
        return out.finish_reason is None

    def _detokenize(self, seq: Sequence) -> tuple[str, str | None]:
        """New text safe to send (never half a character or a possible stop string's start), and "stop" on a stop string."""
        seq.text += seq.text_stream.step(seq.output_ids[-1])
        stops = seq.params.stop
        if stops:
            search_from = max(0, seq.sent - max(map(len, stops)))
            hits = [i for i in (seq.text.find(s, search_from) for s in stops) if i >= 0]
            if hits:
                seq.text = seq.text[: min(hits)]
                new, seq.sent = seq.text[seq.sent :], len(seq.text)
                return new, "stop"
        held = max((n for s in stops for n in range(1, len(s)) if seq.text.endswith(s[:n])), default=0)
        end = len(seq.text) - held
        new, seq.sent = seq.text[seq.sent : end], max(seq.sent, end)
        return new, None

    def _flush(self, seq: Sequence) -> str:
        """The rest of the completion not yet sent, at its end (held-back text and any partial character)."""
        seq.text = self.tokenizer.decode(seq.output_ids, skip_special_tokens=True)
        new, seq.sent = seq.text[seq.sent :], len(seq.text)
        return new

    def _retire(self, rows: list[int]) -> None:
        """Free finished rows, moving the last running row into each gap."""
        for row in sorted(rows, reverse=True):
            last = len(self.running) - 1
            if row != last:
                length = int(self.lengths[last])
                self.cache.copy_row(row, self.cache, last, length)
                self.lengths[row] = length
                self.running[row] = self.running[last]
            self.running.pop()


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, k: int) -> list[TokenLogprob]:
    """Log-probabilities of targets (N,) under logits (N, V), with the k most likely tokens of each row."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    chosen = logprobs.gather(-1, targets[:, None])[:, 0].tolist()
    top_values, top_ids = logprobs.topk(k, dim=-1)
    return [
        TokenLogprob(int(t), lp, list(zip(ids, values, strict=True)))
        for t, lp, ids, values in zip(targets.tolist(), chosen, top_ids.tolist(), top_values.tolist(), strict=True)
    ]
