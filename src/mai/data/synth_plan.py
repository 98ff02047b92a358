"""The prompts of `mai synth`: every combination of topic × audience × format × difficulty, in a
seeded order, repeated with a new replica number when more samples are asked for than there are
combinations (each replica gets its own sampling seed, so its text differs).

A sample's id is a hash of everything that decides its text: the seed fields, the rendered
prompt (so the template), the teacher and every sampling setting. Changing the temperature
therefore makes new ids, and a cached reply is reused only for exactly the request it answered.
"""

import hashlib
import itertools
import json
import random
from dataclasses import dataclass
from pathlib import Path

from mai.config import SynthConfig
from mai.errors import MaiError


@dataclass(frozen=True)
class PlannedSample:
    id: str
    index: int  # position in the plan: outputs are written, and gates applied, in this order
    seed_fields: dict[str, str | int]
    messages: list[dict[str, str]]
    params: dict  # the request's sampling settings, seed included


def read_list(value: list[str] | str, name: str) -> list[str]:
    """A config list given inline, or as the path of a file with one item per line."""
    if isinstance(value, list):
        items = value
    else:
        path = Path(value)
        if not path.is_file():
            raise MaiError(f"synth.{name} = {value!r} is neither a list nor a file", parameter=f"synth.{name}")
        items = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    items = [item for item in items if item]
    if not items:
        raise MaiError(f"synth.{name} is empty; give at least one", parameter=f"synth.{name}")
    return items


def sampling_params(config: SynthConfig, request_seed: int) -> dict:
    params = {
        "temperature": config.temperature,
        "top_p": config.top_p,
        "max_tokens": config.max_tokens,
        "seed": request_seed,
    }
    if config.top_logprobs:
        params |= {"logprobs": True, "top_logprobs": config.top_logprobs}
    return params


def sample_id(seed_fields: dict, messages: list[dict], teacher: str, params: dict) -> str:
    """16 hex digits of the sha256 of every input of the request (the sampling seed is in params)."""
    key = json.dumps([seed_fields, messages, teacher, params], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def plan_samples(config: SynthConfig) -> list[PlannedSample]:
    """The config's samples, in order; the same config always gives the same plan."""
    grid = list(
        itertools.product(
            read_list(config.topics, "topics"),
            read_list(config.audiences, "audiences"),
            config.formats,
            read_list(config.difficulties, "difficulties"),
        )
    )
    random.Random(config.seed).shuffle(grid)
    planned = []
    for index in range(config.samples):
        topic, audience, form, difficulty = grid[index % len(grid)]
        replica = index // len(grid)
        seed_fields = {"topic": topic, "audience": audience, "format": form, "difficulty": difficulty}
        seed_fields["replica"] = replica
        prompt = config.templates[form].format(topic=topic, audience=audience, difficulty=difficulty)
        messages = [{"role": "system", "content": config.system_prompt}] if config.system_prompt else []
        messages.append({"role": "user", "content": prompt})
        request_seed = int(hashlib.sha256(f"{config.seed}/{index}".encode()).hexdigest()[:8], 16)
        params = sampling_params(config, request_seed)
        planned.append(
            PlannedSample(sample_id(seed_fields, messages, config.model, params), index, seed_fields, messages, params)
        )
    return planned
