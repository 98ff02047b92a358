"""Requests to a teacher behind an OpenAI-compatible API, as a remote vendor's API needs them made:
under request and token rate limits, within a spending cap, and retried on what a flaky service
does (429 with Retry-After, 5xx, timeouts, dropped connections, streams cut short).

The official `openai` async client makes the requests with its own retries off, so that every
retry goes through the rate limiter and is counted. A 4xx other than 408/409/429 is the caller's
mistake (a wrong model name or key) and stops the run with the server's message.
"""

import asyncio
import os
import random
import time
from collections import deque
from dataclasses import dataclass, field

import httpx
import openai

from mai.config import SynthConfig
from mai.errors import MaiError
from mai.run_files import encode_logprobs

RETRIED_STATUS = {408, 409, 429}
MAX_BACKOFF_SECONDS = 60.0


@dataclass
class Reply:
    """What the teacher wrote for one request."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    logprobs: dict | None  # encode_logprobs' compact form, when asked for
    attempts: int = 1
    seconds: float = 0.0


class Retryable(Exception):
    """A failure worth retrying; retry_after is the server's Retry-After in seconds, if it sent one."""

    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.retry_after = retry_after


class RateLimiter:
    """Requests and tokens per minute over a sliding minute, and a pause all requests honour after a 429."""

    def __init__(self, requests_per_minute: int, tokens_per_minute: int):
        self.rpm, self.tpm = requests_per_minute, tokens_per_minute
        self.window: deque[list] = deque()  # [start time, tokens] per request of the last minute
        self.paused_until = 0.0

    def _wait_seconds(self, tokens: int, now: float) -> float:
        while self.window and self.window[0][0] <= now - 60:
            self.window.popleft()
        wait = self.paused_until - now
        if self.rpm and len(self.window) >= self.rpm:
            wait = max(wait, self.window[0][0] + 60 - now)
        used = sum(t for _, t in self.window)
        if self.tpm and self.window and used + tokens > self.tpm:
            wait = max(wait, self.window[0][0] + 60 - now)
        return wait

    async def acquire(self, tokens: int) -> list:
        """Wait until a request of about `tokens` tokens fits; its entry, to correct with the real count."""
        while (wait := self._wait_seconds(tokens, time.monotonic())) > 0:
            await asyncio.sleep(wait)
        entry = [time.monotonic(), tokens]
        self.window.append(entry)
        return entry

    def pause(self, seconds: float) -> None:
        self.paused_until = max(self.paused_until, time.monotonic() + seconds)


@dataclass
class Budget:
    """The spending cap: what earlier replies spent, plus a reservation for each request in flight."""

    max_tokens: int
    max_cost: float
    tokens: int = 0
    cost: float = 0.0
    reserved_tokens: int = 0
    reserved_cost: float = 0.0
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    def fits(self, tokens: int, cost: float, reserved: bool = True) -> bool:
        extra_tokens = self.reserved_tokens if reserved else 0
        extra_cost = self.reserved_cost if reserved else 0.0
        return (not self.max_tokens or self.tokens + extra_tokens + tokens <= self.max_tokens) and (
            not self.max_cost or self.cost + extra_cost + cost <= self.max_cost + 1e-12
        )

    async def reserve(self, tokens: int, cost: float) -> bool:
        """Wait until a request costing at most (tokens, cost) fits beside those in flight; False if it
        cannot fit even when none is in flight (the cap is reached)."""
        async with self.changed:
            while not self.fits(tokens, cost):
                if not self.fits(tokens, cost, reserved=False):
                    return False
                await self.changed.wait()
            self.reserved_tokens += tokens
            self.reserved_cost += cost
            return True

    async def settle(self, reserved: tuple[int, float], spent: tuple[int, float]) -> None:
        async with self.changed:
            self.reserved_tokens -= reserved[0]
            self.reserved_cost -= reserved[1]
            self.tokens += spent[0]
            self.cost += spent[1]
            self.changed.notify_all()


def cost_of(config: SynthConfig, prompt_tokens: int, completion_tokens: int) -> float:
    return (prompt_tokens * config.input_price_per_million + completion_tokens * config.output_price_per_million) / 1e6


def estimate_prompt_tokens(messages: list[dict]) -> int:
    """A prompt's tokens before the server counts them: ~4 characters a token, plus the turn markers."""
    return sum(len(m["content"]) // 4 + 4 for m in messages)


def make_client(config: SynthConfig) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=config.base_url,
        api_key=os.environ.get(config.api_key_env) or "none",
        max_retries=0,
        timeout=config.timeout,
    )


def retry_after(response: httpx.Response | None) -> float | None:
    """The Retry-After header in seconds (a number; an HTTP date is not worth parsing here)."""
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


async def request_once(client: openai.AsyncOpenAI, config: SynthConfig, messages: list, params: dict) -> Reply:
    """One request; a failure worth retrying raises Retryable, the caller's mistake a MaiError."""
    try:
        if config.stream:
            return await _streamed(client, config, messages, params)
        response = await client.chat.completions.create(model=config.model, messages=messages, **params)
    except openai.APIStatusError as e:
        if e.status_code in RETRIED_STATUS or e.status_code >= 500:
            raise Retryable(f"HTTP {e.status_code}", retry_after(e.response)) from None
        raise MaiError(
            f"the teacher at {config.base_url} refused the request (HTTP {e.status_code}: {e.message}); "
            f"check synth.model ({config.model!r}) and the key in ${config.api_key_env}"
        ) from None
    except (openai.APIConnectionError, httpx.TransportError) as e:  # APITimeoutError is a connection error
        raise Retryable(type(e).__name__) from None
    if not response.choices or response.choices[0].message.content is None:
        raise Retryable("a reply without text")
    choice = response.choices[0]
    logprobs = choice.logprobs.content if choice.logprobs and choice.logprobs.content else None
    usage = response.usage
    return Reply(
        choice.message.content,
        choice.finish_reason,
        usage.prompt_tokens if usage else estimate_prompt_tokens(messages),
        usage.completion_tokens if usage else len(choice.message.content) // 4,
        encode_logprobs(logprobs, config.top_logprobs) if logprobs and config.top_logprobs else None,
    )


async def _streamed(client: openai.AsyncOpenAI, config: SynthConfig, messages: list, params: dict) -> Reply:
    """The streamed form of request_once: a stream that ends before its finish_reason is retried."""
    stream = await client.chat.completions.create(
        model=config.model, messages=messages, stream=True, stream_options={"include_usage": True}, **params
    )
    pieces, entries, finish_reason, usage = [], [], None, None
    async for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            if choice.logprobs and choice.logprobs.content:
                entries += choice.logprobs.content
            finish_reason = choice.finish_reason or finish_reason
    if finish_reason is None:
        raise Retryable("the stream ended before its finish_reason")
    text = "".join(pieces)
    return Reply(
        text,
        finish_reason,
        usage.prompt_tokens if usage else estimate_prompt_tokens(messages),
        usage.completion_tokens if usage else len(text) // 4,
        encode_logprobs(entries, config.top_logprobs) if entries and config.top_logprobs else None,
    )


def backoff_seconds(config: SynthConfig, attempt: int, server_says: float | None) -> float:
    """Exponential backoff with full jitter (so that retries of many requests spread out), or
    what the server's Retry-After asks for, plus a little jitter."""
    if server_says is not None:
        return server_says + random.uniform(0, config.retry_base_seconds / 4)
    return random.uniform(0, min(MAX_BACKOFF_SECONDS, config.retry_base_seconds * 2**attempt))


async def request(
    client: openai.AsyncOpenAI, config: SynthConfig, limiter: RateLimiter, messages: list, params: dict
) -> Reply:
    """request_once until it succeeds, config.max_retries times at most, each through the rate limiter."""
    started = time.monotonic()
    estimate = estimate_prompt_tokens(messages) + params["max_tokens"]
    attempt = 0
    while True:
        entry = await limiter.acquire(estimate)
        try:
            reply = await request_once(client, config, messages, params)
        except Retryable as e:
            if attempt == config.max_retries:
                raise MaiError(
                    f"the teacher at {config.base_url} failed {attempt + 1} times ({e}); "
                    "rerun `mai synth` to continue (finished samples are kept), or raise synth.max_retries"
                ) from None
            wait = backoff_seconds(config, attempt, e.retry_after)
            if e.retry_after is not None:
                limiter.pause(wait)  # the server asked every request to wait, not just this one
            await asyncio.sleep(wait)
            attempt += 1
            continue
        entry[1] = reply.prompt_tokens + reply.completion_tokens
        reply.attempts, reply.seconds = attempt + 1, time.monotonic() - started
        return reply
