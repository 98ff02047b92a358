"""Text in, text out: `mai generate` and the report's samples, over the KV-cache decoder."""

import sys
from collections.abc import Iterator

import torch

from mai.errors import MaiError
from mai.model.generate import generate
from mai.run import RunDir, atomic_write_json, load_model
from mai.train.loop import resolve_precision

PRECISIONS = ("auto", "fp32", "bf16")


def load_for_generation(run: RunDir, precision: str = "auto"):
    """(model, config, tokenizer) with the weights in the decoding precision (see to_decoding_precision)."""
    check_precision(precision)
    model, config, tokenizer = load_model(run)
    return to_decoding_precision(model, precision), config, tokenizer


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise MaiError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")


def to_decoding_precision(model, precision: str = "auto"):
    """The model with its weights in the decoding precision (`mai generate` and `mai serve` share this).

    'auto' is bf16 where the hardware computes it natively (CUDA, AVX512-BF16 or AMX CPUs), as in
    training: decoding reads every weight once per token, so half the bytes is nearly twice the speed.
    """
    if resolve_precision(precision, next(model.parameters()).device) == "bf16":
        model.to(torch.bfloat16)
    return model


def stream_completion(
    model,
    tokenizer,
    prompt: str,
    max_new_tokens: int,
    temperature: float,
    top_k: int,
    top_p: float,
    seed: int | None,
    compile: bool = False,
) -> Iterator[str]:
    """Yield the completion of `prompt` as text pieces; a piece never ends inside a UTF-8 character."""
    ids = tokenizer.encode(prompt)
    room = model.config.max_seq_len - len(ids)
    if room <= 0:
        raise MaiError(f"the prompt is {len(ids)} tokens; this model's context is {model.config.max_seq_len}")
    if max_new_tokens > room:
        sys.stderr.write(
            f"note: the prompt is {len(ids)} tokens and the context {model.config.max_seq_len}, "
            f"so the completion stops after at most {room} tokens, not {max_new_tokens}\n"
        )
    stop_ids = (tokenizer.eos_id,) if tokenizer.eos_id is not None else ()
    completion: list[int] = []
    emitted = ""
    new_tokens = min(max_new_tokens, room)
    steps = generate(model, torch.tensor([ids]), new_tokens, temperature, top_k, top_p, seed, stop_ids, compile)
    for token in steps:
        token_id = int(token[0])
        if token_id in stop_ids:
            break
        completion.append(token_id)
        text = tokenizer.decode(completion, skip_special_tokens=True)
        if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
            yield text[len(emitted) :]
            emitted = text
    text = tokenizer.decode(completion, skip_special_tokens=True)
    if len(text) > len(emitted):
        yield text[len(emitted) :]


def write_samples(run: RunDir) -> dict:
    """Complete the config's prompts with the latest checkpoint into samples.json."""
    model, config, tokenizer = load_for_generation(run)
    sc = config.sample
    samples = []
    for i, prompt in enumerate(sc.prompts):
        text = "".join(stream_completion(model, tokenizer, prompt, sc.max_new_tokens, sc.temperature, sc.top_k, 1.0, i))
        samples.append({"prompt": prompt, "text": prompt + text})
    record = {
        "checkpoint": run.latest_checkpoint().name,
        "temperature": sc.temperature,
        "top_k": sc.top_k,
        "samples": samples,
    }
    atomic_write_json(run.samples_path, record)
    return record
