"""`mai synth`: a data set written by a teacher model, resumable after a crash with nothing lost or
written twice.

Writes into the run directory's synth/:

    responses.jsonl  every reply, one line per sample id, appended and fsynced as it arrives: the
                     cache a rerun resumes from (a line torn by a kill is dropped and asked again)
    samples.jsonl    the plan's kept samples, in plan order, with the `text` the data pipeline reads
                     (a `kind = "synth"` source)
    rejected.jsonl   the plan's rejected samples, each with its gate's reason
    summary.json     counts, tokens and cost

samples.jsonl and rejected.jsonl are rewritten from the cache at the end of every run, so that
the gates see the samples in plan order, whatever order the replies came in.
"""

import asyncio
import functools
import math
import os
import time
from pathlib import Path

import numpy as np
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from mai.config import RunConfig, SynthConfig
from mai.console import console, say
from mai.data.filters import ngram_hashes
from mai.data.synth_gates import Gates
from mai.data.synth_plan import PlannedSample, plan_samples
from mai.data.teacher import Budget, RateLimiter, cost_of, estimate_prompt_tokens, make_client, request
from mai.run import RunDir, atomic_write_text, write_json
from mai.run_files import SynthRecord, SynthSummary
from mai.taskdata import evaluation_texts


def read_cache(path: Path) -> dict[str, SynthRecord]:
    """The replies so far by id. A last line a kill cut short is cut off the file, so that the
    next append starts on a line of its own."""
    if not path.is_file():
        return {}
    records, good_bytes = {}, 0
    with open(path, "rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                break
            try:
                record = SynthRecord.model_validate_json(line)
            except ValueError:
                break
            records.setdefault(record.id, record)
            good_bytes += len(line)
    if good_bytes < path.stat().st_size:
        with open(path, "r+b") as f:
            f.truncate(good_bytes)
    return records


def append_record(path: Path, record: SynthRecord) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(record.model_dump_json() + "\n")
        f.flush()
        os.fsync(f.fileno())


def training_text(record: SynthRecord) -> str:
    """What the pipeline trains on: the reply, and for a chat sample the question before it."""
    if record.seed.get("format") != "chat":
        return record.response
    question = record.messages[-1]["content"]
    return f"User: {question}\n\nAssistant: {record.response}"


@functools.cache
def eval_ngrams() -> np.ndarray:
    """The 13-gram hashes of every benchmark text (seconds to build: once per process)."""
    hashes = [ngram_hashes(text) for _, text in evaluation_texts()]
    return np.unique(np.concatenate(hashes)) if hashes else np.array([], dtype=np.uint64)


def progress_columns() -> list:
    return [
        TextColumn("[bold]synth"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[status]}"),
        TimeRemainingColumn(),
    ]


async def generate(run: RunDir, config: SynthConfig, todo: list[PlannedSample], budget: Budget, on_record) -> bool:
    """Ask the teacher for every sample of `todo`, config.concurrency at a time, appending each
    reply to the cache as it arrives; False when the spending cap stopped it first."""
    limiter = RateLimiter(config.requests_per_minute, config.tokens_per_minute)
    pending = iter(todo)
    capped, prompt_scale = False, 1.0

    async def worker(client) -> None:
        nonlocal capped, prompt_scale
        for sample in pending:  # one iterator shared by the workers: each sample is taken once
            # the estimate learns from the replies how the server counts prompts (templates, tokenizer)
            prompt_tokens = math.ceil(estimate_prompt_tokens(sample.messages) * prompt_scale)
            reserved = (prompt_tokens + config.max_tokens, cost_of(config, prompt_tokens, config.max_tokens))
            if capped or not await budget.reserve(*reserved):
                capped = True
                return
            spent = (0, 0.0)
            try:
                reply = await request(client, config, limiter, sample.messages, sample.params)
                prompt_scale = max(prompt_scale, reply.prompt_tokens / estimate_prompt_tokens(sample.messages))
                spent = (
                    reply.prompt_tokens + reply.completion_tokens,
                    cost_of(config, reply.prompt_tokens, reply.completion_tokens),
                )
            finally:
                await budget.settle(reserved, spent)
            record = SynthRecord(
                id=sample.id,
                index=sample.index,
                seed=sample.seed_fields,
                messages=sample.messages,
                teacher=config.model,
                params=sample.params,
                response=reply.text,
                finish_reason=reply.finish_reason,
                prompt_tokens=reply.prompt_tokens,
                completion_tokens=reply.completion_tokens,
                cost=spent[1],
                attempts=reply.attempts,
                seconds=round(reply.seconds, 3),
                logprobs=reply.logprobs,
            )
            append_record(run.synth_dir / "responses.jsonl", record)
            on_record(record)

    async with make_client(config) as client:
        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(min(config.concurrency, len(todo))):
                    group.create_task(worker(client))
        except ExceptionGroup as errors:  # the first failure stops the others; finished replies are kept
            raise errors.exceptions[0] from None
    return not capped


def write_outputs(run: RunDir, config: SynthConfig, plan: list[PlannedSample], cache: dict) -> tuple[int, int]:
    """samples.jsonl and rejected.jsonl for the plan's samples that have replies; (kept, rejected)."""
    gates = Gates(config, eval_ngrams() if config.decontaminate else None)
    kept, rejected = [], []
    for sample in plan:
        record = cache.get(sample.id)
        if record is None:
            continue
        text = training_text(record)
        reason = gates.reason(text)
        if reason is None:
            kept.append(record.model_copy(update={"text": text}).model_dump_json())
        else:
            rejected.append(record.model_copy(update={"reason": reason}).model_dump_json())
    atomic_write_text(run.synth_dir / "samples.jsonl", "".join(line + "\n" for line in kept))
    atomic_write_text(run.synth_dir / "rejected.jsonl", "".join(line + "\n" for line in rejected))
    return len(kept), len(rejected)


def synthesize(run: RunDir, config: RunConfig) -> SynthSummary:
    """Generate the [synth] section's samples that the cache does not hold yet, then gate and write them all."""
    sc = config.synth
    plan = plan_samples(sc)
    if config != run.read_config():
        run.write_config(config)
    run.synth_dir.mkdir(exist_ok=True)
    cache = read_cache(run.synth_dir / "responses.jsonl")
    todo = [s for s in plan if s.id not in cache]
    cached = len(cache)
    budget = Budget(
        sc.max_total_tokens,
        sc.max_cost,
        tokens=sum(r.prompt_tokens + r.completion_tokens for r in cache.values()),
        cost=sum(r.cost for r in cache.values()),
    )
    say(
        f"synth: {len(plan) - len(todo)} of {len(plan)} samples cached; asking {sc.model} at {sc.base_url} "
        f"for {len(todo)}, {sc.concurrency} at a time"
    )
    finished = True
    if todo:
        started = time.monotonic()
        with Progress(*progress_columns(), console=console) as progress:
            task = progress.add_task("synth", total=len(plan), completed=len(plan) - len(todo), status="")

            def on_record(record: SynthRecord) -> None:
                cache[record.id] = record
                rate = (len(cache) - cached) / (time.monotonic() - started)
                status = f"{rate:.2f} samples/s · {budget.tokens:,} tokens · ${budget.cost:.4f}"
                progress.update(task, advance=1, status=status)

            finished = asyncio.run(generate(run, sc, todo, budget, on_record))
    kept, rejected = write_outputs(run, sc, plan, cache)
    done = sum(s.id in cache for s in plan)
    summary = SynthSummary(
        planned=len(plan),
        done=done,
        kept=kept,
        rejected=rejected,
        tokens=budget.tokens,
        cost=budget.cost,
        stopped_at_cap=not finished,
    )
    write_json(run.synth_dir / "summary.json", summary)
    if not finished:
        say(
            f"synth: stopped at the spending cap ({budget.tokens:,} tokens, ${budget.cost:.4f}) with {done} of "
            f"{len(plan)} samples; raise synth.max_total_tokens or synth.max_cost and rerun to finish"
        )
    return summary
