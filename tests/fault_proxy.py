"""A reverse proxy that fails on purpose, run as its own process in front of a real server.

    python tests/fault_proxy.py --upstream http://127.0.0.1:8000 --faults 429,500,slow,drop,cut,ok

Each POST takes the next fault from the list; once the list is spent every request passes
through. The faults are the ones a remote API really shows:

    429   Too Many Requests with Retry-After: 1 and an OpenAI-style error body
    500   an internal server error
    slow  the reply held back for --slow-seconds, past the client's timeout
    drop  the connection closed halfway through the body
    cut   a stream closed after its first two events, without the chunked terminator
    ok    passed through untouched

GET /_proxy/stats answers {"requests": N, "faults": {"429": n, ...}} with the faults served so far.
The first line on stdout is "listening on http://127.0.0.1:PORT".
"""

import argparse
import asyncio
import json
from collections import Counter

import httpx

FAULTS = ("429", "500", "slow", "drop", "cut", "ok")
DROPPED_HEADERS = {"host", "content-length", "connection", "transfer-encoding", "accept-encoding"}


class FaultProxy:
    def __init__(self, upstream: str, faults: list[str], slow_seconds: float):
        self.upstream = upstream.rstrip("/")
        self.faults = faults
        self.slow_seconds = slow_seconds
        self.requests = 0
        self.served = Counter()
        self.client = httpx.AsyncClient(timeout=None)

    def next_fault(self) -> str:
        fault = self.faults[self.requests] if self.requests < len(self.faults) else "ok"
        self.requests += 1
        if fault != "ok":
            self.served[fault] += 1
        return fault

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        try:
            method, path, headers, body = await read_request(reader)
            if method == "GET" and path == "/_proxy/stats":
                stats = {"requests": self.requests, "faults": dict(self.served)}
                await write_response(writer, 200, {"content-type": "application/json"}, json.dumps(stats).encode())
            elif method == "POST":
                await self.answer(writer, self.next_fault(), method, path, headers, body)
            else:
                await self.forward(writer, "ok", method, path, headers, body)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client gave up (a timeout, as the slow fault intends)
        finally:
            writer.close()

    async def answer(self, writer, fault: str, method: str, path: str, headers: dict, body: bytes):
        if fault in ("429", "500"):
            kind = "rate_limit_error" if fault == "429" else "server_error"
            error = {"error": {"message": f"the fault proxy answered {fault}", "type": kind, "code": kind}}
            extra = {"retry-after": "1"} if fault == "429" else {}
            await write_response(
                writer, int(fault), {"content-type": "application/json", **extra}, json.dumps(error).encode()
            )
            return
        if fault == "slow":
            await asyncio.sleep(self.slow_seconds)
        await self.forward(writer, fault, method, path, headers, body)

    async def forward(self, writer, fault: str, method: str, path: str, headers: dict, body: bytes):
        sent = {k: v for k, v in headers.items() if k not in DROPPED_HEADERS}
        reply = await self.client.request(method, self.upstream + path, headers=sent, content=body)
        content_type = reply.headers.get("content-type", "application/octet-stream")
        if content_type.startswith("text/event-stream"):
            await write_stream(writer, reply.status_code, content_type, reply.content, fault)
        else:
            cut = len(reply.content) // 2 if fault in ("drop", "cut") else None
            await write_response(writer, reply.status_code, {"content-type": content_type}, reply.content, cut)


async def read_request(reader: asyncio.StreamReader) -> tuple[str, str, dict, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    request_line, *lines = head.decode("latin-1").split("\r\n")
    method, path, _ = request_line.split(" ", 2)
    headers = {}
    for line in lines:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", 0)))
    return method, path, headers, body


def status_line(status: int, headers: dict) -> bytes:
    lines = [f"HTTP/1.1 {status} {'OK' if status < 400 else 'Error'}", "connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def write_response(writer, status: int, headers: dict, body: bytes, cut: int | None = None):
    """A whole reply, or with cut its headers promising the whole body and only that many bytes of it."""
    writer.write(status_line(status, headers | {"content-length": str(len(body))}))
    writer.write(body if cut is None else body[:cut])
    await writer.drain()


async def write_stream(writer, status: int, content_type: str, body: bytes, fault: str):
    """Server-sent events, one chunk each; drop and cut stop partway and close without the terminator."""
    events = [event + b"\n\n" for event in body.split(b"\n\n") if event.strip()]
    if fault in ("drop", "cut"):
        events = events[: 2 if fault == "cut" else len(events) // 2]
    writer.write(status_line(status, {"content-type": content_type, "transfer-encoding": "chunked"}))
    for event in events:
        writer.write(b"%x\r\n%s\r\n" % (len(event), event))
        await writer.drain()
    if fault not in ("drop", "cut"):
        writer.write(b"0\r\n\r\n")
    await writer.drain()


async def serve(args: argparse.Namespace):
    faults = [f.strip() for f in args.faults.split(",") if f.strip()]
    unknown = sorted(set(faults) - set(FAULTS))
    if unknown:
        raise SystemExit(f"unknown faults {unknown}; choose from {list(FAULTS)}")
    proxy = FaultProxy(args.upstream, faults, args.slow_seconds)
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", args.port)
    print(f"listening on http://127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True, help="the server to proxy, e.g. http://127.0.0.1:8000")
    parser.add_argument("--faults", default="", help="comma-separated, one per POST: " + ",".join(FAULTS))
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--slow-seconds", type=float, default=5.0)
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
