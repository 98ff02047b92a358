"""`mai serve`'s start: bind the port, load the model, start the engine, run uvicorn until interrupted."""

import ctypes
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from mai.console import say
from mai.errors import MaiError
from mai.loading import load_pretrained, prepare_for_decoding
from mai.precision import InferencePrecision, default_device, weight_bits
from mai.serve.api import AppSettings, build_app
from mai.serve.engine import Engine
from mai.serve.http import bind, run_app, url_of


class ServeSettings(BaseModel):
    """What `mai serve` takes on its command line."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: Path = Field(description="Run directory, transformers checkpoint directory, or a .gguf file.")
    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(8000, description="Port to listen on.")
    api_key_env: str | None = Field(
        None, description="Environment variable holding the API key clients must send as Bearer."
    )
    max_batch: int = Field(16, ge=1, description="Sequences decoded together (KV cache rows).")
    max_context: int | None = Field(
        None, ge=2, description="Tokens per sequence, prompt included (default: the model's)."
    )
    max_waiting: int = Field(256, ge=1, description="Queued sequences before answering 429.")
    precision: InferencePrecision = Field(
        "auto",
        description="auto (bf16 where the CPU or GPU computes it natively), fp32, bf16, or int8/int4 weights (CPU).",
    )
    compile: bool = Field(
        False, description="CPU: decode through torch.compile, 5-20 s per batch-size bucket at start (CUDA: graphs)."
    )


def map_large_allocations(threshold: int = 64 * 1024) -> None:
    """Have glibc give every allocation above `threshold` bytes its own mapping, returned when freed.

    By default glibc raises this threshold after the first large frees, and from then on serves
    tensors from its heap; prompts batched at ever new shapes fragment that heap, and a server's
    memory kept growing over a soak (+160 MB over 1,600 requests, where it stays flat with this).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return  # not glibc: nothing to tune
    M_MMAP_THRESHOLD = -3
    libc.mallopt(M_MMAP_THRESHOLD, threshold)


def progress(line: str) -> None:
    """A progress line on stderr, where the start banner goes too."""
    say(f"mai serve: {line}")


def serve(settings: ServeSettings) -> None:
    """Load the model, start the engine and run uvicorn until interrupted."""
    api_key = None
    if settings.api_key_env:
        api_key = os.environ.get(settings.api_key_env)
        if not api_key:
            raise MaiError(f"environment variable {settings.api_key_env} is empty or unset; export the API key in it")
    hint = "pick another with --port"
    with bind(settings.host, settings.port, hint) as sock:  # before loading, which can take a minute
        map_large_allocations()
        model, tokenizer, _ = load_pretrained(settings.path, default_device())
        model = prepare_for_decoding(model, settings.precision)  # as `mai generate` decodes
        compile = settings.compile or weight_bits(settings.precision) is not None
        if compile and not settings.compile:
            progress(f"{settings.precision} weights decode fast only compiled: compiling, as with --compile")
        context = model.config.max_seq_len
        if settings.max_context is not None and settings.max_context > context:
            raise MaiError(
                f"--max-context {settings.max_context} is longer than this model's context of {context} tokens; "
                f"pass --max-context {context} or less, or leave it out",
                parameter="max_context",
            )
        context = settings.max_context or context
        max_batch = settings.max_batch
        engine = Engine(model, tokenizer, max_batch, context, settings.max_waiting, compile, log=progress).start()
        app_settings = AppSettings(settings.path.resolve().name, api_key)
        try:
            kv_cache = sum(t.nbytes for t in (*engine.cache.k, *engine.cache.v)) / 1e9
            ready = (
                f"mai serve: {url_of(sock)} (model {app_settings.model_name}, KV cache {max_batch} × {context} tokens "
                f"= {kv_cache:.2f} GB, chat page at /)"
            )
            run_app(build_app(engine, app_settings), sock, hint, ready)
        finally:
            engine.stop()
