"""`mai gateway CONFIG`: one OpenAI-compatible front over in-house servers and external vendors.

Each model alias routes to weighted backends (smooth weighted round-robin, so a 3:1 split is
exactly 3:1) and then to ordered fallbacks; a backend that errs before the client has any of its
answer (connection failure, timeout, a stream without a first event within timeout_s, 401 or 403
refusing the gateway's own key, 404 for its model or route, 429 or 5xx) passes the request to the next, and each such failure
is a line on stderr. A stream whose backend fails after the client had part of it ends with an
error event. Client keys (Bearer, values read from environment variables) carry token quotas;
every request that reached the backends (answered, or a 502 when all of them failed) is appended
to a JSONL usage log, and /metrics counts requests, tokens and latency per backend. An example
config:

    port = 9000
    usage_log = "gateway_usage.jsonl"

    [models.chat]                       # clients send model="chat"
    timeout_s = 60
    backends = [                        # weighted split for A/B comparison
      {url = "http://127.0.0.1:8000/v1", model = "small", weight = 3},
      {url = "http://127.0.0.1:8001/v1", model = "large", weight = 1},
    ]
    fallbacks = [                       # tried in order when the chosen backend fails
      {url = "https://api.vendor.example/v1", model = "vendor-model", api_key_env = "VENDOR_API_KEY"},
    ]

    [keys.team-a]                       # without [keys], the gateway is open and unmetered
    key_env = "TEAM_A_KEY"
    token_quota = 1_000_000             # prompt + completion tokens per quota window
    quota_window_s = 86400

Every field, with its default and its check, is in gateway_config.py.
"""

import asyncio
import json
import os
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from prometheus_client import CollectorRegistry, Counter, Histogram

from mai.errors import InternalError, MaiError
from mai.serve.gateway_config import Backend, ClientKey, GatewayConfig, load_gateway_config
from mai.serve.http import add_error_handlers, add_health_and_metrics, bind, run_app, url_of
from mai.serve.protocol import ErrorInfo, ErrorResponse, lone_surrogate, not_text


class WeightedRoundRobin:
    """Smooth weighted round-robin (as nginx): over any sum(weights) picks, each backend gets its weight."""

    def __init__(self, weights: list[int]):
        self.weights, self.current, self.lock = weights, [0] * len(weights), threading.Lock()

    def pick(self) -> int:
        with self.lock:
            self.current = [c + w for c, w in zip(self.current, self.weights, strict=True)]
            best = max(range(len(self.current)), key=self.current.__getitem__)
            self.current[best] -= sum(self.weights)
            return best


class Quotas:
    """Tokens used per client key in the current window."""

    def __init__(self, keys: dict[str, ClientKey]):
        self.keys = keys
        self.secrets = {}
        for name, key in keys.items():
            secret = os.environ.get(key.key_env)
            if not secret:
                raise MaiError(f"key {name}: environment variable {key.key_env} is empty or unset; export the key")
            if secret in self.secrets:
                other = self.secrets[secret]
                raise MaiError(
                    f"keys {other} and {name} hold the same secret ({keys[other].key_env} and {key.key_env}); "
                    "give each its own, as quotas and the usage log count per key"
                )
            self.secrets[secret] = name
        self.used = {name: 0 for name in keys}
        self.window_start = {name: time.monotonic() for name in keys}

    def client(self, authorization: str) -> str | None:
        """The key name for an Authorization header; "" when the gateway is open; None when refused."""
        if not self.keys:
            return ""
        return self.secrets.get(authorization.removeprefix("Bearer "))

    def remaining(self, name: str) -> tuple[int | None, float]:
        """Tokens left in the window (None: unlimited) and seconds until it resets."""
        key = self.keys.get(name)
        if key is None or key.token_quota is None:
            return None, 0.0
        elapsed = time.monotonic() - self.window_start[name]
        if elapsed >= key.quota_window_s:
            self.used[name], self.window_start[name], elapsed = 0, time.monotonic(), 0.0
        return key.token_quota - self.used[name], key.quota_window_s - elapsed

    def spend(self, name: str, tokens: int) -> None:
        if name in self.used:
            self.used[name] += tokens


class GatewayMetrics:
    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("mai_gateway_requests", "Backend attempts", ["backend", "status"], registry=r)
        self.tokens = Counter("mai_gateway_tokens", "Tokens through each backend", ["backend", "kind"], registry=r)
        self.latency = Histogram("mai_gateway_latency_seconds", "Backend response time", ["backend"], registry=r)
        self.fallbacks = Counter("mai_gateway_fallbacks", "Requests passed to a later backend", ["model"], registry=r)


def usage_line(
    key: str, alias: str, backend: str | None, attempts: list[str], status: int, usage: dict, start: float
) -> dict:
    """A usage log record; `backend` is None (and the tokens 0) when every backend failed."""
    return {
        "time": time.time(),
        "key": key,
        "model": alias,
        "backend": backend,
        "attempts": attempts,
        "status": status,
        "prompt_tokens": usage.get("prompt_tokens", 0),
        "completion_tokens": usage.get("completion_tokens", 0),
        "seconds": round(time.perf_counter() - start, 4),  # from the first attempt to the answer's last byte
    }


def not_a_json_number(constant: str):
    raise ValueError(f"{constant} is not a JSON number")


class BackendFailed(Exception):
    """An attempt that failed, before the client had any of its answer, in a way the next backend might not."""


def failure(backend: Backend, outcome: str) -> str:
    """What went wrong, for stderr and the client's 502; `outcome` is a status code or an exception's name."""
    if outcome == "404":
        return f"{backend.name}: 404, no such model or route there: check the backend's url and model"
    if outcome not in ("401", "403"):
        return f"{backend.name}: {outcome}"
    if backend.api_key_env:
        return f"{backend.name}: {outcome}, refusing the gateway's own key: check {backend.api_key_env}"
    return f"{backend.name}: {outcome}, wanting a key the gateway does not send: set its api_key_env"


async def head_of(response: httpx.Response, stream: bool, timeout_s: float) -> bytes | AsyncIterator[str]:
    """The whole body; for a 200 stream, its lines from the first, once its first event came within timeout_s.

    Raises BackendFailed on a status the next backend might not answer, or a stream that ends without events.
    """
    status = response.status_code
    if status in (401, 403, 404, 429) or status >= 500:  # 401-404: the gateway's config, not the client's request
        raise BackendFailed(str(status))
    if not stream or status != 200:
        return await response.aread()
    lines, head = response.aiter_lines(), []
    async with asyncio.timeout(timeout_s):  # overall, as keep-alive comments would reset a per-read timeout
        async for line in lines:
            head.append(line)
            if line.startswith("data:"):
                return replayed(head, lines)
    raise BackendFailed("a stream without events")


async def replayed(head: list[str], rest: AsyncIterator[str]) -> AsyncIterator[str]:
    for line in head:
        yield line
    async for line in rest:
        yield line


def error_event(message: str) -> str:
    """An OpenAI-style error event; the blank line first ends any event the backend left half sent."""
    error = ErrorResponse(error=ErrorInfo(message=message, type="server_error"))
    return f"\ndata: {error.model_dump_json()}\n\n"


class Gateway:
    """The routing of one config: backend order, quotas, the usage log, attempts, and the relay of answers."""

    def __init__(self, config: GatewayConfig):
        self.config = config
        self.quotas, self.metrics = Quotas(config.keys), GatewayMetrics()
        self.pickers = {
            alias: WeightedRoundRobin([b.weight for b in route.backends]) for alias, route in config.models.items()
        }
        self.client = httpx.AsyncClient(limits=httpx.Limits(max_connections=None))  # a stream holds one for its length
        self.log_lock = threading.Lock()
        self.created = int(time.time())

    def app(self) -> FastAPI:
        """The gateway's routes over this router."""
        app = FastAPI(title="mai gateway", description="OpenAI-compatible routing over model backends.", version="1")
        add_error_handlers(app)
        add_health_and_metrics(app, self.metrics.registry)
        app.get("/v1/models")(self.models)

        @app.post("/v1/completions")
        async def completions(request: Request):
            return await self.forward(request, "/completions")

        @app.post("/v1/chat/completions")
        async def chat_completions(request: Request):
            return await self.forward(request, "/chat/completions")

        return app

    def log_usage(self, record: dict) -> None:
        """Append `record`; a failure (the log moved, its disk full) goes to stderr, never to the client."""
        try:
            with self.log_lock, open(self.config.usage_log, "a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as e:
            print(f"mai gateway: cannot append to usage_log {self.config.usage_log}: {e}", file=sys.stderr, flush=True)

    def order(self, alias: str) -> list[Backend]:
        """The backends to try: the picked primary, the other primaries, then the fallbacks."""
        route = self.config.models[alias]
        first = self.pickers[alias].pick()
        return [route.backends[first], *(b for i, b in enumerate(route.backends) if i != first), *route.fallbacks]

    def client_of(self, request: Request) -> str:
        """The client key's name ("" when the gateway is open); a 401 for a missing or unknown key."""
        name = self.quotas.client(request.headers.get("authorization", ""))
        if name is None:
            raise MaiError(
                "missing or unknown API key: send 'Authorization: Bearer KEY'", status=401, type="authentication_error"
            )
        return name

    def models(self, request: Request):
        self.client_of(request)
        cards = [
            {"id": alias, "object": "model", "created": self.created, "owned_by": "mai-gateway"}
            for alias in self.config.models
        ]
        return {"object": "list", "data": cards}

    async def forward(self, request: Request, path: str):
        client_name = self.client_of(request)
        body = await self.read_body(request)
        alias = body["model"]
        left, reset_s = self.quotas.remaining(client_name)
        if left is not None and left <= 0:
            raise MaiError(
                f"token quota of key {client_name} is used up; it resets in {reset_s:.0f} s",
                status=429,
                type="rate_limit_error",
                headers={"Retry-After": str(max(1, int(reset_s)))},
            )
        route = self.config.models[alias]
        start, attempts, failures = time.perf_counter(), [], []  # seconds in the usage log: fallbacks included
        for i, backend in enumerate(self.order(alias)):
            if i:
                self.metrics.fallbacks.labels(alias).inc()
            attempts.append(backend.name)
            try:
                response, content = await self.attempt(backend, path, body, route.timeout_s)
            except BackendFailed as e:
                failures.append(str(e))
                continue
            return self.answer(response, content, backend, body, alias, client_name, attempts, start)
        self.log_usage(usage_line(client_name, alias, None, attempts, 502, {}, start))  # no backend answered
        raise InternalError(f"every backend of {alias!r} failed: {'; '.join(failures)}", status=502)

    async def read_body(self, request: Request) -> dict:
        """The request body, checked as far as routing it and sending it on needs: JSON an alias routed here."""
        try:
            # json.loads takes NaN and Infinity, which the request to the backend could not carry
            body = json.loads(await request.body(), parse_constant=not_a_json_number)
        except ValueError as e:
            raise MaiError(f"the body is not JSON ({e}); send an OpenAI request object") from None
        where = lone_surrogate(body, "")
        if where:  # the backend request could not be encoded
            raise MaiError(f"invalid request: {not_text(where)}", parameter=where.split(".")[0])
        alias = body.get("model") if isinstance(body, dict) else None
        if not isinstance(alias, str):
            raise MaiError(
                f'the body needs a "model" field: send a JSON object with "model" one of {sorted(self.config.models)}',
                parameter="model",
            )
        if alias not in self.config.models:
            raise MaiError(
                f"model {alias!r} is not routed here; known: {sorted(self.config.models)}",
                parameter="model",
                status=404,
            )
        if body.get("stream") is not None and not isinstance(body["stream"], bool):  # "false" is truthy
            raise MaiError(
                f"stream must be true or false (a JSON boolean), not {json.dumps(body['stream'])}", parameter="stream"
            )
        if not isinstance(body.get("stream_options") or {}, dict):  # the gateway adds include_usage to it
            raise MaiError("stream_options must be an object", parameter="stream_options")
        return body

    async def attempt(
        self, backend: Backend, path: str, body: dict, timeout_s: float
    ) -> tuple[httpx.Response, bytes | AsyncIterator[str]]:
        """The backend's response and its whole body, or a stream's lines (see head_of).

        Raises BackendFailed, counted in /metrics and printed, when the attempt failed.
        """
        headers = {}
        if backend.api_key_env:
            headers["Authorization"] = f"Bearer {os.environ[backend.api_key_env]}"  # checked at start
        sent = {**body, "model": backend.model}
        if body.get("stream"):  # ask for the usage chunk, so quotas count streamed tokens exactly
            sent["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        upstream = self.client.build_request(
            "POST", f"{backend.url}{path}", json=sent, headers=headers, timeout=timeout_s
        )
        start, response = time.perf_counter(), None
        try:
            response = await self.client.send(upstream, stream=True)
            self.metrics.latency.labels(backend.name).observe(time.perf_counter() - start)
            content = await head_of(response, bool(body.get("stream")), timeout_s)
        except (httpx.HTTPError, TimeoutError, BackendFailed) as e:
            if response is not None:
                await response.aclose()
            outcome = str(e) if isinstance(e, BackendFailed) else type(e).__name__
            self.metrics.requests.labels(backend.name, outcome).inc()
            what = failure(backend, outcome)
            print(f"mai gateway: backend failed: {what}", file=sys.stderr, flush=True)
            raise BackendFailed(what) from None
        self.metrics.requests.labels(backend.name, str(response.status_code)).inc()
        return response, content

    def answer(self, response, content, backend, body, alias, client_name, attempts, start):
        """The backend's answer to the client, its tokens counted against the key and in the usage log."""

        def record(usage: dict, status: int) -> None:
            prompt, completion = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
            self.metrics.tokens.labels(backend.name, "prompt").inc(prompt)
            self.metrics.tokens.labels(backend.name, "completion").inc(completion)
            self.quotas.spend(client_name, prompt + completion)
            self.log_usage(usage_line(client_name, alias, backend.name, attempts, status, usage, start))

        if isinstance(content, bytes):
            try:
                usage = json.loads(content).get("usage") or {}
            except (ValueError, AttributeError):
                usage = {}
            record(usage, response.status_code)
            media = response.headers.get("content-type", "application/json")
            return Response(content, status_code=response.status_code, media_type=media)
        wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return StreamingResponse(relay(response, content, backend, wants_usage, record), media_type="text/event-stream")


async def relay(response: httpx.Response, lines: AsyncIterator[str], backend: Backend, wants_usage: bool, record):
    """A backend's stream to the client, less the usage chunk the gateway asked for and the client did not;
    `record(usage, status)` gets its usage (or one token per event, from a backend without usage chunks)."""
    usage, chunks, skip_blank, status = {}, 0, False, 200
    try:
        async for line in lines:
            if skip_blank and not line:
                skip_blank = False
                continue
            if line.startswith("data: {"):
                chunk = json.loads(line[6:])
                chunks += 1
                if chunk.get("usage"):
                    usage = chunk["usage"]
                    if not chunk.get("choices") and not wants_usage:
                        skip_blank = True  # the usage chunk the gateway asked for, not the client
                        continue
            yield line + "\n"
    except (httpx.HTTPError, ValueError) as e:  # the client has part of the answer: too late to fall back
        cause = "sent a chunk that is not JSON" if isinstance(e, ValueError) else type(e).__name__
        status, message = 502, f"backend {backend.name} failed mid-stream: {cause}"
        print(f"mai gateway: {message}", file=sys.stderr, flush=True)
        yield error_event(message)
    finally:
        await response.aclose()
        record(usage or {"completion_tokens": chunks}, status)


def run_gateway(path: Path) -> None:
    config = load_gateway_config(path)
    hint = f"set another port in {path}"
    with bind(config.host, config.port, hint) as sock:
        ready = f"mai gateway: {url_of(sock)} (models {', '.join(config.models)})"
        run_app(Gateway(config).app(), sock, hint, ready)
