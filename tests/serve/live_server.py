"""A real `mai serve` process on loopback over the session's trained tiny model, and clients for it (a pytest plugin)."""

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

MAI = str(Path(sys.executable).parent / "mai")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`mai serve PATH ...` in a subprocess; url, model name and the process to check or kill."""

    def __init__(self, path: Path, *args: str, env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.model = path.resolve().name
        command = [MAI, "serve", str(path), "--port", str(self.port), *args]
        self.stderr = tempfile.TemporaryFile()  # not a pipe: one that nobody reads fills up and stalls the server
        self.process = subprocess.Popen(command, env={**os.environ, **(env or {})}, stderr=self.stderr)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"mai serve exited {self.process.returncode}: {self.log()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        raise AssertionError("mai serve did not answer /health within 120 s")

    def log(self) -> str:
        """What the server has written to stderr so far."""
        return os.pread(self.stderr.fileno(), 1 << 20, 0).decode()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        self.stderr.close()


@pytest.fixture(scope="session")
def server(trained_run):
    # fp32, so logprobs compare with the model in-process; test_loading covers the default precision
    server = Server(trained_run.path, "--max-batch", "8", "--max-waiting", "64", "--precision", "fp32")
    yield server
    server.stop()


@pytest.fixture
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
