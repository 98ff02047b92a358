"""`mai gateway`'s config: model aliases routed to backends, and client keys with their quotas.

The format, with an example, is documented in gateway.py. The config is checked whole at start
(unknown keys, URLs, backends' API keys, the usage log) rather than requests failing on it later.
"""

import os
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mai.config import read_toml
from mai.errors import MaiError


class GatewaySection(BaseModel):
    """A table of the gateway config: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


class Backend(GatewaySection):
    url: str = Field(description="OpenAI-compatible base URL ending in /v1.")
    model: str = Field(description="The model name this backend expects.")
    weight: int = Field(1, ge=0, description="Share of the alias's traffic among its backends.")
    api_key_env: str | None = Field(None, description="Environment variable holding this backend's API key.")

    @field_validator("url")
    @classmethod
    def without_trailing_slash(cls, url: str) -> str:
        return url.rstrip("/")  # the gateway appends "/completions": ".../v1/" would ask for "/v1//completions"

    @property
    def name(self) -> str:
        return f"{self.url}#{self.model}"


class Route(GatewaySection):
    backends: list[Backend] = Field(min_length=1, description="Weighted primaries.")
    fallbacks: list[Backend] = Field([], description="Tried in order when the primary fails.")
    timeout_s: float = Field(60.0, gt=0, description="Seconds to connect to a backend or to wait for its next bytes.")


class ClientKey(GatewaySection):
    key_env: str = Field(description="Environment variable holding the key clients send as Bearer.")
    token_quota: int | None = Field(None, ge=0, description="Tokens per window; none means unlimited.")
    quota_window_s: float = Field(86400.0, gt=0, description="Length of the quota window.")


class GatewayConfig(GatewaySection):
    host: str = "127.0.0.1"
    port: int = 9000
    usage_log: str = Field("gateway_usage.jsonl", description="JSONL file, one line per request sent to backends.")
    models: dict[str, Route] = Field(min_length=1, description="Model alias → route.")
    keys: dict[str, ClientKey] = Field({}, description="Client key name → key and quota.")


def load_gateway_config(path: Path) -> GatewayConfig:
    if not path.exists():
        raise MaiError(f"{path} does not exist; write a gateway config (see `mai gateway --help`)")
    try:
        config = GatewayConfig.model_validate(read_toml(path))
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise MaiError(f"{path}: {where}: {first['msg']}") from None
    check_backends(config)
    check_usage_log(config.usage_log)
    return config


def check_backends(config: GatewayConfig) -> None:
    """Every backend's url is a full http(s) URL and its api_key_env is set now, rather than each of its
    requests failing later."""
    for alias, route in config.models.items():
        for backend in (*route.backends, *route.fallbacks):
            url = urlsplit(backend.url)
            if url.scheme not in ("http", "https") or not url.netloc:
                raise MaiError(
                    f"model {alias}: backend {backend.name}: url {backend.url!r} is not an http:// or https:// URL; "
                    'write the base URL in full, as in url = "http://127.0.0.1:8000/v1"'
                )
            if backend.api_key_env and not os.environ.get(backend.api_key_env):
                raise MaiError(
                    f"model {alias}: backend {backend.name}: environment variable {backend.api_key_env} "
                    "is empty or unset; export its API key"
                )


def check_usage_log(usage_log: str) -> None:
    """The usage log can be appended to now, rather than each request failing to log later."""
    path = Path(usage_log)
    if path.is_dir():
        problem = "is a directory"
    elif not path.parent.is_dir():
        problem = f"is in {path.parent}, which is not a directory"
    elif not os.access(path if path.exists() else path.parent, os.W_OK):
        problem = "is not writable"
    else:
        return
    raise MaiError(f"usage_log {usage_log} {problem}; set usage_log to a file the gateway can append to")
