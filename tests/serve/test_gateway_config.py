"""`mai gateway`'s checks at start: a config that could not work is a one-line error before it listens."""

import socket
import subprocess
import sys

import pytest

from conftest import run_mai
from mai.errors import MaiError
from mai.serve.gateway import Quotas
from mai.serve.gateway_config import ClientKey, load_gateway_config


def test_unset_backend_key_fails_at_start(tmp_path, monkeypatch):
    monkeypatch.delenv("MAI_TEST_VENDOR_KEY", raising=False)
    path = tmp_path / "gateway.toml"
    path.write_text(
        '[models.chat]\nbackends = [{url = "http://127.0.0.1:1/v1", model = "m"}]\n'
        'fallbacks = [{url = "https://vendor.example/v1", model = "v", api_key_env = "MAI_TEST_VENDOR_KEY"}]\n'
    )
    with pytest.raises(MaiError) as e:
        load_gateway_config(path)
    message = str(e.value)
    assert "https://vendor.example/v1#v" in message and "MAI_TEST_VENDOR_KEY" in message and "\n" not in message


@pytest.mark.parametrize("url", ["127.0.0.1:8000/v1", "localhost:8000/v1", "ftp://127.0.0.1/v1"])
def test_backend_url_that_is_not_http_fails_at_start(tmp_path, url):
    path = tmp_path / "gateway.toml"
    path.write_text(f'[models.chat]\nbackends = [{{url = "{url}", model = "m"}}]\n')
    with pytest.raises(MaiError) as e:
        load_gateway_config(path)
    message = str(e.value)
    assert f"url '{url}' is not an http:// or https:// URL" in message and "\n" not in message
    assert 'url = "http://127.0.0.1:8000/v1"' in message


def test_backend_url_loses_its_trailing_slash(tmp_path):
    """The gateway appends /completions; ".../v1/" would ask the backend for /v1//completions."""
    path = tmp_path / "gateway.toml"
    path.write_text('[models.chat]\nbackends = [{url = "http://127.0.0.1:1/v1/", model = "m"}]\n')
    assert load_gateway_config(path).models["chat"].backends[0].url == "http://127.0.0.1:1/v1"


def test_two_keys_with_one_secret_fail_at_start(monkeypatch):
    """They would merge into one, its quota and usage lines under one name."""
    monkeypatch.setenv("MAI_TEST_KEY_1", "same")
    monkeypatch.setenv("MAI_TEST_KEY_2", "same")
    keys = {"team-a": ClientKey(key_env="MAI_TEST_KEY_1"), "team-b": ClientKey(key_env="MAI_TEST_KEY_2")}
    with pytest.raises(MaiError) as e:
        Quotas(keys)
    message = str(e.value)
    assert message.startswith("keys team-a and team-b hold the same secret (MAI_TEST_KEY_1 and MAI_TEST_KEY_2)")
    assert "\n" not in message


@pytest.mark.parametrize("where", ["folder", "missing/usage.jsonl"])
def test_usage_log_that_cannot_be_appended_to_fails_at_start(tmp_path, where):
    usage_log = tmp_path / where
    (tmp_path / "folder").mkdir()
    path = tmp_path / "gateway.toml"
    path.write_text(
        f'usage_log = "{usage_log}"\n[models.chat]\nbackends = [{{url = "http://127.0.0.1:1/v1", model = "m"}}]\n'
    )
    with pytest.raises(MaiError) as e:
        load_gateway_config(path)
    message = str(e.value)
    assert message.startswith(f"usage_log {usage_log} ") and "\n" not in message


def test_port_out_of_range_is_a_one_line_error(tmp_path):
    path = tmp_path / "gateway.toml"
    path.write_text('port = 70000\n[models.chat]\nbackends = [{url = "http://127.0.0.1:1/v1", model = "m"}]\n')
    result = run_mai("gateway", str(path), check=False)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: port 70000 is out of range: ports are 0-65535"), result.stderr


def test_port_in_use_is_a_one_line_error(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = tmp_path / "gateway.toml"
        path.write_text(f'port = {port}\n[models.chat]\nbackends = [{{url = "http://127.0.0.1:1/v1", model = "m"}}]\n')
        result = run_mai("gateway", str(path), check=False)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"error: port {port} "), result.stderr


def test_gateway_imports_neither_torch_nor_the_server():
    code = "import sys, mai.serve.gateway; print(sorted({'torch', 'mai.serve.api'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout == "[]\n"
