"""What `mai serve` and `mai gateway` share, without torch: OpenAI-shaped errors, /health and /metrics, and
the listening socket.

Every error leaves as OpenAI's shape, {"error": {"message", "type", "param", "code"}}, from the
handlers in `add_error_handlers`: a MaiError with its 4xx, an InternalError with its 5xx, anything
else as a 500 whose traceback stays in the server log.
"""

import errno
import socket
import sys

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException

from mai.errors import InternalError, MaiError
from mai.serve import protocol as p


def error_response(
    status: int,
    message: str,
    type: str = "invalid_request_error",
    param: str | None = None,
    headers: dict | None = None,
) -> JSONResponse:
    body = p.ErrorResponse(error=p.ErrorInfo(message=message, type=type, param=param, code=None))
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def add_error_handlers(app: FastAPI) -> None:
    """The one place errors become OpenAI-shaped JSON, for the server and the gateway alike."""

    @app.exception_handler(MaiError)
    async def user_error(request: Request, e: MaiError):
        return error_response(e.status, str(e), e.type, e.parameter, e.headers)

    @app.exception_handler(InternalError)
    async def internal_error(request: Request, e: InternalError):
        return error_response(e.status, str(e), "server_error")

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

    @app.exception_handler(HTTPException)
    async def route_error(request: Request, e: HTTPException):
        """Unknown paths (404) and methods (405) answer in OpenAI's error shape, not FastAPI's {"detail": ...}."""
        where = f"{request.method} {request.url.path}"
        if e.status_code == 404:
            message = f"no route {where}; the routes are listed at /openapi.json"
        elif e.status_code == 405:
            message = f"{where} is not allowed; this path takes {(e.headers or {}).get('Allow', 'other methods')}"
        else:
            message = str(e.detail)
        type = "server_error" if e.status_code >= 500 else "invalid_request_error"
        return error_response(e.status_code, message, type, headers=e.headers)

    @app.exception_handler(Exception)
    async def bug(request: Request, e: Exception):
        return error_response(500, "internal error; the traceback is in the server log", "server_error")


def add_health_and_metrics(app: FastAPI, registry: CollectorRegistry) -> None:
    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.get("/metrics", include_in_schema=False)
    def prometheus():
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def bind(host: str, port: int, hint: str) -> socket.socket:
    """A socket bound to host:port before a slow start, so that a port in use is a one-line error at once.

    It listens only when `run_app` serves: until then connections are refused at once (a gateway in
    front falls back) rather than left waiting in the backlog.
    """
    if not 0 <= port <= 65535:
        raise MaiError(f"port {port} is out of range: ports are 0-65535; {hint}")
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: a port left in TIME_WAIT is free
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise unusable(e, host, port, hint) from None
    return sock


def unusable(e: OSError, host: str, port: int, hint: str) -> MaiError:
    if e.errno == errno.EADDRINUSE:
        return MaiError(f"port {port} on {host} is in use (another server?); {hint}")
    return MaiError(f"cannot listen on {host}:{port}: {e.strerror}")


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if sock.family == socket.AF_INET6 else f"http://{host}:{port}"


def run_app(app: FastAPI, sock: socket.socket, hint: str, ready: str) -> None:
    """Serve `app` on the bound `sock` until interrupted, first printing `ready` to stderr."""
    import uvicorn

    try:
        sock.listen(2048)
    except OSError as e:  # SO_REUSEADDR let another server bind the port too, and it listened first
        host, port = sock.getsockname()[:2]
        raise unusable(e, host, port, hint) from None
    print(ready, file=sys.stderr, flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
