"""Run model-written programs safely: one fresh, confined process each, with time and memory limits.

`run_program(source)` starts `sandbox_child.py` in a new session (process group) and a new
temporary working directory, which the child confines itself to before running the program:
memory, CPU time and file size limits, an empty network namespace, Landlock write rules and an
audit hook (see sandbox_child.py). The parent adds a wall-clock limit and kills the whole
process group when it passes. Whatever the program does, the caller gets a `Outcome` back.
"""

import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

CHILD = Path(__file__).with_name("sandbox_child.py")


@dataclass(frozen=True)
class Limits:
    seconds: float = 10.0  # wall clock, and CPU time
    memory_bytes: int = 1 << 30  # address space
    file_bytes: int = 16 << 20  # largest file the program may write (its output included)
    audit_hook: bool = True  # the Python-level layer; turned off only to test the kernel layers alone


@dataclass(frozen=True)
class Outcome:
    passed: bool
    status: str  # passed, failed, timeout, memory
    detail: str  # the last line the program wrote to stderr, or why it was stopped
    layers: str = ""  # the confinement the child could set up, e.g. "netns, landlock-abi7"


def run_program(source: str, limits: Limits = Limits()) -> Outcome:
    """Run `source` as __main__ in a fresh temporary directory; it passes when it finishes cleanly."""
    token = secrets.token_hex(16)
    child_limits = {
        "cpu_seconds": limits.seconds,
        "memory_bytes": limits.memory_bytes,
        "file_bytes": limits.file_bytes,
        "audit_hook": limits.audit_hook,
    }
    with tempfile.TemporaryDirectory(prefix="mai-sandbox-") as base:
        workdir = Path(base) / "work"
        workdir.mkdir()
        with open(Path(base) / "stdout", "w+b") as out, open(Path(base) / "stderr", "w+b") as err:
            process = subprocess.Popen(
                [sys.executable, "-I", "-B", str(CHILD), str(workdir), json.dumps(child_limits)],
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=err,
                cwd=workdir,
                env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(workdir)},
                start_new_session=True,
            )
            timed_out = _communicate(process, (source + "\n" + token).encode(), limits.seconds + 2)
            stdout, stderr = _tail(out), _tail(err)
    return _outcome(process.returncode, timed_out, token in stdout.split(), stderr, limits)


def run_programs(sources: list[str], limits: Limits = Limits(), workers: int | None = None, on_done=None):
    """run_program over many sources, a few at a time; `on_done()` is called after each."""

    def run(source: str) -> Outcome:
        outcome = run_program(source, limits)
        if on_done is not None:
            on_done()
        return outcome

    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        return list(pool.map(run, sources))


def _communicate(process: subprocess.Popen, data: bytes, timeout: float) -> bool:
    """Send the program, wait; past the timeout kill the process group. True if it was killed."""
    try:
        process.communicate(data, timeout=timeout)
        return False
    except subprocess.TimeoutExpired:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()
        return True


def _tail(f, size: int = 64 << 10) -> str:
    f.seek(0, os.SEEK_END)
    f.seek(max(0, f.tell() - size))
    return f.read().decode("utf-8", "replace")


def _outcome(returncode: int, timed_out: bool, finished: bool, stderr: str, limits: Limits) -> Outcome:
    header = "sandbox layers: "
    layers = next((line[len(header) :] for line in stderr.splitlines() if line.startswith(header)), "")
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith(header)]
    last = lines[-1].strip() if lines else ""
    if timed_out or returncode in (-signal.SIGXCPU, -signal.SIGKILL):
        return Outcome(False, "timeout", f"stopped after {limits.seconds:g} s", layers)
    if "MemoryError" in last:
        return Outcome(False, "memory", f"over the {limits.memory_bytes >> 20} MiB memory limit", layers)
    if returncode == 0 and finished:
        return Outcome(True, "passed", "", layers)
    if returncode == -signal.SIGXFSZ:
        return Outcome(False, "failed", f"wrote a file over {limits.file_bytes >> 20} MiB", layers)
    return Outcome(False, "failed", last or f"exit code {returncode}", layers)
