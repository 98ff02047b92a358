"""Model-written code runs confined: runaway programs are stopped and scored as failed, and the evaluator goes on."""

import os
import uuid

import pytest

from mai.eval.sandbox import Limits, run_program, run_programs

FAST = Limits(seconds=2, memory_bytes=512 << 20)


def escape_path() -> str:
    return f"/tmp/mai-sandbox-escape-{uuid.uuid4().hex}"


def test_a_correct_program_passes_and_may_use_its_working_directory():
    source = "open('scratch.txt', 'w').write('ok')\nassert open('scratch.txt').read() == 'ok'\nprint('done')"
    outcome = run_program(source, FAST)
    assert outcome.passed and outcome.status == "passed"


def test_a_failing_assert_fails_with_its_message():
    outcome = run_program("def f(x):\n    return x\nassert f(1) == 2, 'f is wrong'", FAST)
    assert not outcome.passed and outcome.status == "failed" and "f is wrong" in outcome.detail


@pytest.mark.parametrize("source", ["while True:\n    pass", "import time\ntime.sleep(60)"])
def test_a_program_that_never_ends_is_stopped(source):
    outcome = run_program(source, FAST)
    assert (outcome.passed, outcome.status) == (False, "timeout")


def test_unbounded_allocation_hits_the_memory_limit():
    outcome = run_program("blocks = []\nwhile True:\n    blocks.append(bytearray(10**7))", FAST)
    assert (outcome.passed, outcome.status) == (False, "memory")


@pytest.mark.parametrize(
    "source",
    [
        "import socket\nsocket.create_connection(('127.0.0.1', 22), timeout=1)",
        "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.sendto(b'x', ('8.8.8.8', 53))",
        "import urllib.request\nurllib.request.urlopen('http://pypi.org', timeout=1)",
    ],
)
def test_the_network_is_unreachable(source):
    outcome = run_program(source, FAST)
    assert not outcome.passed and outcome.status == "failed"


def test_writes_outside_the_working_directory_are_refused():
    targets = [escape_path() for _ in range(3)]
    sources = [
        f"open({targets[0]!r}, 'w').write('x')",
        f"import os\nfd = os.open({targets[1]!r}, os.O_WRONLY | os.O_CREAT)\nos.write(fd, b'x')",
        f"import subprocess\nsubprocess.run(['touch', {targets[2]!r}], check=True)",
    ]
    for source in sources:
        assert not run_program(source, FAST).passed, source
    assert not any(os.path.exists(t) for t in targets)


@pytest.mark.parametrize("source", ["import sys\nsys.exit(0)\nassert False", "import os\nos._exit(0)\nassert False"])
def test_exiting_early_is_not_passing(source):
    assert not run_program(source, FAST).passed


def test_the_kernel_layers_hold_without_the_python_audit_hook():
    """Network namespace and Landlock confine the program even if it bypassed Python's checks."""
    layers = run_program("pass", FAST).layers
    if "netns" not in layers or "landlock" not in layers:
        pytest.skip(f"this kernel gives the sandbox only: {layers or 'no kernel layers'}")
    bare = Limits(seconds=2, memory_bytes=512 << 20, audit_hook=False)
    target = escape_path()
    assert not run_program(f"open({target!r}, 'w').write('x')", bare).passed
    assert not os.path.exists(target)
    assert not run_program("import socket\nsocket.create_connection(('127.0.0.1', 22), timeout=1)", bare).passed
    assert run_program("open('inside.txt', 'w').write('x')", bare).passed


def test_the_evaluator_goes_on_after_every_kind_of_failure():
    sources = [
        "while True:\n    pass",
        "x = 'a' * (1 << 34)",
        "import socket\nsocket.socket()",
        f"open({escape_path()!r}, 'w')",
        "assert sum([1, 2]) == 3",
    ]
    outcomes = run_programs(sources, FAST)
    assert [o.passed for o in outcomes] == [False, False, False, False, True]
    assert [o.status for o in outcomes][:2] == ["timeout", "memory"]
