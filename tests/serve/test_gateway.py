"""`mai gateway` in a subprocess, in front of real `mai serve` processes and fast stand-in backends."""

import asyncio
import json
import time

import httpx
import openai
import pytest

from serve.gateway_backends import StandIn, gateway_over, usage_records
from serve.live_server import Server, free_port


@pytest.fixture(scope="module")
def gateway(stand_ins, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gateway")
    s = stand_ins
    config = f"""
[models.ab]
backends = [{{url = "{s["a"].url}", model = "m-a", weight = 3}}, {{url = "{s["b"].url}", model = "m-b", weight = 1}}]

[models.stuck]
timeout_s = 0.5
backends = [{{url = "{s["slow"].url}", model = "m-slow"}}]
fallbacks = [{{url = "{s["c"].url}", model = "m-c"}}]

[keys.team-a]
key_env = "KEY_A"

[keys.team-b]
key_env = "KEY_B"
token_quota = 50
"""
    with gateway_over(tmp, config) as url:
        yield url, tmp / "usage.jsonl"


def test_weighted_split_over_400_requests(gateway, stand_ins):
    url, usage_log = gateway
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="key-a", max_retries=0)
    before = stand_ins["a"].hits, stand_ins["b"].hits
    texts = [client.completions.create(model="ab", prompt="x", max_tokens=1).choices[0].text for _ in range(400)]
    share_a = texts.count("a") / 400
    assert abs(share_a - 0.75) <= 0.05 and texts.count("a") + texts.count("b") == 400
    assert (stand_ins["a"].hits - before[0], stand_ins["b"].hits - before[1]) == (texts.count("a"), texts.count("b"))
    records = [json.loads(line) for line in usage_log.read_text().splitlines()]
    assert sum(r["model"] == "ab" and r["key"] == "team-a" and r["completion_tokens"] == 15 for r in records) == 400
    metrics = httpx.get(f"{url}/metrics").text
    assert f'mai_gateway_requests_total{{backend="{stand_ins["a"].url}#m-a",status="200"}}' in metrics
    assert f'mai_gateway_tokens_total{{backend="{stand_ins["b"].url}#m-b",kind="completion"}}' in metrics


def test_stream_that_is_not_a_json_boolean_is_a_400(gateway, stand_ins):
    """A backend may read "false" as false and answer JSON, which the gateway would relay as a stream of no tokens,
    unmetered. (After the weighted split, which counts this key's requests to "ab".)"""
    url, _ = gateway
    auth = {"Authorization": "Bearer key-a"}
    hits = stand_ins["a"].hits + stand_ins["b"].hits
    for stream in ("false", "true", 0, 1, {}):
        body = {"model": "ab", "prompt": "x", "stream": stream}
        response = httpx.post(f"{url}/v1/completions", json=body, headers=auth, timeout=10)
        assert response.status_code == 400, (stream, response.text)
        error = response.json()["error"]
        assert error["param"] == "stream" and "true or false" in error["message"], error
    assert stand_ins["a"].hits + stand_ins["b"].hits == hits
    body = {"model": "ab", "prompt": "x", "stream": None}
    response = httpx.post(f"{url}/v1/completions", json=body, headers=auth, timeout=10)
    assert response.status_code == 200 and response.json()["usage"]["completion_tokens"] == 15, response.text


def test_more_than_100_concurrent_streams_all_succeed(stand_ins, tmp_path):
    """httpx's default pool of 100 connections would hold the rest back for timeout_s, then answer them 502."""
    config = f'[models.s]\ntimeout_s = 1.0\nbackends = [{{url = "{stand_ins["streaming"].url}", model = "m-s"}}]\n'

    async def streams(url: str) -> list[httpx.Response]:  # each takes 1.5 s: four chunks 0.5 s apart
        async with httpx.AsyncClient(limits=httpx.Limits(max_connections=None), timeout=30) as client:
            body = {"model": "s", "prompt": "x", "stream": True}
            return await asyncio.gather(*(client.post(f"{url}/v1/completions", json=body) for _ in range(150)))

    with gateway_over(tmp_path, config) as url:
        responses = asyncio.run(streams(url))
    assert [r.status_code for r in responses] == [200] * 150, {r.status_code: r.text for r in responses}
    assert all(r.text.count('"text": "streaming"') == 4 and r.text.endswith("data: [DONE]\n\n") for r in responses)


def test_timeout_falls_back(gateway):
    url, _ = gateway
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="key-a", max_retries=0)
    answer = client.completions.create(model="stuck", prompt="x", max_tokens=1)
    assert answer.choices[0].text == "c" and answer.model == "m-c"
    assert 'mai_gateway_fallbacks_total{model="stuck"} 1.0' in httpx.get(f"{url}/metrics").text


def test_keys_and_token_quota(gateway):
    url, _ = gateway
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{url}/v1", api_key="nope", max_retries=0).models.list()
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="key-b", max_retries=0)
    assert [m.id for m in client.models.list().data] == ["ab", "stuck"]
    for _ in range(3):  # 20 tokens each: 0, 20 and 40 of 50 used before each
        client.completions.create(model="ab", prompt="x", max_tokens=1)
    with pytest.raises(openai.RateLimitError) as e:
        client.completions.create(model="ab", prompt="x", max_tokens=1)
    assert "quota" in e.value.message and int(e.value.response.headers["Retry-After"]) > 0


def test_errors_have_openai_shape(gateway):
    url, _ = gateway
    auth = {"Authorization": "Bearer key-a"}
    cases = [
        ("GET", "/v1/completions", None, 405, None, "POST"),
        ("POST", "/v1/embeddings", {"model": "ab", "input": "x"}, 404, None, "/v1/embeddings"),
        ("POST", "/v1/completions", {"prompt": "x"}, 400, "model", '"model"'),
        ("POST", "/v1/chat/completions", [{"model": "ab"}], 400, "model", '"model"'),
        ("POST", "/v1/completions", {"model": "nope", "prompt": "x"}, 404, "model", "not routed"),
    ]
    for method, path, body, status, param, phrase in cases:
        response = httpx.request(method, f"{url}{path}", json=body, headers=auth, timeout=10)
        answer = response.json()
        assert response.status_code == status and list(answer) == ["error"], (path, body, answer)
        error = answer["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["param"] == param, (path, body, error)
        assert phrase in error["message"] and error["type"] == "invalid_request_error", (path, body, error)


def test_lone_surrogate_is_a_400_naming_the_field(gateway, stand_ins):
    """The gateway sends the body on as UTF-8, which cannot encode half a UTF-16 pair ("\\ud800"),
    and adds include_usage to stream_options, which must be an object."""
    url, _ = gateway
    headers = {"Authorization": "Bearer key-a", "Content-Type": "application/json"}
    cases = [
        ("/v1/completions", '"prompt": "\\ud800"', "prompt", "prompt holds"),
        (
            "/v1/chat/completions",
            '"messages": [{"role": "user", "content": "\\ud800x"}]',
            "messages",
            "messages.0.content",
        ),
        ("/v1/completions", '"prompt": "x", "user": "\\udfff"', "user", "user holds"),  # fields the gateway ignores too
        ("/v1/completions", '"prompt": "x", "\\ud800": 1', "\\ud800", "\\ud800 holds"),
        ("/v1/completions", '"prompt": "x", "stream": true, "stream_options": "x"', "stream_options", "object"),
    ]
    hits = stand_ins["a"].hits + stand_ins["b"].hits
    for path, fields, param, phrase in cases:
        response = httpx.post(f"{url}{path}", content=f'{{"model": "ab", {fields}}}', headers=headers, timeout=10)
        assert response.status_code == 400, (fields, response.text)
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error" and error["param"] == param and phrase in error["message"], (
            error
        )
    assert stand_ins["a"].hits + stand_ins["b"].hits == hits


def test_nan_and_infinity_are_a_400_as_they_are_not_json(gateway, stand_ins):
    """Python's JSON parser takes them, but no request to a backend can carry them."""
    url, _ = gateway
    headers = {"Authorization": "Bearer key-a", "Content-Type": "application/json"}
    hits = stand_ins["a"].hits + stand_ins["b"].hits
    for constant in ("NaN", "Infinity", "-Infinity"):
        content = f'{{"model": "ab", "prompt": "x", "logit_bias": {{"5": {constant}}}}}'
        response = httpx.post(f"{url}/v1/completions", content=content, headers=headers, timeout=10)
        assert response.status_code == 400, response.text
        assert f"{constant} is not a JSON number" in response.json()["error"]["message"], response.text
    assert stand_ins["a"].hits + stand_ins["b"].hits == hits


def test_usage_log_times_the_request_from_its_first_attempt(stand_ins, tmp_path):
    lagging = StandIn("lagging", delay_s=0.6)
    config = f"""
[models.lag]
timeout_s = 1.0
backends = [{{url = "{stand_ins["slow"].url}", model = "m-slow"}}]
fallbacks = [{{url = "{lagging.url}", model = "m-lagging"}}]
"""
    try:
        with gateway_over(tmp_path, config) as url:
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
            start = time.perf_counter()
            assert client.completions.create(model="lag", prompt="x", max_tokens=1).choices[0].text == "lagging"
            elapsed = time.perf_counter() - start
            [record] = [json.loads(line) for line in (tmp_path / "usage.jsonl").read_text().splitlines()]
            assert 1.6 <= record["seconds"] <= elapsed  # the timed-out attempt (1 s), then the lagging backend's 0.6 s
    finally:
        lagging.server.should_exit = True


def test_a_request_every_backend_failed_is_logged_too(tmp_path):
    """The client's 502 is a usage line as well: no backend, the attempts in order, no tokens."""
    down = [f"http://127.0.0.1:{free_port()}/v1" for _ in range(2)]  # nothing listens there: refused at once
    config = f"""
[models.down]
backends = [{{url = "{down[0]}", model = "m-1"}}]
fallbacks = [{{url = "{down[1]}", model = "m-2"}}]

[keys.team-a]
key_env = "KEY_A"
"""
    with gateway_over(tmp_path, config) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="key-a", max_retries=0)
        with pytest.raises(openai.InternalServerError) as e:
            client.completions.create(model="down", prompt="x", max_tokens=1)
        assert e.value.status_code == 502
    assert f"failed: {down[0]}#m-1: ConnectError; {down[1]}#m-2: ConnectError" in e.value.message
    log = (tmp_path / "gateway.log").read_text()
    assert f"mai gateway: backend failed: {down[0]}#m-1: ConnectError\n" in log
    assert f"mai gateway: backend failed: {down[1]}#m-2: ConnectError\n" in log
    [record] = [json.loads(line) for line in (tmp_path / "usage.jsonl").read_text().splitlines()]
    assert record.pop("time") > 0 and record.pop("seconds") >= 0
    assert record == {
        "key": "team-a",
        "model": "down",
        "backend": None,
        "attempts": [f"{down[0]}#m-1", f"{down[1]}#m-2"],
        "status": 502,
        "prompt_tokens": 0,
        "completion_tokens": 0,
    }


@pytest.mark.parametrize("stream", [False, True])
def test_backend_that_stalls_after_its_headers_falls_back(stand_ins, tmp_path, stream):
    """Headers, then nothing for longer than timeout_s: the client has nothing yet, so the next backend answers.
    (mai serve sends a stream's headers at once, then waits for its first token.)"""
    stalled, c = stand_ins["stalled"], stand_ins["c"]
    config = f"""
[models.stalled]
timeout_s = 0.5
backends = [{{url = "{stalled.url}", model = "m-stalled"}}]
fallbacks = [{{url = "{c.url}", model = "m-c"}}]
"""
    with gateway_over(tmp_path, config) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        answer = client.completions.create(model="stalled", prompt="x", max_tokens=1, stream=stream)
        text = "".join(chunk.choices[0].text for chunk in answer) if stream else answer.choices[0].text
        [record] = usage_records(tmp_path, 1)
    assert text == "c"
    assert (record["backend"], record["status"], len(record["attempts"])) == (f"{c.url}#m-c", 200, 2)
    log = (tmp_path / "gateway.log").read_text()
    failed = [line for line in log.splitlines() if line.startswith("mai gateway: backend failed: ")]
    assert failed == [f"mai gateway: backend failed: {stalled.url}#m-stalled: {failed[0].split()[-1]}"], log
    assert failed[0].endswith(("TimeoutError", "ReadTimeout")) and "Traceback" not in log


@pytest.mark.parametrize(("backend", "cause"), [("cut", "ReadTimeout"), ("garbled", "sent a chunk that is not JSON")])
def test_stream_cut_midway_ends_with_an_error_event(stand_ins, tmp_path, backend, cause):
    """Too late to fall back once the client has a chunk: it gets an error event, the usage log a 502."""
    cut = stand_ins[backend]
    config = f"""
[models.cut]
timeout_s = 0.5
backends = [{{url = "{cut.url}", model = "m-cut"}}]
fallbacks = [{{url = "{stand_ins["c"].url}", model = "m-c"}}]
"""
    with gateway_over(tmp_path, config) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        texts = []
        with pytest.raises(openai.APIError) as e:
            for chunk in client.completions.create(model="cut", prompt="x", max_tokens=1, stream=True):
                texts.append(chunk.choices[0].text)
        [record] = usage_records(tmp_path, 1)
    message = f"backend {cut.url}#m-cut failed mid-stream: {cause}"
    assert texts == [backend] and type(e.value) is openai.APIError and e.value.message == message
    assert e.value.body == {"message": message, "type": "server_error", "param": None, "code": None}
    assert (record["status"], record["completion_tokens"], record["attempts"]) == (502, 1, [f"{cut.url}#m-cut"])
    log = (tmp_path / "gateway.log").read_text()
    assert f"mai gateway: {message}\n" in log and "Traceback" not in log


def test_backend_refusing_the_gateway_key_falls_back(stand_ins, tmp_path):
    """A backend's 401 or 403 is about the gateway's own key (its api_key_env), not the client's."""
    refusing = f'{{url = "{stand_ins["refusing"].url}", model = "m-r", api_key_env = "KEY_A"}}'
    config = f"""
[models.fallback]
backends = [{refusing}]
fallbacks = [{{url = "{stand_ins["c"].url}", model = "m-c"}}]

[models.alone]
backends = [{refusing}]
"""
    with gateway_over(tmp_path, config) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        assert client.completions.create(model="fallback", prompt="x", max_tokens=1).choices[0].text == "c"
        with pytest.raises(openai.InternalServerError) as e:
            client.completions.create(model="alone", prompt="x", max_tokens=1)
    refused = f"{stand_ins['refusing'].url}#m-r: 401, refusing the gateway's own key: check KEY_A"
    assert e.value.status_code == 502 and refused in e.value.message
    assert (tmp_path / "gateway.log").read_text().count(f"mai gateway: backend failed: {refused}\n") == 2


def test_backend_without_the_configured_model_falls_back(stand_ins, tmp_path):
    """A backend's 404 means the gateway's config names a model or url it lacks: the client's alias was fine."""
    config = f"""
[models.chat]
backends = [{{url = "{stand_ins["missing"].url}", model = "small"}}]
fallbacks = [{{url = "{stand_ins["c"].url}", model = "m-c"}}]
"""
    with gateway_over(tmp_path, config) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        assert client.completions.create(model="chat", prompt="x", max_tokens=1).choices[0].text == "c"
    missing = f"{stand_ins['missing'].url}#small: 404, no such model or route there: check the backend's url and model"
    assert f"mai gateway: backend failed: {missing}\n" in (tmp_path / "gateway.log").read_text()


def test_gateway_says_where_it_listens(gateway):
    url, usage_log = gateway
    assert f"mai gateway: {url} (models ab, stuck)" in (usage_log.parent / "gateway.log").read_text()


def test_usage_log_failing_later_still_answers(stand_ins, tmp_path):
    config = f'[models.a]\nbackends = [{{url = "{stand_ins["a"].url}", model = "m-a"}}]\n'
    with gateway_over(tmp_path, config) as url:
        (tmp_path / "usage.jsonl").mkdir()  # the log path turns into a folder after the start
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        assert client.completions.create(model="a", prompt="x", max_tokens=1).choices[0].text == "a"
    assert f"cannot append to usage_log {tmp_path / 'usage.jsonl'}" in (tmp_path / "gateway.log").read_text()


def test_killed_primary_falls_back_to_another_server(server, trained_run, stand_ins, tmp_path):
    primary = Server(trained_run.path, "--max-batch", "4", "--precision", "fp32")  # as the fallback
    config = f"""
[models.chat]
timeout_s = 30
backends = [{{url = "{primary.url}/v1", model = "{primary.model}"}}]
fallbacks = [{{url = "{server.url}/v1", model = "{server.model}"}}]
"""
    with gateway_over(tmp_path, config) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        messages = [{"role": "user", "content": "Hello"}]
        kwargs = dict(model="chat", messages=messages, max_tokens=8, temperature=0)
        first = client.chat.completions.create(**kwargs)
        primary.stop()
        second = client.chat.completions.create(**kwargs)
        chunks = list(client.chat.completions.create(**kwargs, stream=True))
        assert all(c.usage is None for c in chunks)  # the client did not ask for usage
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
        assert second.choices[0].message.content == first.choices[0].message.content == streamed  # same weights
        records = usage_records(tmp_path, 3)
        assert [len(r["attempts"]) for r in records] == [1, 2, 2]
        assert records[2]["completion_tokens"] == second.usage.completion_tokens  # counted from the usage chunk
        assert records[1]["backend"].startswith(server.url)
