"""`mai synth` against a real `mai serve`, directly and through a real fault-injecting proxy process:
every planned sample ends in the output exactly once, a kill -9 and rerun give the set an
uninterrupted run gives, the spending cap stops at the cap, and any sampling change makes new ids."""

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from conftest import run_mai
from mai.config import SynthConfig
from mai.data.synth_gates import Gates
from mai.data.synth_plan import plan_samples
from mai.data.teacher import RateLimiter
from mai.run import RunDir
from serve.gateway_backends import gateway_over
from serve.live_server import MAI

PROXY = Path(__file__).parent.parent / "fault_proxy.py"
SAMPLES = 12


def synth_settings(base_url: str, model: str, **extra) -> list[str]:
    settings = {
        "base_url": base_url,
        "model": model,
        "samples": SAMPLES,
        "max_tokens": 16,
        "min_words": 0,
        "concurrency": 4,
        "timeout": 3.0,
        "retry_base_seconds": 0.05,
        "topics": ["tides", "ice", "salt"],
        "audiences": ["a child", "an adult"],
        **extra,
    }
    return [f"synth.{key}={json.dumps(value)}" for key, value in settings.items()]


def new_run(tmp_path: Path, name: str, settings: list[str]) -> RunDir:
    overrides = [arg for s in settings for arg in ("--set", s)]
    run_mai("init", str(tmp_path / name), "--preset", "tiny", *overrides)
    return RunDir(tmp_path / name)


def outputs(run: RunDir) -> dict[str, str]:
    """id → response text of every sample in samples.jsonl and rejected.jsonl, checking none is there twice."""
    records = []
    for name in ("samples.jsonl", "rejected.jsonl"):
        records += [json.loads(line) for line in (run.synth_dir / name).read_text().splitlines()]
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids)), "a sample was written twice"
    cached = [json.loads(line)["id"] for line in (run.synth_dir / "responses.jsonl").read_text().splitlines()]
    assert len(cached) == len(set(cached)), "a reply was cached twice"
    return {r["id"]: r["response"] for r in records}


@contextmanager
def fault_proxy(upstream: str, faults: str, slow_seconds: float = 5.0):
    command = [sys.executable, str(PROXY), "--upstream", upstream, "--faults", faults]
    process = subprocess.Popen(command + ["--slow-seconds", str(slow_seconds)], stdout=subprocess.PIPE, text=True)
    try:
        url = process.stdout.readline().strip().removeprefix("listening on ")
        assert url.startswith("http://"), url
        yield url
    finally:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def reference(server, tmp_path_factory) -> dict[str, str]:
    """The samples of an uninterrupted run straight to the server."""
    run = new_run(tmp_path_factory.mktemp("synth"), "direct", synth_settings(f"{server.url}/v1", server.model))
    summary = json.loads(run_mai("synth", str(run.path)).stdout)
    assert summary["done"] == SAMPLES and not summary["stopped_at_cap"]
    texts = outputs(run)
    assert len(texts) == SAMPLES
    return texts


@pytest.mark.slow
@pytest.mark.parametrize("stream", [False, True])
def test_every_sample_exactly_once_through_a_faulty_network(server, reference, tmp_path, stream):
    faults = "429,500,slow,drop,cut,429,ok,500,drop" if stream else "429,500,slow,drop,429,ok,500,drop"
    with fault_proxy(server.url, faults, slow_seconds=5) as url:
        run = new_run(tmp_path, "faulty", synth_settings(f"{url}/v1", server.model, stream=stream))
        summary = json.loads(run_mai("synth", str(run.path)).stdout)
        stats = httpx.get(f"{url}/_proxy/stats").json()
    assert summary["done"] == SAMPLES
    assert sum(stats["faults"].get(f, 0) for f in ("429", "500", "slow", "drop", "cut")) == len(faults.split(",")) - 1
    assert outputs(run) == reference  # seeded sampling: the same texts, whatever failed on the way
    attempts = [json.loads(line)["attempts"] for line in (run.synth_dir / "responses.jsonl").read_text().splitlines()]
    assert sum(attempts) == SAMPLES + len(faults.split(",")) - 1


@pytest.mark.slow
def test_kill_9_then_rerun_gives_the_uninterrupted_set(server, reference, tmp_path):
    run = new_run(tmp_path, "killed", synth_settings(f"{server.url}/v1", server.model, concurrency=1))
    process = subprocess.Popen([MAI, "synth", str(run.path)], stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    cache = run.synth_dir / "responses.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (cache.is_file() and len(cache.read_bytes().splitlines()) >= 3):
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    done = len(cache.read_bytes().splitlines())
    assert 3 <= done < SAMPLES, "the kill came too late to test anything"
    with open(cache, "ab") as f:  # as if the kill had cut a line short
        f.write(b'{"id": "0123')
    summary = json.loads(run_mai("synth", str(run.path)).stdout)
    assert summary["done"] == SAMPLES
    assert outputs(run) == reference


@pytest.mark.slow
def test_the_spending_cap_stops_there_and_a_higher_one_finishes(server, reference, tmp_path):
    prices = {"input_price_per_million": 1000.0, "output_price_per_million": 2000.0}
    run = new_run(tmp_path, "capped", synth_settings(f"{server.url}/v1", server.model, max_cost=0.25, **prices))
    summary = json.loads(run_mai("synth", str(run.path)).stdout)
    assert summary["stopped_at_cap"] and 0 < summary["done"] < SAMPLES
    one_request = max(json.loads(line)["cost"] for line in (run.synth_dir / "responses.jsonl").read_text().splitlines())
    assert abs(summary["cost"] - 0.25) <= one_request  # stopped at the cap, within one request's cost
    summary = json.loads(run_mai("synth", str(run.path), "--set", "synth.max_cost=100.0").stdout)
    assert summary["done"] == SAMPLES and not summary["stopped_at_cap"]
    assert outputs(run) == reference


def test_a_changed_temperature_makes_new_samples(server, tmp_path):
    config = SynthConfig(
        **{k.removeprefix("synth."): json.loads(v) for k, v in (s.split("=", 1) for s in synth_settings("u", "m"))}
    )
    same = plan_samples(config)
    assert [s.id for s in plan_samples(config)] == [s.id for s in same]
    hotter = plan_samples(config.model_copy(update={"temperature": 0.9}))
    assert not {s.id for s in same} & {s.id for s in hotter}
    run = new_run(tmp_path, "temp", synth_settings(f"{server.url}/v1", server.model, samples=2))
    run_mai("synth", str(run.path))
    run_mai("synth", str(run.path), "--set", "synth.temperature=0.5")
    assert len((run.synth_dir / "responses.jsonl").read_text().splitlines()) == 4  # nothing reused


def test_a_wrong_model_name_stops_with_the_servers_message(server, tmp_path):
    run = new_run(tmp_path, "wrong", synth_settings(f"{server.url}/v1", "no-such-model", samples=2))
    result = run_mai("synth", str(run.path), check=False)
    assert result.returncode == 2
    assert "refused the request (HTTP 404" in result.stderr and "synth.model" in result.stderr


@pytest.mark.slow
def test_through_the_gateway(server, reference, tmp_path):
    config = f'[models.teacher]\nbackends = [{{url = "{server.url}/v1", model = "{server.model}"}}]\n'
    with gateway_over(tmp_path, config) as url:
        run = new_run(tmp_path, "gw", synth_settings(f"{url}/v1", "teacher"))
        run_mai("synth", str(run.path))
    # the teacher's name is part of the id, so compare the texts in plan order
    assert sorted(outputs(run).values()) == sorted(reference.values())


def test_gates():
    config = SynthConfig(min_words=5, max_repetition=0.3, near_duplicate=0.8)
    gates = Gates(config, eval_ngrams=None)
    passage = (
        "Tides rise and fall twice a day because the moon pulls on the oceans of the turning earth. The sun "
        "pulls too, more weakly, so the highest tides come when sun and moon line up at new and full moon, and "
        "the lowest when they pull at right angles, at the quarter moons. Coasts shape the rest of it."
    )
    assert gates.reason("Too short.") == "too_short"
    assert gates.reason("I'm sorry, but I cannot help with writing about tides today, friend.") == "refusal"
    assert gates.reason("the sea the sea the sea the sea the sea the sea the sea") == "repetitive"
    assert gates.reason(passage) is None
    assert gates.reason(passage.replace("rest of it", "rest")) == "near_duplicate"
    assert gates.reason("Salt dissolves in water because water molecules pull its ions apart one by one.") is None


def test_rate_limiter_spaces_requests_within_a_minute():
    limiter = RateLimiter(requests_per_minute=2, tokens_per_minute=100)
    now = time.monotonic()
    limiter.window.extend([[now - 50, 10], [now - 10, 10]])
    assert limiter._wait_seconds(10, now) == pytest.approx(
        10, abs=0.01
    )  # the third request waits for the first to age out
    limiter.window.popleft()
    assert limiter._wait_seconds(95, now) == pytest.approx(50, abs=0.01)  # 10 + 95 tokens exceed 100
    assert limiter._wait_seconds(90, now) <= 0
