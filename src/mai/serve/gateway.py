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
"""

import asyncio
import json
import os
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from prometheus_client import CollectorRegistry, Counter, Histogram
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mai.config import read_toml
from mai.errors import MaiError
from mai.serve.protocol import ErrorInfo, ErrorResponse, lone_surrogate, not_text
from mai.serve.web import add_health_and_metrics, add_route_errors, bind, error_response, run_app, url_of


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Backend(Section):
    url: str = Field(description="OpenAI-compatible base URL ending in /v1.")
    model: str = Field(description="The model name this backend expects.")
    weight: int = Field(1, ge=0, description="Share of the alias's traffic among its backends.")
    api_key_env: str | None = Field(None, description="Environment variable holding this backend's API key.")

    @field_validator("url")
    @classmethod
    def without_trailing_slash(cls, url: str) -> str:
        return url.rstrip("/")  # the gateway appends "/completions": ".../v1/" would ask for "/v1//completions"

    @property
    def name(self) -> str:
        return f"{self.url}#{self.model}"


class Route(Section):
    backends: list[Backend] = Field(min_length=1, description="Weighted primaries.")
    fallbacks: list[Backend] = Field([], description="Tried in order when the primary fails.")
    timeout_s: float = Field(60.0, gt=0, description="Seconds to connect to a backend or to wait for its next bytes.")


class ClientKey(Section):
    key_env: str = Field(description="Environment variable holding the key clients send as Bearer.")
    token_quota: int | None = Field(None, ge=0, description="Tokens per window; none means unlimited.")
    quota_window_s: float = Field(86400.0, gt=0, description="Length of the quota window.")


class GatewayConfig(Section):
    host: str = "127.0.0.1"
    port: int = 9000
    usage_log: str = Field("gateway_usage.jsonl", description="JSONL file, one line per request sent to backends.")
    models: dict[str, Route] = Field(min_length=1, description="Model alias → route.")
    keys: dict[str, ClientKey] = Field({}, description="Client key name → key and quota.")


def load_gateway_config(path: Path) -> GatewayConfig:
    if not path.exists():
        raise MaiError(f"{path} does not exist; write a gateway config (see `mai gateway --help`)")
    try:
        config = GatewayConfig.model_validate(read_toml(path))
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise MaiError(f"{path}: {where}: {first['msg']}") from None
    check_backends(config)
    check_usage_log(config.usage_log)
    return config


def check_backends(config: GatewayConfig) -> None:
    """Every backend's url is a full http(s) URL and its api_key_env is set now, rather than each of its
    requests failing later."""
    for alias, route in config.models.items():
        for backend in (*route.backends, *route.fallbacks):
            url = urlsplit(backend.url)
            if url.scheme not in ("http", "https") or not url.netloc:
                raise MaiError(
                    f"model {alias}: backend {backend.name}: url {backend.url!r} is not an http:// or https:// URL; "
                    'write the base URL in full, as in url = "http://127.0.0.1:8000/v1"'
                )
            if backend.api_key_env and not os.environ.get(backend.api_key_env):
                raise MaiError(
                    f"model {alias}: backend {backend.name}: environment variable {backend.api_key_env} "
                    "is empty or unset; export its API key"
                )


def check_usage_log(usage_log: str) -> None:
    """The usage log can be appended to now, rather than each request failing to log later."""
    path = Path(usage_log)
    if path.is_dir():
        problem = "is a directory"
    elif not path.parent.is_dir():
        problem = f"is in {path.parent}, which is not a directory"
    elif not os.access(path if path.exists() else path.parent, os.W_OK):
        problem = "is not writable"
    else:
        return
    raise MaiError(f"usage_log {usage_log} {problem}; set usage_log to a file the gateway can append to")


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


def build_gateway(config: GatewayConfig) -> FastAPI:
    app = FastAPI(title="mai gateway", description="OpenAI-compatible routing over model backends.", version="1")
    quotas, metrics = Quotas(config.keys), GatewayMetrics()
    pickers = {alias: WeightedRoundRobin([b.weight for b in route.backends]) for alias, route in config.models.items()}
    client = httpx.AsyncClient(limits=httpx.Limits(max_connections=None))  # a stream holds one for its length
    log_lock = threading.Lock()
    created = int(time.time())
    add_route_errors(app)

    def log_usage(record: dict) -> None:
        """Append `record`; a failure (the log moved, its disk full) goes to stderr, never to the client."""
        try:
            with log_lock, open(config.usage_log, "a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as e:
            print(f"mai gateway: cannot append to usage_log {config.usage_log}: {e}", file=sys.stderr, flush=True)

    def order(alias: str) -> list[Backend]:
        route = config.models[alias]
        first = pickers[alias].pick()
        return [route.backends[first], *(b for i, b in enumerate(route.backends) if i != first), *route.fallbacks]

    add_health_and_metrics(app, metrics.registry)

    @app.get("/v1/models")
    def models(request: Request):
        if quotas.client(request.headers.get("authorization", "")) is None:
            return error_response(
                401, "missing or unknown API key: send 'Authorization: Bearer KEY'", "authentication_error"
            )
        cards = [
            {"id": alias, "object": "model", "created": created, "owned_by": "mai-gateway"} for alias in config.models
        ]
        return {"object": "list", "data": cards}

    async def forward(request: Request, path: str):
        client_name = quotas.client(request.headers.get("authorization", ""))
        if client_name is None:
            return error_response(
                401, "missing or unknown API key: send 'Authorization: Bearer KEY'", "authentication_error"
            )
        try:
            # json.loads takes NaN and Infinity, which the request to the backend could not carry
            body = json.loads(await request.body(), parse_constant=not_a_json_number)
        except ValueError as e:
            return error_response(400, f"the body is not JSON ({e}); send an OpenAI request object")
        where = lone_surrogate(body, "")
        if where:  # the backend request could not be encoded
            return error_response(400, f"invalid request: {not_text(where)}", param=where.split(".")[0])
        alias = body.get("model") if isinstance(body, dict) else None
        if not isinstance(alias, str):
            message = f'the body needs a "model" field: send a JSON object with "model" one of {sorted(config.models)}'
            return error_response(400, message, param="model")
        if alias not in config.models:
            message = f"model {alias!r} is not routed here; known: {sorted(config.models)}"
            return error_response(404, message, param="model")
        if body.get("stream") is not None and not isinstance(body["stream"], bool):  # "false" is truthy
            message = f"stream must be true or false (a JSON boolean), not {json.dumps(body['stream'])}"
            return error_response(400, message, param="stream")
        if not isinstance(body.get("stream_options") or {}, dict):  # the gateway adds include_usage to it
            return error_response(400, "stream_options must be an object", param="stream_options")
        left, reset_s = quotas.remaining(client_name)
        if left is not None and left <= 0:
            message = f"token quota of key {client_name} is used up; it resets in {reset_s:.0f} s"
            return error_response(429, message, "rate_limit_error", headers={"Retry-After": str(max(1, int(reset_s)))})
        route = config.models[alias]
        start, attempts, failures = time.perf_counter(), [], []  # seconds in the usage log: fallbacks included
        for i, backend in enumerate(order(alias)):
            if i:
                metrics.fallbacks.labels(alias).inc()
            attempts.append(backend.name)
            try:
                response, content = await attempt(backend, path, body, route.timeout_s)
            except BackendFailed as e:
                failures.append(str(e))
                continue
            return answer(response, content, backend, body, alias, client_name, attempts, start)
        message = f"every backend of {alias!r} failed: {'; '.join(failures)}"
        log_usage(usage_line(client_name, alias, None, attempts, 502, {}, start))  # no backend answered
        return error_response(502, message, "server_error")

    async def attempt(
        backend: Backend, path: str, body: dict, timeout_s: float
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
        upstream = client.build_request("POST", f"{backend.url}{path}", json=sent, headers=headers, timeout=timeout_s)
        start, response = time.perf_counter(), None
        try:
            response = await client.send(upstream, stream=True)
            metrics.latency.labels(backend.name).observe(time.perf_counter() - start)
            content = await head_of(response, bool(body.get("stream")), timeout_s)
        except (httpx.HTTPError, TimeoutError, BackendFailed) as e:
            if response is not None:
                await response.aclose()
            outcome = str(e) if isinstance(e, BackendFailed) else type(e).__name__
            metrics.requests.labels(backend.name, outcome).inc()
            what = failure(backend, outcome)
            print(f"mai gateway: backend failed: {what}", file=sys.stderr, flush=True)
            raise BackendFailed(what) from None
        metrics.requests.labels(backend.name, str(response.status_code)).inc()
        return response, content

    def answer(response, content, backend, body, alias, client_name, attempts, start):
        def record(usage: dict, status: int) -> None:
            prompt, completion = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
            metrics.tokens.labels(backend.name, "prompt").inc(prompt)
            metrics.tokens.labels(backend.name, "completion").inc(completion)
            quotas.spend(client_name, prompt + completion)
            log_usage(usage_line(client_name, alias, backend.name, attempts, status, usage, start))

        if isinstance(content, bytes):
            try:
                usage = json.loads(content).get("usage") or {}
            except (ValueError, AttributeError):
                usage = {}
            record(usage, response.status_code)
            media = response.headers.get("content-type", "application/json")
            return Response(content, status_code=response.status_code, media_type=media)

        wants_usage = (body.get("stream_options") or {}).get("include_usage")

        async def relay():
            usage, chunks, skip_blank, status = {}, 0, False, 200
            try:
                async for line in content:
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
                record(usage or {"completion_tokens": chunks}, status)  # a backend without usage chunks: one per event

        return StreamingResponse(relay(), media_type="text/event-stream")

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await forward(request, "/completions")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await forward(request, "/chat/completions")

    return app


def run_gateway(path: Path) -> None:
    config = load_gateway_config(path)
    hint = f"set another port in {path}"
    with bind(config.host, config.port, hint) as sock:
        ready = f"mai gateway: {url_of(sock)} (models {', '.join(config.models)})"
        run_app(build_gateway(config), sock, hint, ready)
