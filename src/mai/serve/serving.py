"""OpenAI requests to engine jobs, and engine outputs to OpenAI responses and stream chunks.

The checks here are the ones protocol.py cannot make alone, as they need the model: the model name,
prompt token ids within the vocabulary, prompts that fit the context, logit_bias keys within the
vocabulary. Each is a 400 naming the parameter.
"""

import time
import uuid
from collections.abc import AsyncIterator

from fastapi import Request

from mai.errors import MaiError
from mai.serve import protocol as p
from mai.serve.engine import Engine, Output, SamplingParams, TokenLogprob
from mai.serve.handoff import Job, Submitted, outputs_of
from mai.tokenizer import Tokenizer


class OpenAIServing:
    """The OpenAI API of one served model over its engine."""

    def __init__(self, engine: Engine, model_name: str):
        self.engine, self.tokenizer, self.model_name = engine, engine.tokenizer, model_name
        # the ids both the tokenizer and the model know (a model may pad its embeddings past the tokenizer's)
        self.vocab_size = min(self.tokenizer.vocab_size, engine.model.config.vocab_size)

    def check_model(self, name: str) -> None:
        if name != self.model_name:
            raise MaiError(
                f"model {name!r} does not exist; this server serves {self.model_name!r}", parameter="model", status=404
            )

    def header(self, id_prefix: str) -> dict:
        """The id, creation time and model every response and chunk of one request carries."""
        return {"id": f"{id_prefix}-{uuid.uuid4().hex}", "created": int(time.time()), "model": self.model_name}

    def completion_jobs(self, body: p.CompletionRequest) -> list[Job]:
        """n jobs per prompt, prompt by prompt."""
        self.check_model(body.model)
        prompts = completion_prompts(body.prompt, self.tokenizer)
        for ids in prompts:
            check_prompt(ids, self.engine.max_context, self.vocab_size, body.max_tokens == 0)
        check_logit_bias(body.logit_bias, self.vocab_size)
        stop_ids = (self.tokenizer.eos_id,) if self.tokenizer.eos_id is not None else ()
        return [
            (ids, sampling(body, body.max_tokens, ids, self.engine.max_context, stop_ids, body.logprobs, body.echo, j))
            for ids in prompts
            for j in range(body.n)
        ]

    def chat_jobs(self, body: p.ChatCompletionRequest) -> list[Job]:
        """n jobs over the conversation."""
        self.check_model(body.model)
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        ids = self.tokenizer.encode_chat(messages)
        check_prompt(ids, self.engine.max_context, self.vocab_size, False)
        check_logit_bias(body.logit_bias, self.vocab_size)
        stop_ids = self.tokenizer.end_of_turn_ids
        logprobs = (body.top_logprobs or 0) if body.logprobs else None
        max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        context = self.engine.max_context
        return [(ids, sampling(body, max_tokens, ids, context, stop_ids, logprobs, False, j)) for j in range(body.n)]

    def completion_response(
        self, body: p.CompletionRequest, header: dict, jobs: list[Job], outputs: list[list[Output]]
    ) -> p.CompletionResponse:
        choices = [
            completion_choice(i, ids, body, self.tokenizer, outs)
            for i, ((ids, _), outs) in enumerate(zip(jobs, outputs, strict=True))
        ]
        prompts = [ids for ids, _ in jobs[:: body.n]]
        return p.CompletionResponse(**header, choices=choices, usage=usage(prompts, outputs))

    def chat_response(
        self, body: p.ChatCompletionRequest, header: dict, jobs: list[Job], outputs: list[list[Output]]
    ) -> p.ChatCompletionResponse:
        choices = []
        for i, outs in enumerate(outputs):
            text = "".join(o.text for o in outs)
            lps = chat_logprobs([lp for o in outs for lp in o.logprobs], self.tokenizer) if body.logprobs else None
            choices.append(
                p.ChatChoice(
                    index=i,
                    message=p.AssistantMessage(content=text),
                    logprobs=lps,
                    finish_reason=outs[-1].finish_reason,
                )
            )
        return p.ChatCompletionResponse(**header, choices=choices, usage=usage([jobs[0][0]], outputs))

    async def completion_chunks(
        self, submitted: Submitted, jobs: list[Job], body: p.CompletionRequest, header: dict, request: Request
    ) -> AsyncIterator[p.CompletionChunk]:
        """A chunk per choice's new text, the echoed prompt first; then usage, when asked for."""
        offsets = [0] * len(jobs)
        outputs = [[] for _ in jobs]
        async for i, out in outputs_of(submitted, request):
            outputs[i].append(out)
            ids = jobs[i][0]
            text, entries = out.text, list(out.logprobs)
            if body.echo and len(outputs[i]) == 1:
                text, entries = prompt_text(body, ids, self.tokenizer) + text, (out.prompt_logprobs or []) + entries
            logprobs = None
            if body.logprobs is not None:
                logprobs = completion_logprobs(entries, ids, self.tokenizer, offsets[i])
            offsets[i] += len(text)
            if text or out.finish_reason:
                choice = p.CompletionChoice(index=i, text=text, logprobs=logprobs, finish_reason=out.finish_reason)
                yield p.CompletionChunk(**header, choices=[choice])
        if body.stream_options and body.stream_options.include_usage:
            prompts = [ids for ids, _ in jobs[:: body.n]]
            yield p.CompletionChunk(**header, choices=[], usage=usage(prompts, outputs))

    async def chat_chunks(
        self, submitted: Submitted, jobs: list[Job], body: p.ChatCompletionRequest, header: dict, request: Request
    ) -> AsyncIterator[p.ChatCompletionChunk]:
        """Each choice's role first, then a delta per new text and an empty one with the finish; then usage,
        when asked for."""
        for i in range(len(jobs)):
            opening = p.ChatChunkChoice(index=i, delta=p.Delta(role="assistant", content=""), finish_reason=None)
            yield p.ChatCompletionChunk(**header, choices=[opening])
        outputs = [[] for _ in jobs]
        async for i, out in outputs_of(submitted, request):
            outputs[i].append(out)
            if out.text or out.finish_reason:
                lps = chat_logprobs(out.logprobs, self.tokenizer) if body.logprobs else None
                delta = p.Delta(content=out.text) if out.text else p.Delta()
                choice = p.ChatChunkChoice(index=i, delta=delta, logprobs=lps, finish_reason=out.finish_reason)
                yield p.ChatCompletionChunk(**header, choices=[choice])
        if body.stream_options and body.stream_options.include_usage:
            yield p.ChatCompletionChunk(**header, choices=[], usage=usage([jobs[0][0]], outputs))


def completion_prompts(prompt, tokenizer: Tokenizer) -> list[list[int]]:
    """Token ids of each prompt: a string, several strings, ids, or several lists of ids."""
    if isinstance(prompt, str):
        return [tokenizer.encode(prompt)]
    if not prompt:
        raise MaiError("prompt is empty; send a string or a list of token ids", parameter="prompt")
    if isinstance(prompt[0], int):
        return [prompt]
    if isinstance(prompt[0], str):
        return [tokenizer.encode(text) for text in prompt]
    return prompt


def check_prompt(ids: list[int], max_context: int, vocab_size: int, echo_only: bool) -> None:
    if not ids:
        raise MaiError("a prompt has no tokens; send at least one", parameter="prompt")
    bad = next((i for i in ids if not 0 <= i < vocab_size), None)
    if bad is not None:
        raise MaiError(f"token ids must be in [0, {vocab_size}); the prompt has {bad}", parameter="prompt")
    limit = max_context if echo_only else max_context - 1
    if len(ids) > limit:
        raise MaiError(
            f"the prompt is {len(ids)} tokens but this model's context is {max_context} tokens "
            "(prompt and completion together); shorten the prompt",
            parameter="prompt",
        )


def check_logit_bias(bias: dict[int, float] | None, vocab_size: int) -> None:
    if bias and max(bias) >= vocab_size:
        raise MaiError(
            f"logit_bias keys must be token ids in [0, {vocab_size}); it has {max(bias)}", parameter="logit_bias"
        )


def sampling(body, max_tokens, ids, max_context, stop_ids, logprobs, echo, choice) -> SamplingParams:
    """Sampling for one choice; choice j of a seeded request uses seed + j, so choices differ."""
    room = max_context - len(ids)
    return SamplingParams(
        max_tokens=room if max_tokens is None else min(max_tokens, room),
        temperature=body.temperature if body.temperature >= 1e-5 else 0.0,  # tinier overflows logits / t: greedy
        top_p=body.top_p,
        top_k=max(body.top_k, 0),
        # torch seeds with -1 as with 2**64 - 1: the modulo keeps seed + choice in its range and changes no seed
        seed=None if body.seed is None else (body.seed + choice) % 2**64,
        stop=tuple(body.stop or ()),
        stop_ids=stop_ids,
        logit_bias=tuple((body.logit_bias or {}).items()),
        logprobs=logprobs,
        prompt_logprobs=echo and logprobs is not None,
        stream=bool(body.stream),
    )


def usage(prompts: list[list[int]], outputs: list[list[Output]]) -> p.Usage:
    prompt_tokens = sum(len(ids) for ids in prompts)
    completion_tokens = sum(len(o.token_ids) for outs in outputs for o in outs)
    return p.Usage(
        prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, total_tokens=prompt_tokens + completion_tokens
    )


def completion_choice(index, ids, body, tokenizer, outs: list[Output]) -> p.CompletionChoice:
    text = "".join(o.text for o in outs)
    logprobs = None
    if body.logprobs is not None:
        entries = [lp for o in outs for lp in o.logprobs]
        if body.echo:
            entries = (outs[0].prompt_logprobs or []) + entries
        logprobs = completion_logprobs(entries, ids if body.echo else [], tokenizer, 0)
    if body.echo:
        text = prompt_text(body, ids, tokenizer) + text
    return p.CompletionChoice(index=index, text=text, logprobs=logprobs, finish_reason=outs[-1].finish_reason)


def prompt_text(body: p.CompletionRequest, ids: list[int], tokenizer) -> str:
    """The prompt as echoed: the text sent, or the token ids decoded."""
    return body.prompt if isinstance(body.prompt, str) else tokenizer.decode(ids, skip_special_tokens=True)


def completion_logprobs(entries, prompt_ids, tokenizer, offset: int) -> p.CompletionLogprobs:
    """Legacy completions logprobs; a prompt's first token has none (entries holds None for it)."""
    tokens, token_logprobs, top_logprobs, text_offset = [], [], [], []
    token_ids = [e.token_id if e else prompt_ids[0] for e in entries]
    for token_id, e in zip(token_ids, entries, strict=True):
        tokens.append(tokenizer.decode([token_id]))
        token_logprobs.append(e.logprob if e else None)
        top_logprobs.append({tokenizer.decode([t]): lp for t, lp in e.top} if e else None)
        text_offset.append(offset)
        offset += len(tokenizer.decode([token_id], skip_special_tokens=True))
    return p.CompletionLogprobs(
        tokens=tokens, token_logprobs=token_logprobs, top_logprobs=top_logprobs, text_offset=text_offset
    )


def chat_logprobs(entries: list[TokenLogprob], tokenizer) -> p.ChatLogprobs:
    def top(token_id, logprob):
        # bytes: the token's own, which for part of a multi-byte character differ from its text's (U+FFFD)
        raw = tokenizer.token_byte_strings[token_id]
        return p.TopLogprob(token=tokenizer.decode([token_id]), logprob=logprob, bytes=list(raw))

    return p.ChatLogprobs(
        content=[
            p.ChatTokenLogprob(**top(e.token_id, e.logprob).model_dump(), top_logprobs=[top(t, lp) for t, lp in e.top])
            for e in entries
        ]
    )
