"""The server through the official `openai` client, unmodified, and through plain HTTP for errors."""

import json
import math
import socket
import time

import httpx
import openai
import pytest

from conftest import run_mai
from mai.errors import MaiError
from mai.loading import load_tokenizer
from mai.serve import launch


def test_models_list(client, server):
    models = client.models.list().data
    assert [m.id for m in models] == [server.model]


def test_greedy_completion_equals_mai_generate(client, server, trained_run):
    for prompt in ("ROMEO:", "The king"):
        args = ["--prompt", prompt, "--temperature", "0", "--max-new-tokens", "24", "--precision", "fp32"]
        expected = run_mai("generate", str(trained_run.path), *args).stdout
        answer = client.completions.create(model=server.model, prompt=prompt, max_tokens=24, temperature=0)
        assert prompt + answer.choices[0].text + "\n" == expected
        assert answer.usage.completion_tokens <= 24 and answer.usage.prompt_tokens > 0


def test_prompt_list_and_n_choices(client, server):
    answer = client.completions.create(model=server.model, prompt=["ROMEO:", "JULIET:"], n=3, max_tokens=8, seed=1)
    assert [c.index for c in answer.choices] == list(range(6))
    assert len({c.text for c in answer.choices[:3]}) > 1  # choices of one prompt differ
    assert answer.usage.completion_tokens == sum(8 for _ in answer.choices)  # no EOS this early


def test_seed_reproduces_sampling(client, server):
    def sample(seed):
        kwargs = dict(model=server.model, max_tokens=16, temperature=1.0, top_p=0.9, seed=seed)
        return client.completions.create(prompt="The", **kwargs).choices[0].text

    assert sample(5) == sample(5)
    assert sample(5) != sample(6) or sample(7) != sample(5)


def test_stop_strings_end_the_text(client, server):
    free = client.completions.create(model=server.model, prompt="ROMEO:", max_tokens=40, temperature=0)
    text = free.choices[0].text
    stop = text[10:12]  # a string the greedy completion is known to contain
    stopped = client.completions.create(model=server.model, prompt="ROMEO:", max_tokens=40, temperature=0, stop=[stop])
    assert stopped.choices[0].text == text[: text.index(stop)]
    assert stopped.choices[0].finish_reason == "stop"
    streamed = client.completions.create(
        model=server.model, prompt="ROMEO:", max_tokens=40, temperature=0, stop=stop, stream=True
    )
    assert "".join(chunk.choices[0].text for chunk in streamed) == text[: text.index(stop)]


def test_chat_completion_and_streaming_agree(client, server):
    messages = [{"role": "system", "content": "You are Shakespeare."}, {"role": "user", "content": "Speak."}]
    answer = client.chat.completions.create(model=server.model, messages=messages, max_tokens=20, temperature=0)
    choice = answer.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens
    stream = client.chat.completions.create(
        model=server.model,
        messages=messages,
        max_tokens=20,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert len([p for p in pieces if p]) > 1  # token by token, not one blob
    assert "".join(pieces) == choice.message.content
    assert chunks[-1].usage.completion_tokens == answer.usage.completion_tokens


def test_chat_n_choices_stream(client, server):
    stream = client.chat.completions.create(
        model=server.model, messages=[{"role": "user", "content": "Hi"}], n=3, max_tokens=10, seed=3, stream=True
    )
    texts = ["", "", ""]
    finished = set()
    for chunk in stream:
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
            if c.finish_reason:
                finished.add(c.index)
    assert finished == {0, 1, 2} and len(set(texts)) > 1


def test_echo_logprobs_are_prompt_loglikelihoods(client, server):
    answer = client.completions.create(
        model=server.model, prompt="To be, or not to be", max_tokens=1, temperature=0, echo=True, logprobs=2
    )
    choice = answer.choices[0]
    lp = choice.logprobs
    assert choice.text.startswith("To be, or not to be")
    assert lp.token_logprobs[0] is None and all(x <= 0 for x in lp.token_logprobs[1:])
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == answer.usage.total_tokens
    assert all(len(top) <= 2 for top in lp.top_logprobs[1:])
    # the greedy token is the best of its top list
    assert math.isclose(lp.token_logprobs[-1], max(lp.top_logprobs[-1].values()), abs_tol=1e-6)
    chat = client.chat.completions.create(
        model=server.model, messages=[{"role": "user", "content": "Hi"}], max_tokens=3, logprobs=True, top_logprobs=2
    )
    assert len(chat.choices[0].logprobs.content) >= 1


def test_logit_bias_forces_a_token_in_greedy_and_sampled_decoding(client, server, trained_run):
    tokenizer = load_tokenizer(trained_run)
    [forced] = tokenizer.encode(" the", add_special_tokens=False)
    bias = {str(forced): 100}
    for temperature in (0, 1.0):
        answer = client.completions.create(
            model=server.model, prompt="ROMEO:", max_tokens=4, temperature=temperature, logit_bias=bias
        )
        assert answer.choices[0].text == " the" * 4, temperature
    chat = client.chat.completions.create(
        model=server.model, messages=[{"role": "user", "content": "Hi"}], max_tokens=3, temperature=0, logit_bias=bias
    )
    assert chat.choices[0].message.content == " the" * 3


def test_logit_bias_bans_the_greedy_token_and_logprobs_stay_the_models(client, server, trained_run):
    def first_token(**kwargs):
        answer = client.completions.create(
            model=server.model, prompt="ROMEO:", max_tokens=1, temperature=0, logprobs=1, **kwargs
        )
        return answer.choices[0].logprobs

    free = first_token()
    [greedy] = load_tokenizer(trained_run).encode(free.tokens[0], add_special_tokens=False)
    banned = first_token(logit_bias={str(greedy): -100})
    assert banned.tokens[0] != free.tokens[0]
    assert banned.top_logprobs[0] == free.top_logprobs[0]  # logprobs are the model's, before the bias


def test_bad_logit_bias_is_a_400_naming_it(server, trained_run):
    vocab_size = load_tokenizer(trained_run).vocab_size
    cases = [
        ("/v1/completions", '{"abc": 5}', "not a token id"),
        ("/v1/completions", '{"-1": 5}', "not a token id"),
        ("/v1/completions", f'{{"{vocab_size}": 5}}', f"token ids in [0, {vocab_size})"),
        ("/v1/completions", '{"5": 101}', "[-100, 100]"),
        ("/v1/completions", '{"5": NaN}', "[-100, 100]"),  # Python's JSON parser takes NaN
        ("/v1/completions", '{"5": "high"}', "[-100, 100]"),
        ("/v1/completions", "[5]", "maps token ids"),
        ("/v1/chat/completions", '{"5": -100.5}', "[-100, 100]"),
        ("/v1/chat/completions", f'{{"{vocab_size}": 5}}', f"token ids in [0, {vocab_size})"),
    ]
    headers = {"Content-Type": "application/json"}
    for path, bias, phrase in cases:
        question = '"prompt": "x"' if path == "/v1/completions" else '"messages": [{"role": "user", "content": "x"}]'
        content = f'{{"model": "{server.model}", {question}, "max_tokens": 1, "logit_bias": {bias}}}'
        response = httpx.post(f"{server.url}{path}", content=content, headers=headers, timeout=10)
        error = response.json()["error"]
        assert response.status_code == 400 and error["type"] == "invalid_request_error", (bias, response.text)
        assert error["param"] == "logit_bias" and phrase in error["message"], (bias, error)


def test_errors_have_openai_shape(client, server):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=server.model, prompt="word " * 2000, max_tokens=4)
    assert "context" in e.value.message and e.value.body["param"] == "prompt"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=server.model, prompt="x", temperature=7)
    assert e.value.body["param"] == "temperature"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-4", prompt="x")
    response = httpx.post(f"{server.url}/v1/chat/completions", content=b"{not json", timeout=10)
    assert response.status_code == 400 and set(response.json()["error"]) >= {"message", "type", "param", "code"}


def test_seed_beyond_torchs_range_is_a_400_naming_seed(client, server):
    for seed in (2**64, -(2**63) - 1):
        with pytest.raises(openai.BadRequestError) as e:
            client.completions.create(model=server.model, prompt="x", max_tokens=1, seed=seed)
        assert e.value.body["param"] == "seed"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=server.model, messages=[{"role": "user", "content": "Hi"}], seed=2**64)
    assert e.value.body["param"] == "seed"
    # the edges of torch's range are seeds; choice j's seed + j wraps around past the top
    client.completions.create(model=server.model, prompt="x", max_tokens=2, seed=-(2**63))
    top = client.completions.create(model=server.model, prompt="x", max_tokens=2, seed=2**64 - 1, n=2)
    assert len(top.choices) == 2


def test_body_not_json_is_a_400_saying_so(server):
    def error(content: bytes, content_type: str) -> str:
        headers = {"Content-Type": content_type}
        response = httpx.post(f"{server.url}/v1/completions", content=content, headers=headers, timeout=10)
        assert response.status_code == 400 and response.json()["error"]["param"] is None, response.text
        return response.json()["error"]["message"]

    malformed = error(b'{"model": "m", "prompt": }', "application/json")
    assert malformed.startswith("the body is not JSON (") and "OpenAI request object" in malformed
    assert "Content-Type: application/json" in error(b'{"model": "m"}', "application/x-www-form-urlencoded")  # curl -d
    assert "OpenAI request object" in error(b"[1, 2]", "application/json")


def test_lone_surrogate_is_a_400_naming_the_field(server):
    """JSON may escape half a UTF-16 pair ("\\ud800"); Python decodes it into a str no tokenizer takes."""
    chat = '"messages": [{"role": "user", "content": %s}]'
    cases = [
        ("/v1/completions", '"prompt": "\\ud800"', "prompt", "prompt holds"),
        ("/v1/completions", '"prompt": ["ok", "\\ud800"], "echo": true', "prompt", "prompt.1 holds"),
        ("/v1/completions", '"prompt": "x", "stop": ["\\udfff"]', "stop", "stop.0 holds"),
        ("/v1/chat/completions", chat % '"\\ud800x"', "messages", "messages.0.content holds"),
        ("/v1/chat/completions", chat % '[{"type": "text", "text": "\\ud800"}]', "messages", "content.0.text holds"),
    ]
    headers = {"Content-Type": "application/json"}
    for path, fields, param, phrase in cases:
        content = f'{{"model": "{server.model}", {fields}}}'
        response = httpx.post(f"{server.url}{path}", content=content, headers=headers, timeout=10)
        error = response.json()["error"]
        assert response.status_code == 400 and error["type"] == "invalid_request_error", (fields, response.text)
        assert error["param"] == param and phrase in error["message"] and "surrogate" in error["message"], error


def test_port_out_of_range_is_a_one_line_error(tmp_path):
    for port in ("70000", "-1"):
        result = run_mai("serve", str(tmp_path), "--port", port, check=False)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and lines == [
            f"error: port {port} is out of range: ports are 0-65535; pick another with --port"
        ], result.stderr


def test_unknown_routes_and_methods_have_openai_shape(server):
    for method, path, status, phrase in (
        ("GET", "/v1/completions", 405, "POST"),
        ("POST", "/v1/embeddings", 404, "/v1/embeddings"),
    ):
        response = httpx.request(method, f"{server.url}{path}", timeout=10)
        body = response.json()
        assert response.status_code == status and list(body) == ["error"], body
        assert set(body["error"]) == {"message", "type", "param", "code"} and phrase in body["error"]["message"]


def test_serve_says_where_it_listens(server):
    log = server.log()
    assert f"mai serve: {server.url} (model {server.model}, KV cache " in log and " GB, chat page at /)" in log


def test_port_in_use_is_a_one_line_error_before_the_model_loads(trained_run, monkeypatch):
    def load_pretrained(*args):
        raise AssertionError("the model loaded before the port was checked")

    monkeypatch.setattr(launch, "load_pretrained", load_pretrained)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(MaiError, match=f"port {port} .*in use"):
            launch.serve(
                launch.ServeSettings(path=trained_run.path, port=port, max_batch=1, max_waiting=1, precision="fp32")
            )
        result = run_mai("serve", str(trained_run.path), "--port", str(port), check=False)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "--port" in lines[0], result.stderr
    assert lines[0].startswith(f"error: port {port} ")


def test_health_and_metrics(client, server):
    client.completions.create(model=server.model, prompt="x", max_tokens=2)
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}
    text = httpx.get(f"{server.url}/metrics").text
    for name in (
        "mai_requests_total",
        "mai_prompt_tokens_total",
        "mai_generation_tokens_total",
        "mai_time_to_first_token_seconds_bucket",
        "mai_time_per_output_token_seconds_bucket",
        "mai_requests_running",
        "mai_requests_waiting",
        "mai_kv_cache_usage_ratio",
    ):
        assert name in text


def post(server, path: str, fields: dict) -> httpx.Response:
    """A one-token request to `path` with `fields` added to (or replacing) a valid body."""
    question = {"prompt": "x"} if path == "/v1/completions" else {"messages": [{"role": "user", "content": "x"}]}
    body = {"model": server.model, **question, "max_tokens": 1, **fields}
    return httpx.post(f"{server.url}{path}", json=body, timeout=30)


def assert_400(response: httpx.Response, param: str, phrase: str) -> None:
    error = response.json()["error"]
    assert response.status_code == 400 and error["type"] == "invalid_request_error", response.text
    assert error["param"] == param and phrase in error["message"], error


def test_fields_of_the_wrong_json_type_are_a_400_naming_them(server):
    """Only true and false are booleans: "false" is not, as a gateway testing its truth would see."""
    cases = [
        ("/v1/completions", {"stream": "false"}, "stream", "valid boolean"),
        ("/v1/completions", {"stream": "yes"}, "stream", "valid boolean"),
        ("/v1/completions", {"stream": 1}, "stream", "valid boolean"),
        ("/v1/completions", {"echo": "true"}, "echo", "valid boolean"),
        ("/v1/completions", {"stream_options": {"include_usage": "yes"}}, "stream_options.include_usage", "boolean"),
        ("/v1/chat/completions", {"stream": 0}, "stream", "valid boolean"),
        ("/v1/chat/completions", {"logprobs": "true"}, "logprobs", "valid boolean"),
        ("/v1/completions", {"max_tokens": "5"}, "max_tokens", "valid integer"),
        ("/v1/completions", {"max_tokens": 5.0}, "max_tokens", "valid integer"),
        ("/v1/completions", {"n": True}, "n", "valid integer"),
        ("/v1/completions", {"logprobs": True}, "logprobs", "valid integer"),
        ("/v1/chat/completions", {"seed": "7"}, "seed", "valid integer"),
        ("/v1/completions", {"temperature": "0"}, "temperature", "valid number"),
    ]
    for path, fields, param, phrase in cases:
        assert_400(post(server, path, fields), param, phrase)
    for path in ("/v1/completions", "/v1/chat/completions"):
        flags = {"stream": False, "stream_options": {"include_usage": True}, "temperature": 0}
        assert post(server, path, flags).status_code == 200
        # null is "not given", as OpenAI reads it
        nulls = {"stream": None, "temperature": None, "n": None, "top_p": None, "stop": None, "logprobs": None}
        assert post(server, path, nulls).json()["choices"][0]["index"] == 0


def test_prompt_token_id_out_of_range_is_named(server, trained_run):
    vocab_size = load_tokenizer(trained_run).vocab_size
    for prompt, bad in (([1, -5], -5), ([1, vocab_size, 2], vocab_size), ([[1], [2, -1]], -1)):
        assert_400(
            post(server, "/v1/completions", {"prompt": prompt}), "prompt", f"[0, {vocab_size}); the prompt has {bad}"
        )


def test_fields_the_server_does_not_implement_are_a_400(server):
    """Refused, not ignored: a client would believe its setting took effect."""
    image = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    cases = [
        ("/v1/chat/completions", {"response_format": {"type": "json_object"}}, "response_format", "JSON modes"),
        ("/v1/chat/completions", {"tools": [{"type": "function"}]}, "tools", "tool calls are not supported"),
        ("/v1/completions", {"frequency_penalty": 0.5}, "frequency_penalty", "not supported"),
        ("/v1/chat/completions", {"presence_penalty": -1}, "presence_penalty", "not supported"),
        ("/v1/chat/completions", {"top_logprobs": 2}, "top_logprobs", '"logprobs": true'),
        ("/v1/chat/completions", {"logprobs": False, "top_logprobs": 0}, "top_logprobs", '"logprobs": true'),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "What is this?"}, image]}]},
            "messages.0.content",
            "part 1 is of type 'image_url'; only text parts are supported",
        ),
    ]
    for path, fields, param, phrase in cases:
        assert_400(post(server, path, fields), param, phrase)
    # the values that ask for nothing are accepted, and so are fields we do not know (OpenAI's `user`, say)
    neutral = {"frequency_penalty": 0, "presence_penalty": None, "user": "user-42", "foo": 1}
    assert post(server, "/v1/completions", neutral).status_code == 200
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}], "logprobs": True}
    chat = {**neutral, **parts, "top_logprobs": 2, "response_format": {"type": "text"}, "tools": []}
    assert post(server, "/v1/chat/completions", chat).status_code == 200


def metrics_text(server) -> str:
    return httpx.get(f"{server.url}/metrics", timeout=10).text


def metric(server, name: str) -> float:
    return float(next(line.split()[1] for line in metrics_text(server).splitlines() if line.startswith(f"{name} ")))


def test_client_hanging_up_a_non_streaming_request_stops_its_rows(server, trained_run):
    """Its rows leave the batch at once, not when the generation ends; a gateway that times out on a
    backend hangs up the same way."""
    eos = load_tokenizer(trained_run).eos_id
    body = {"model": server.model, "prompt": "hi", "max_tokens": 250, "n": 16}
    if eos is not None:
        body["logit_bias"] = {str(eos): -100}  # every row runs its 250 tokens unless stopped
    content = json.dumps(body).encode()
    head = (
        f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(content)}"
    )
    before = metric(server, "mai_generation_tokens_total")
    with socket.create_connection(("127.0.0.1", server.port)) as connection:
        connection.sendall(f"{head}\r\n\r\n".encode() + content)
        deadline = time.monotonic() + 30
        while metric(server, "mai_requests_running") == 0:
            assert time.monotonic() < deadline, "the request never started"
            time.sleep(0.01)
    deadline = time.monotonic() + 60
    while metric(server, "mai_requests_running") + metric(server, "mai_requests_waiting") > 0:
        assert time.monotonic() < deadline, "rows still in the engine a minute after the client hung up"
        time.sleep(0.01)
    generated = metric(server, "mai_generation_tokens_total") - before
    assert generated < 16 * 250 / 4, f"{generated:.0f} of the 4,000 tokens asked for were generated"
    # the request ends as a 499 (client closed request), not as a 500 from answering half the choices
    while 'mai_requests_total{endpoint="/v1/completions",status="499"} 1.0' not in metrics_text(server):
        assert time.monotonic() < deadline, "the hung-up request was never counted as a 499"
        time.sleep(0.01)
