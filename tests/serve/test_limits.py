"""API keys and back-pressure: 401 without the key, 429 with Retry-After when the queue is full."""

from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from serve.live_server import Server


@pytest.fixture(scope="module")
def guarded(trained_run):
    server = Server(
        trained_run.path,
        "--api-key-env",
        "MAI_TEST_KEY",
        "--max-batch",
        "1",
        "--max-waiting",
        "1",
        env={"MAI_TEST_KEY": "sesame"},
    )
    yield server
    server.stop()


def test_api_key_is_required(guarded):
    bad = openai.OpenAI(base_url=f"{guarded.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        bad.models.list()
    assert "Bearer" in e.value.message
    assert httpx.get(f"{guarded.url}/v1/models").status_code == 401
    good = openai.OpenAI(base_url=f"{guarded.url}/v1", api_key="sesame", max_retries=0)
    assert [m.id for m in good.models.list().data] == [guarded.model]
    assert httpx.get(f"{guarded.url}/health").status_code == 200  # probes need no key


def test_full_queue_answers_429_with_retry_after(guarded):
    def post(_):
        body = {"model": guarded.model, "prompt": "ROMEO:", "max_tokens": 100, "temperature": 0}
        headers = {"Authorization": "Bearer sesame"}
        return httpx.post(f"{guarded.url}/v1/completions", json=body, headers=headers, timeout=120)

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(post, range(8)))
    codes = sorted(r.status_code for r in responses)
    assert codes.count(200) >= 2 and codes.count(429) >= 1 and set(codes) == {200, 429}
    busy = next(r for r in responses if r.status_code == 429)
    assert busy.headers["Retry-After"] == "1" and busy.json()["error"]["type"] == "rate_limit_error"


def test_request_larger_than_the_queue_is_a_400(guarded):
    client = openai.OpenAI(base_url=f"{guarded.url}/v1", api_key="sesame", max_retries=0)
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=guarded.model, prompt=["a", "b"], n=2, max_tokens=1)
    assert e.value.body["param"] == "n" and "at most 1" in e.value.message
