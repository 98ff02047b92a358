"""Text in, text out: `mai generate` and the report's samples, over the KV-cache decoder."""

from collections.abc import Iterator
from pathlib import Path

import torch

from mai.console import say
from mai.errors import MaiError
from mai.loading import load_pretrained, load_run_model, prepare_for_decoding
from mai.model.decode import generate
from mai.precision import InferencePrecision
from mai.run import RunDir, write_json
from mai.run_files import Sample, Samples


def load_for_generation(run: RunDir, precision: InferencePrecision = "auto"):
    """(model, config, tokenizer) ready to decode (loading.prepare_for_decoding)."""
    model, config, tokenizer = load_run_model(run)
    return prepare_for_decoding(model, precision), config, tokenizer


def load_model_for_generation(path: Path, precision: InferencePrecision = "auto"):
    """(model, tokenizer) ready to decode from a run directory, a transformers directory or a .gguf file."""
    if RunDir(path).config_path.is_file() or not path.exists():
        model, _, tokenizer = load_for_generation(RunDir(path).require(), precision)
        return model, tokenizer
    model, tokenizer, _ = load_pretrained(path)
    return prepare_for_decoding(model, precision), tokenizer


def completion_pieces(
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
        say(
            f"note: the prompt is {len(ids)} tokens and the context {model.config.max_seq_len}, "
            f"so the completion stops after at most {room} tokens, not {max_new_tokens}"
        )
    stop_ids = (tokenizer.eos_id,) if tokenizer.eos_id is not None else ()
    yield from decoded_pieces(
        model, tokenizer, ids, min(max_new_tokens, room), temperature, top_k, top_p, seed, stop_ids, compile
    )


def decoded_pieces(
    model, tokenizer, ids: list[int], new_tokens: int, temperature, top_k, top_p, seed, stop_ids, compile=False
) -> Iterator[str]:
    """Yield the text of up to new_tokens tokens generated after ids, until a stop id; a piece never
    ends inside a UTF-8 character."""
    completion: list[int] = []
    text, emitted = tokenizer.text_stream(), 0
    steps = generate(model, torch.tensor([ids]), new_tokens, temperature, top_k, top_p, seed, stop_ids, compile)
    for token in steps:
        token_id = int(token[0])
        if token_id in stop_ids:
            break
        completion.append(token_id)
        piece = text.step(token_id)
        if piece:
            emitted += len(piece)
            yield piece
    rest = tokenizer.decode(completion, skip_special_tokens=True)[emitted:]  # an unfinished character, if any
    if rest:
        yield rest


def write_samples(run: RunDir) -> Samples:
    """Complete the config's prompts with the latest checkpoint into samples.json."""
    model, config, tokenizer = load_for_generation(run)
    sc = config.sample
    samples = []
    for i, prompt in enumerate(sc.prompts):
        pieces = completion_pieces(model, tokenizer, prompt, sc.max_new_tokens, sc.temperature, sc.top_k, 1.0, i)
        samples.append(Sample(prompt=prompt, text=prompt + "".join(pieces)))
    record = Samples(
        checkpoint=run.latest_checkpoint().name, temperature=sc.temperature, top_k=sc.top_k, samples=samples
    )
    write_json(run.samples_path, record)
    return record
