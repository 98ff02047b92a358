"""Robustness: schemathesis fuzzes the OpenAPI schema without a 5xx; a soak leaves the server as it found it."""

import asyncio
import random
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from serve.live_server import Server

SCHEMATHESIS = str(Path(sys.executable).parent / "schemathesis")


@pytest.fixture(scope="module")
def fuzz_server(trained_run):
    """A short context: fuzzed requests that ask for every token that fits then take a quarter of the time."""
    server = Server(trained_run.path, "--max-context", "64", "--max-waiting", "64")
    yield server
    server.stop()


@pytest.mark.slow  # fuzzes the API with schemathesis
def test_schemathesis_finds_no_server_error(fuzz_server, tmp_path):
    server = fuzz_server
    result = subprocess.run(
        [SCHEMATHESIS, "run", f"{server.url}/openapi.json", "--checks", "not_a_server_error"]
        + ["--max-examples", "25", "--seed", "1", "--workers", "1", "--request-timeout", "60", "--no-color"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,  # where it keeps its example database
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert "Server error" not in result.stdout


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def soak_server(trained_run):
    server = Server(trained_run.path, "--max-batch", "16", "--max-waiting", "24")
    yield server
    server.stop()


async def one_request(client: httpx.AsyncClient, server: Server, rng: random.Random) -> str:
    """One client: plain or streaming, chat or completion; a fifth of streams hang up after two events."""
    chat, stream = rng.random() < 0.5, rng.random() < 0.5
    body = {"model": server.model, "max_tokens": rng.randint(1, 32), "temperature": rng.choice([0, 0.8])}
    if chat:
        path, body["messages"] = "/v1/chat/completions", [{"role": "user", "content": "Speak, " * rng.randint(1, 20)}]
    else:
        path, body["prompt"] = "/v1/completions", "ROMEO: " * rng.randint(1, 20)
    if not stream:
        response = await client.post(path, json=body)
        return str(response.status_code)
    body["stream"] = True
    async with client.stream("POST", path, json=body) as response:
        if response.status_code != 200:
            return str(response.status_code)
        hang_up = rng.random() < 0.2
        events = 0
        async for line in response.aiter_lines():
            events += line.startswith("data: ")
            if hang_up and events == 2:
                return "hung up"
            if line == "data: [DONE]":
                return "200"
    return "stream ended without [DONE]"


async def soak(server: Server, requests: int, concurrency: int) -> list[str]:
    rng = random.Random(0)
    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as client:

        async def gated():
            async with gate:
                outcome = await one_request(client, server, rng)
                if outcome == "429":
                    await asyncio.sleep(1)  # as Retry-After asks, before this client's next request
                return outcome

        return await asyncio.gather(*(gated() for _ in range(requests)))


@pytest.mark.slow  # a soak of 1,600 requests
def test_soak_every_request_answered_and_memory_returns(soak_server):
    asyncio.run(soak(soak_server, 48, 16))  # warm-up: allocator pools, lazily built kernels
    start = rss_bytes(soak_server.process.pid)
    outcomes = asyncio.run(soak(soak_server, 400, 64))
    assert set(outcomes) <= {"200", "429", "hung up"}, sorted(set(outcomes))
    # how many of the 400 are served before the queue fills depends on the machine's speed: 145 on a
    # fresh-clone CI run on 2 cores (2026-12-03), more on a quiet one; a third is the floor
    assert outcomes.count("200") > 133 and outcomes.count("429") > 0 and outcomes.count("hung up") > 10
    assert httpx.get(f"{soak_server.url}/health").status_code == 200
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # hung-up streams leave the batch at the engine's next step
        metrics = httpx.get(f"{soak_server.url}/metrics").text
        if "mai_requests_running 0.0" in metrics and "mai_requests_waiting 0.0" in metrics:
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"requests still running after the soak:\n{metrics}")
    assert rss_bytes(soak_server.process.pid) < start * 1.2 + 32 * 2**20
