"""`mai serve`: an OpenAI-compatible HTTP server (FastAPI + uvicorn) over the batching engine.

Routes: GET /v1/models, POST /v1/completions, POST /v1/chat/completions (both streaming as SSE
ending in `data: [DONE]`), GET /health, GET /metrics (Prometheus), and the chat page at GET /.
Every error leaves as OpenAI's shape, {"error": {"message", "type", "param", "code"}}, from the
handlers in `add_error_handlers`.
"""

import asyncio
import ctypes
import json
import os
import sys
import threading
import time
import uuid
import weakref
from dataclasses import dataclass
from pathlib import Path

import jinja2
import torch
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, StreamingResponse
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from mai.errors import MaiError
from mai.export import load_pretrained
from mai.sample import check_precision, to_decoding_precision
from mai.serve import protocol as p
from mai.serve.engine import Engine, Output, QueueFull, SamplingParams, Sequence, TokenLogprob
from mai.serve.web import add_health_and_metrics, add_route_errors, bind, error_response, run_app, url_of
from mai.tokenizer import IM_END

STATIC = Path(__file__).parent / "static"


class ApiError(Exception):
    """An error answered to the client: HTTP status, message that says what to do, offending parameter."""

    def __init__(self, status: int, message: str, param: str | None = None, type: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.type = status, message, param, type


@dataclass(frozen=True)
class Settings:
    model_name: str
    api_key: str | None = None  # when set, /v1 routes need `Authorization: Bearer <api_key>`


class Metrics:
    """Prometheus metrics of one server, in a registry of its own."""

    def __init__(self, engine: Engine):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("mai_requests", "HTTP requests answered", ["endpoint", "status"], registry=r)
        self.prompt_tokens = Counter("mai_prompt_tokens", "Prompt tokens prefilled", registry=r)
        self.generated_tokens = Counter("mai_generation_tokens", "Tokens generated", registry=r)
        latency_buckets = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
        self.ttft = Histogram(
            "mai_time_to_first_token_seconds", "Submit to first token", buckets=latency_buckets, registry=r
        )
        self.tpot = Histogram(
            "mai_time_per_output_token_seconds", "Between consecutive tokens", buckets=latency_buckets, registry=r
        )
        Gauge("mai_requests_running", "Sequences in the batch", registry=r).set_function(lambda: engine.stats().running)
        Gauge("mai_requests_waiting", "Sequences queued", registry=r).set_function(lambda: engine.stats().waiting)
        Gauge("mai_kv_cache_usage_ratio", "Cached tokens over KV cache capacity", registry=r).set_function(
            lambda: engine.stats().kv_cache_used_tokens / engine.stats().kv_cache_capacity_tokens
        )

    def on_token(self, seq: Sequence, now: float) -> None:
        """Engine hook, called on the engine thread before each token is emitted."""
        self.generated_tokens.inc()
        if seq.first_token_at is None:
            self.prompt_tokens.inc(len(seq.prompt_ids))
            self.ttft.observe(now - seq.submitted)
        else:
            self.tpot.observe(now - seq.last_token_at)


def build_app(engine: Engine, settings: Settings) -> FastAPI:
    """The FastAPI app over a started engine."""
    app = FastAPI(title="mai", description="OpenAI-compatible API over a mai model.", version="1")
    metrics = Metrics(engine)
    engine.on_token = metrics.on_token
    tokenizer = engine.tokenizer
    # the ids both the tokenizer and the model know (a model may pad its embeddings past the tokenizer's)
    vocab_size = min(tokenizer.vocab_size, engine.model.config.vocab_size)
    created = int(time.time())
    add_error_handlers(app)
    name_served_model(app, settings.model_name)

    @app.middleware("http")
    async def count_requests(request: Request, call_next):
        response = await call_next(request)
        metrics.requests.labels(request.url.path, str(response.status_code)).inc()
        return response

    def check_key(request: Request) -> None:
        if settings.api_key is None:
            return
        if request.headers.get("authorization", "") != f"Bearer {settings.api_key}":
            raise ApiError(
                401, "missing or wrong API key: send 'Authorization: Bearer KEY'", type="authentication_error"
            )

    @app.get("/", include_in_schema=False)
    def chat_page():
        return FileResponse(STATIC / "index.html")

    add_health_and_metrics(app, metrics.registry)

    @app.get("/v1/models", dependencies=[Depends(check_key)])
    def models() -> p.ModelList:
        return p.ModelList(
            data=[p.ModelCard(id=settings.model_name, created=created, max_model_len=engine.max_context)]
        )

    @app.post("/v1/completions", dependencies=[Depends(check_key)], response_model=None)
    async def completions(body: p.CompletionRequest, request: Request):
        check_model(body.model, settings)
        prompts = completion_prompts(body.prompt, tokenizer)
        for ids in prompts:
            check_prompt(ids, engine, vocab_size, body.max_tokens == 0)
        check_logit_bias(body.logit_bias, vocab_size)
        stop_ids = (tokenizer.eos_id,) if tokenizer.eos_id is not None else ()
        jobs = [
            (ids, sampling(body, body.max_tokens, ids, engine, stop_ids, body.logprobs, body.echo, j))
            for ids in prompts
            for j in range(body.n)
        ]
        submitted = Submitted(engine, jobs)
        header = {"id": f"cmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": settings.model_name}
        if body.stream:
            return sse(stream_completion(submitted, jobs, body, header, tokenizer, request), submitted)
        outputs = await collect(submitted, request)
        choices = [
            completion_choice(i, ids, body, tokenizer, outs)
            for i, ((ids, _), outs) in enumerate(zip(jobs, outputs, strict=True))
        ]
        return p.CompletionResponse(**header, choices=choices, usage=usage(prompts, outputs))

    @app.post("/v1/chat/completions", dependencies=[Depends(check_key)], response_model=None)
    async def chat_completions(body: p.ChatCompletionRequest, request: Request):
        check_model(body.model, settings)
        ids = chat_prompt(body.messages, tokenizer)
        check_prompt(ids, engine, vocab_size, False)
        check_logit_bias(body.logit_bias, vocab_size)
        stop_ids = tuple(i for i in (tokenizer.eos_id, tokenizer.backend.token_to_id(IM_END)) if i is not None)
        logprobs = (body.top_logprobs or 0) if body.logprobs else None
        max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        jobs = [(ids, sampling(body, max_tokens, ids, engine, stop_ids, logprobs, False, j)) for j in range(body.n)]
        submitted = Submitted(engine, jobs)
        header = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": settings.model_name}
        if body.stream:
            return sse(stream_chat(submitted, jobs, body, header, tokenizer, request), submitted)
        outputs = await collect(submitted, request)
        choices = []
        for i, outs in enumerate(outputs):
            text = "".join(o.text for o in outs)
            lps = chat_logprobs([lp for o in outs for lp in o.logprobs], tokenizer) if body.logprobs else None
            choices.append(
                p.ChatChoice(
                    index=i,
                    message=p.AssistantMessage(content=text),
                    logprobs=lps,
                    finish_reason=outs[-1].finish_reason,
                )
            )
        return p.ChatCompletionResponse(**header, choices=choices, usage=usage([ids], outputs))

    return app


def add_error_handlers(app: FastAPI) -> None:
    """The one place errors become OpenAI-shaped JSON."""
    add_route_errors(app)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError):
        return error_response(e.status, e.message, e.type, e.param)

    @app.exception_handler(QueueFull)
    async def queue_full(request: Request, e: QueueFull):
        return error_response(
            429, f"the server is busy ({e}); retry shortly", "rate_limit_error", headers={"Retry-After": "1"}
        )

    @app.exception_handler(Exception)
    async def bug(request: Request, e: Exception):
        return error_response(500, "internal error; the traceback is in the server log", "server_error")

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError):
        first = e.errors()[0]
        if first["type"] == "json_invalid":
            reason = f"{first['ctx']['error']} at character {first['loc'][1]}"
            return error_response(400, f"the body is not JSON ({reason}); send an OpenAI request object")
        param = ".".join(str(part) for part in first["loc"] if part != "body") or None
        if param is None:  # the body as a whole: none, a JSON array, or bytes without a JSON content type
            message = "the body is not an OpenAI request object; send one as JSON with 'Content-Type: application/json'"
            return error_response(400, message)
        return error_response(400, f"invalid request: {param}: {first['msg']}", param=param)


def name_served_model(app: FastAPI, model_name: str) -> None:
    """The OpenAPI schema lists the one model this server accepts, so generated clients and fuzzers can use it."""
    openapi = app.openapi

    def schema() -> dict:
        if app.openapi_schema is None:
            for request in ("CompletionRequest", "ChatCompletionRequest"):
                openapi()["components"]["schemas"][request]["properties"]["model"]["enum"] = [model_name]
        return app.openapi_schema

    app.openapi = schema


def check_model(name: str, settings: Settings) -> None:
    if name != settings.model_name:
        raise ApiError(404, f"model {name!r} does not exist; this server serves {settings.model_name!r}", "model")


def completion_prompts(prompt, tokenizer) -> list[list[int]]:
    """Token ids of each prompt: a string, several strings, ids, or several lists of ids."""
    if isinstance(prompt, str):
        return [tokenizer.encode(prompt)]
    if not prompt:
        raise ApiError(400, "prompt is empty; send a string or a list of token ids", "prompt")
    if isinstance(prompt[0], int):
        return [prompt]
    if isinstance(prompt[0], str):
        return [tokenizer.encode(text) for text in prompt]
    return prompt


def chat_prompt(messages: list[p.ChatMessage], tokenizer) -> list[int]:
    template = jinja2.Environment().from_string(tokenizer.chat_template)
    text = template.render(
        messages=[{"role": m.role, "content": m.text()} for m in messages],
        add_generation_prompt=True,
        bos_token=tokenizer.bos_token or "",
        eos_token=tokenizer.eos_token or "",
    )
    return tokenizer.encode(text)


def check_prompt(ids: list[int], engine: Engine, vocab_size: int, echo_only: bool) -> None:
    if not ids:
        raise ApiError(400, "a prompt has no tokens; send at least one", "prompt")
    bad = next((i for i in ids if not 0 <= i < vocab_size), None)
    if bad is not None:
        raise ApiError(400, f"token ids must be in [0, {vocab_size}); the prompt has {bad}", "prompt")
    limit = engine.max_context if echo_only else engine.max_context - 1
    if len(ids) > limit:
        raise ApiError(
            400,
            f"the prompt is {len(ids)} tokens but this model's context is {engine.max_context} tokens "
            "(prompt and completion together); shorten the prompt",
            "prompt",
        )


def check_logit_bias(bias: dict[int, float] | None, vocab_size: int) -> None:
    if bias and max(bias) >= vocab_size:
        raise ApiError(400, f"logit_bias keys must be token ids in [0, {vocab_size}); it has {max(bias)}", "logit_bias")


def sampling(body, max_tokens, ids, engine, stop_ids, logprobs, echo, choice) -> SamplingParams:
    """Sampling for one choice; choice j of a seeded request uses seed + j, so choices differ."""
    room = engine.max_context - len(ids)
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


class Handoff:
    """Carries outputs from the engine thread onto an event loop's queues, one wake-up per burst.

    The engine reports every running sequence's token each step; waking the loop once per token
    (call_soon_threadsafe each time) costs more than decoding the token when 32 rows run.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.pending: list[tuple[asyncio.Queue, tuple]] = []
        self.lock = threading.Lock()

    def put(self, queue: asyncio.Queue, item: tuple) -> None:
        """Queue `item` on `queue`; callable from any thread."""
        with self.lock:
            self.pending.append((queue, item))
            if len(self.pending) > 1:
                return  # a delivery is already scheduled and will take this one too
        self.loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        with self.lock:
            pending, self.pending = self.pending, []
        for queue, item in pending:
            queue.put_nowait(item)


HANDOFFS: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Handoff]" = weakref.WeakKeyDictionary()


def handoff_of(loop: asyncio.AbstractEventLoop) -> Handoff:
    if loop not in HANDOFFS:
        HANDOFFS[loop] = Handoff(loop)
    return HANDOFFS[loop]


class Submitted:
    """The choices of one request in the engine; their outputs arrive on `queue` as (choice, Output)."""

    def __init__(self, engine: Engine, jobs: list[tuple[list[int], SamplingParams]]):
        if len(jobs) > engine.max_waiting:
            raise ApiError(
                400,
                f"this request asks for {len(jobs)} sequences (prompts × n) but the server queues at most "
                f"{engine.max_waiting}; send fewer prompts or a smaller n",
                "n",
            )
        handoff, self.queue = handoff_of(asyncio.get_running_loop()), asyncio.Queue()
        self.sequences = [
            Sequence(ids, params, lambda out, i=i: handoff.put(self.queue, (i, out)))
            for i, (ids, params) in enumerate(jobs)
        ]
        engine.submit(self.sequences)

    def cancel(self) -> None:
        for seq in self.sequences:
            seq.cancel()


async def outputs_of(submitted: Submitted, request: Request):
    """(choice, Output) until every choice has finished, or until the client goes away: then it
    stops early and cancels them all, and their rows leave the batch at the engine's next step."""
    watcher = asyncio.create_task(wake_on_hang_up(request, submitted.queue))
    done, count = 0, len(submitted.sequences)
    try:
        while done < count:
            choice, out = await submitted.queue.get()
            if out is None:
                return
            if out.finish_reason == "error":
                raise ApiError(500, "the engine failed on this request; see the server log", type="server_error")
            done += out.finish_reason is not None
            yield choice, out
    finally:
        watcher.cancel()
        submitted.cancel()


async def wake_on_hang_up(request: Request, queue: asyncio.Queue) -> None:
    """Put (None, None) on `queue` once the client has gone away.

    Once the body is read, the ASGI receive channel answers only when the client disconnects, so
    waiting on it costs nothing per token, where polling `request.is_disconnected()` would.
    """
    while (await request.receive())["type"] != "http.disconnect":
        pass
    queue.put_nowait((None, None))


async def collect(submitted: Submitted, request: Request) -> list[list[Output]]:
    outputs = [[] for _ in submitted.sequences]
    async for choice, out in outputs_of(submitted, request):
        outputs[choice].append(out)
    if not all(outs and outs[-1].finish_reason for outs in outputs):
        # nginx's status for a client that closed the request; nobody reads the answer, /metrics counts it
        raise ApiError(499, "the client closed the connection before the answer was ready")
    return outputs


def sse(events, submitted: Submitted) -> StreamingResponse:
    """Server-sent events ending in [DONE]; a client that goes away cancels the request's choices."""

    async def body():
        try:
            async for event in events:
                yield f"data: {json.dumps(event)}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            submitted.cancel()

    return StreamingResponse(body(), media_type="text/event-stream")


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
    result = p.CompletionLogprobs()
    token_ids = [e.token_id if e else prompt_ids[0] for e in entries]
    for token_id, e in zip(token_ids, entries, strict=True):
        result.tokens.append(tokenizer.decode([token_id]))
        result.token_logprobs.append(e.logprob if e else None)
        result.top_logprobs.append({tokenizer.decode([t]): lp for t, lp in e.top} if e else None)
        result.text_offset.append(offset)
        offset += len(tokenizer.decode([token_id], skip_special_tokens=True))
    return result


def chat_logprobs(entries: list[TokenLogprob], tokenizer) -> p.ChatLogprobs:
    def top(token_id, logprob):
        text = tokenizer.decode([token_id])
        return p.TopLogprob(token=text, logprob=logprob, bytes=list(text.encode()))

    return p.ChatLogprobs(
        content=[
            p.ChatTokenLogprob(**top(e.token_id, e.logprob).model_dump(), top_logprobs=[top(t, lp) for t, lp in e.top])
            for e in entries
        ]
    )


async def stream_completion(submitted, jobs, body, header, tokenizer, request):
    offsets = [0] * len(jobs)
    outputs = [[] for _ in jobs]
    async for i, out in outputs_of(submitted, request):
        outputs[i].append(out)
        ids = jobs[i][0]
        text, entries = out.text, list(out.logprobs)
        if body.echo and len(outputs[i]) == 1:
            text, entries = prompt_text(body, ids, tokenizer) + text, (out.prompt_logprobs or []) + entries
        logprobs = None
        if body.logprobs is not None:
            logprobs = completion_logprobs(entries, ids, tokenizer, offsets[i]).model_dump()
        offsets[i] += len(text)
        if text or out.finish_reason:
            choice = {"index": i, "text": text, "logprobs": logprobs, "finish_reason": out.finish_reason}
            yield {**header, "object": "text_completion", "choices": [choice]}
    if body.stream_options and body.stream_options.include_usage:
        prompts = [ids for ids, _ in jobs[:: body.n]]
        yield {**header, "object": "text_completion", "choices": [], "usage": usage(prompts, outputs).model_dump()}


async def stream_chat(submitted, jobs, body, header, tokenizer, request):
    base = {**header, "object": "chat.completion.chunk"}
    for i in range(len(jobs)):
        yield {**base, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
    outputs = [[] for _ in jobs]
    async for i, out in outputs_of(submitted, request):
        outputs[i].append(out)
        if out.text or out.finish_reason:
            lps = chat_logprobs(out.logprobs, tokenizer).model_dump() if body.logprobs else None
            delta = {"content": out.text} if out.text else {}
            yield {
                **base,
                "choices": [{"index": i, "delta": delta, "logprobs": lps, "finish_reason": out.finish_reason}],
            }
    if body.stream_options and body.stream_options.include_usage:
        yield {**base, "choices": [], "usage": usage([jobs[0][0]], outputs).model_dump()}


def map_large_allocations(threshold: int = 64 * 1024) -> None:
    """Have glibc give every allocation above `threshold` bytes its own mapping, returned when freed.

    By default glibc raises this threshold after the first large frees, and from then on serves
    tensors from its heap; prompts batched at ever new shapes fragment that heap, and a server's
    memory kept growing over a soak (+160 MB over 1,600 requests, where it stays flat with this).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return  # not glibc: nothing to tune
    M_MMAP_THRESHOLD = -3
    libc.mallopt(M_MMAP_THRESHOLD, threshold)


def say(line: str) -> None:
    """A progress line on stderr, where the start banner goes too."""
    print(f"mai serve: {line}", file=sys.stderr, flush=True)


def serve(
    path: Path,
    host: str,
    port: int,
    api_key_env: str | None,
    max_batch: int,
    max_context: int | None,
    max_waiting: int,
    precision: str,
    compile: bool = False,
) -> None:
    """Load the model, start the engine and run uvicorn until interrupted."""
    api_key = None
    if api_key_env:
        api_key = os.environ.get(api_key_env)
        if not api_key:
            raise MaiError(f"environment variable {api_key_env} is empty or unset; export the API key in it")
    check_precision(precision)
    hint = "pick another with --port"
    with bind(host, port, hint) as sock:  # before loading, which can take a minute
        map_large_allocations()
        model, tokenizer, _ = load_pretrained(path, "cuda" if torch.cuda.is_available() else "cpu")
        model = to_decoding_precision(model, precision)  # as `mai generate` decodes, so greedy outputs agree
        context = model.config.max_seq_len
        if max_context is not None and max_context > context:
            raise MaiError(
                f"--max-context {max_context} is longer than this model's context of {context} tokens; "
                f"pass --max-context {context} or less, or leave it out",
                parameter="max_context",
            )
        context = max_context or context
        engine = Engine(model, tokenizer, max_batch, context, max_waiting, compile, log=say).start()
        settings = Settings(path.resolve().name, api_key)
        try:
            kv_cache = sum(t.nbytes for t in (*engine.cache.k, *engine.cache.v)) / 1e9
            ready = (
                f"mai serve: {url_of(sock)} (model {settings.model_name}, KV cache {max_batch} × {context} tokens "
                f"= {kv_cache:.2f} GB, chat page at /)"
            )
            run_app(build_app(engine, settings), sock, hint, ready)
        finally:
            engine.stop()
