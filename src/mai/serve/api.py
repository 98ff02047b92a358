"""The HTTP app of `mai serve`: an OpenAI-compatible API over a started engine.

Routes: GET /v1/models, POST /v1/completions, POST /v1/chat/completions (both streaming as SSE
ending in `data: [DONE]`), GET /health, GET /metrics (Prometheus), and the chat page at GET /.
Errors leave in OpenAI's shape from http.py's `add_error_handlers`.
"""

import json
import time
from dataclasses import dataclass
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.responses import FileResponse, StreamingResponse
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from mai.errors import MaiError
from mai.serve import protocol as p
from mai.serve.engine import Engine, Sequence
from mai.serve.handoff import Submitted, collect
from mai.serve.http import add_error_handlers, add_health_and_metrics
from mai.serve.serving import OpenAIServing

STATIC = Path(__file__).parent / "static"


@dataclass(frozen=True)
class AppSettings:
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


def build_app(engine: Engine, settings: AppSettings) -> FastAPI:
    """The FastAPI app over a started engine."""
    app = FastAPI(title="mai", description="OpenAI-compatible API over a mai model.", version="1")
    metrics = Metrics(engine)
    engine.on_token = metrics.on_token
    serving = OpenAIServing(engine, settings.model_name)
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
            raise MaiError(
                "missing or wrong API key: send 'Authorization: Bearer KEY'", status=401, type="authentication_error"
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

    async def answer(body, request: Request, jobs, id_prefix: str, chunks, response):
        """One endpoint's reply to its jobs: an event stream of chunks, or the whole response."""
        submitted = Submitted(engine, jobs)
        header = serving.header(id_prefix)
        if body.stream:
            return sse(chunks(submitted, jobs, body, header, request), submitted)
        return response(body, header, jobs, await collect(submitted, request))

    @app.post("/v1/completions", dependencies=[Depends(check_key)], response_model=None)
    async def completions(body: p.CompletionRequest, request: Request):
        jobs = serving.completion_jobs(body)
        return await answer(body, request, jobs, "cmpl", serving.completion_chunks, serving.completion_response)

    @app.post("/v1/chat/completions", dependencies=[Depends(check_key)], response_model=None)
    async def chat_completions(body: p.ChatCompletionRequest, request: Request):
        jobs = serving.chat_jobs(body)
        return await answer(body, request, jobs, "chatcmpl", serving.chat_chunks, serving.chat_response)

    return app


def name_served_model(app: FastAPI, model_name: str) -> None:
    """The OpenAPI schema lists the one model this server accepts, so generated clients and fuzzers can use it."""
    openapi = app.openapi

    def schema() -> dict:
        if app.openapi_schema is None:
            for request in ("CompletionRequest", "ChatCompletionRequest"):
                openapi()["components"]["schemas"][request]["properties"]["model"]["enum"] = [model_name]
        return app.openapi_schema

    app.openapi = schema


def sse(chunks, submitted: Submitted) -> StreamingResponse:
    """Server-sent events ending in [DONE]; a client that goes away cancels the request's choices."""

    async def body():
        try:
            async for chunk in chunks:
                yield f"data: {json.dumps(chunk.model_dump(exclude_unset=True))}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            submitted.cancel()

    return StreamingResponse(body(), media_type="text/event-stream")
