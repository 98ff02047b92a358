"""Fast stand-in OpenAI-compatible backends on threads, and `mai gateway` started over them (a pytest plugin)."""

import asyncio
import json
import os
import subprocess
import threading
import time
from contextlib import contextmanager

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from serve.live_server import MAI, free_port


class StandIn:
    """A lightweight OpenAI-compatible backend on a thread: answers its name at once, counts requests.

    `delay_s` blocks its loop before it answers (a stuck vendor); a `status` other than 200 is an error
    answer; a stream is `events` chunks `gap_s` apart. `stall_s` holds the answer after its headers:
    a JSON body before the body, a stream before its chunk number `stall_at`; chunk `garbled_at` is not JSON.
    """

    def __init__(
        self,
        name: str,
        delay_s: float = 0.0,
        status: int = 200,
        events: int = 1,
        gap_s: float = 0.0,
        stall_s: float = 0.0,
        stall_at: int = 0,
        garbled_at: int | None = None,
    ):
        self.name, self.hits, self.port = name, 0, free_port()
        app = FastAPI()

        @app.post("/v1/completions")
        async def completions(request: Request):
            body = await request.json()
            self.hits += 1
            time.sleep(delay_s)  # blocks this backend's loop on purpose: a stuck vendor
            if status != 200:
                error = {"message": f"{name} answers {status}", "type": "x", "param": None, "code": None}
                return JSONResponse({"error": error}, status_code=status)
            head = {"id": "x", "object": "text_completion", "created": 0, "model": body["model"]}
            if body.get("stream"):
                with_usage = (body.get("stream_options") or {}).get("include_usage")
                return StreamingResponse(stream(head, with_usage), media_type="text/event-stream")
            choice = {"index": 0, "text": name, "logprobs": None, "finish_reason": "stop"}
            usage = {"prompt_tokens": 5, "completion_tokens": 15, "total_tokens": 20}
            answer = head | {"choices": [choice], "usage": usage}
            if stall_s:
                return StreamingResponse(stalled(json.dumps(answer)), media_type="application/json")
            return answer

        async def stalled(answer: str):
            await asyncio.sleep(stall_s)
            yield answer

        async def stream(head: dict, with_usage: bool):
            choice = {"index": 0, "text": name, "logprobs": None, "finish_reason": None}
            for i in range(events):
                await asyncio.sleep(stall_s if i == stall_at else gap_s if i else 0)
                yield (
                    "data: {garbled\n\n" if i == garbled_at else f"data: {json.dumps(head | {'choices': [choice]})}\n\n"
                )
            if with_usage:
                usage = {"prompt_tokens": 5, "completion_tokens": events, "total_tokens": 5 + events}
                yield f"data: {json.dumps(head | {'choices': [], 'usage': usage})}\n\n"
            yield "data: [DONE]\n\n"

        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        threading.Thread(target=self.server.run, daemon=True).start()
        while not self.server.started:
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}/v1"


@pytest.fixture(scope="module")
def stand_ins():
    backends = {name: StandIn(name) for name in ("a", "b", "c")}
    backends["slow"] = StandIn("slow", delay_s=3.0)
    backends["stalled"] = StandIn("stalled", stall_s=2.0)
    backends["cut"] = StandIn("cut", events=3, stall_s=2.0, stall_at=1)
    backends["garbled"] = StandIn("garbled", events=3, garbled_at=1)
    backends["refusing"] = StandIn("refusing", status=401)
    backends["missing"] = StandIn("missing", status=404)
    backends["streaming"] = StandIn("streaming", events=4, gap_s=0.5)
    yield backends
    for backend in backends.values():
        backend.server.should_exit = True


def start_gateway(tmp_path, config: str) -> tuple[subprocess.Popen, str]:
    """`mai gateway` over `config` in tmp_path, its usage log in usage.jsonl and its stderr in gateway.log."""
    port = free_port()
    path, log = tmp_path / "gateway.toml", tmp_path / "gateway.log"
    path.write_text(f'port = {port}\nusage_log = "{tmp_path / "usage.jsonl"}"\n' + config)
    env = {**os.environ, "KEY_A": "key-a", "KEY_B": "key-b"}
    with open(log, "w") as stderr:
        process = subprocess.Popen([MAI, "gateway", str(path)], env=env, stderr=stderr)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        if process.poll() is not None:
            raise AssertionError(f"mai gateway exited: {log.read_text()}")
        try:
            httpx.get(f"{url}/health", timeout=1)
            return process, url
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError("mai gateway did not start")


@contextmanager
def gateway_over(tmp_path, config: str):
    """The url of `start_gateway`'s gateway, stopped on leaving."""
    process, url = start_gateway(tmp_path, config)
    try:
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def usage_records(tmp_path, count: int) -> list[dict]:
    """The usage log once it has `count` records: a stream's is written just after the client's [DONE]."""
    path, records = tmp_path / "usage.jsonl", []
    for _ in range(50):
        records = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
        if len(records) >= count:
            return records
        time.sleep(0.1)
    raise AssertionError(f"the usage log has {len(records)} records, not {count}")
