"""`mai eval`: bits per byte on the run's validation shards, then each task, then one CORE-style number.

Choice tasks are scored by log-likelihood: `acc` takes the choice with the highest summed
log-probability, `acc_norm` divides it by the choice's length in characters first (as
lm-evaluation-harness does). Generative tasks decode greedily and compare the extracted answer
(exact match after normalising case, commas, `$`, quotes and final punctuation). Code tasks run the completed
program against its tests in the sandbox (pass@1 with greedy decoding).

The CORE-style aggregate is the mean over tasks of the score centred on its random baseline,
(score − baseline) / (1 − baseline), as DCLM and nanochat report: 0 is chance, 1 is perfect.
Results go to eval.json (and every example's details to eval_samples.jsonl) beside the model.
"""

import io
import json
import re
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from mai.bpb import bits_per_byte, validation_windows
from mai.console import console
from mai.errors import MaiError
from mai.eval.record import read_eval
from mai.eval.sandbox import Limits, run_programs
from mai.eval.scoring import Scorer
from mai.loading import load_pretrained
from mai.precision import INFERENCE_PRECISIONS, InferencePrecision, check_precision, default_device
from mai.run import RunDir, atomic_write_text, read_checkpoint_meta, write_json
from mai.run_files import BpbResult, EvalRecord, EvalSettings, TaskResult
from mai.taskdata import Task, load_task, resolve_tasks


def load_for_eval(path: Path, device="cpu"):
    """(model, tokenizer, checkpoint folder, run), the last two None for a transformers/GGUF directory."""
    model, tokenizer, run = load_pretrained(path, device)
    return model, tokenizer, run.latest_checkpoint() if run else None, run


def evaluate(
    path: Path,
    tasks: list[str],
    limit: int | None = None,
    precision: InferencePrecision = "fp32",
    out: Path | None = None,
    limits: Limits | None = None,
    bpb: bool = True,
) -> dict:
    """Evaluate the model at `path` on `tasks` (names, suites or JSONL paths); return eval.json's record.

    It is written to `out`, by default into `path` when that is a run directory. The record's
    settings hold the precision the scores were computed in: 'auto' resolved to fp32 or bf16.
    """
    check_precision(precision, "--precision", INFERENCE_PRECISIONS)
    if limit is not None and limit < 1:
        raise MaiError("--limit must be at least 1", parameter="limit")
    if out is not None:
        check_out(out)
    names = resolve_tasks(tasks)
    if not names:
        raise MaiError("no tasks to evaluate; pass --tasks with task names, a suite (core, code, all) or .jsonl files")
    loaded = [load_task(name, limit) for name in names]  # fail on a bad task before loading the model
    device = default_device()
    model, tokenizer, checkpoint, run = load_for_eval(path, device)
    scorer = Scorer(model, tokenizer, precision)
    tasks, samples = {}, []
    measure_bpb = bpb and run is not None and run.manifest_path.is_file()
    bpb_result = evaluate_bpb(run, scorer) if measure_bpb else None
    for task in loaded:
        tasks[task.name], details = evaluate_task(scorer, task, limits or Limits())
        samples += [{"task": task.name, **d} for d in details]
    record = EvalRecord(
        checkpoint=checkpoint.name if checkpoint else "imported",
        settings=EvalSettings(limit=limit, precision=scorer.precision, tasks=names, device=device.type),
        bpb=bpb_result,
        tasks=tasks,
        core=core_score(tasks),
        model=str(path),
        model_sha256=read_checkpoint_meta(checkpoint).weights_sha256 if checkpoint else None,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    if out is None and run is None:  # never write into a model directory we only read from (site-packages, say)
        console.print(f"{path} is not a run directory, so nothing was saved; pass --out FILE to save eval.json")
        return record
    out = out or path / "eval.json"
    record, earlier_samples = with_earlier_tasks(out, record)
    write_json(out, record)
    atomic_write_text(samples_path(out), "".join(_json_line(s) for s in earlier_samples + samples))
    return record


def samples_path(out: Path) -> Path:
    return out.with_name(out.stem + "_samples.jsonl")


def with_earlier_tasks(out: Path, record: EvalRecord) -> tuple[EvalRecord, list[dict]]:
    """`record` with the tasks that the eval.json at `out` scored on the same weights with the same
    settings, and their samples: evaluating one more task adds it rather than dropping the rest.
    """
    try:
        earlier = read_eval(out) if out.is_file() else None
        lines = samples_path(out).read_text().splitlines() if samples_path(out).is_file() else []
        earlier_samples = [json.loads(line) for line in lines]
    except (MaiError, OSError, ValueError):  # unreadable: replaced, as any other earlier result
        return record, []
    same = (
        earlier is not None
        and record.model_sha256 is not None
        and earlier.model_sha256 == record.model_sha256
        and (earlier.settings.limit, earlier.settings.precision) == (record.settings.limit, record.settings.precision)
    )
    kept = [name for name in earlier.tasks if name not in record.tasks] if same else []
    if not kept:
        return record, []
    tasks = {name: earlier.tasks[name] for name in kept} | record.tasks
    settings = record.settings.model_copy(update={"tasks": list(tasks)})
    record = record.model_copy(update={"tasks": tasks, "settings": settings, "core": core_score(tasks)})
    console.print(f"{out}: kept the earlier results of {', '.join(kept)} (same weights, limit and precision)")
    return record, [sample for sample in earlier_samples if isinstance(sample, dict) and sample.get("task") in kept]


def check_out(out: Path) -> None:
    """Refuse an --out that could not be written, or that would overwrite a file other than an eval.json."""
    if out.is_dir():
        raise MaiError(f"--out {out} is a directory; name a file such as {out / 'eval.json'}", parameter="out")
    folder = next(p for p in out.parents if p.exists())
    if not folder.is_dir():
        raise MaiError(f"--out {out} cannot be written: {folder} is a file, not a folder", parameter="out")
    if out.exists():
        try:
            read_eval(out)
        except MaiError:
            raise MaiError(
                f"--out {out} exists and is not an eval.json; choose another file", parameter="out"
            ) from None


def evaluate_bpb(run: RunDir, scorer: Scorer) -> BpbResult:
    """Bits per byte on the same validation windows training measures val_bpb on."""
    config = run.read_config()
    tc = config.train
    tokens = run.read_tokens("val")
    sizes = scorer.tokenizer.token_bytes()
    token_bytes = torch.tensor(sizes + [0] * (config.model.vocab_size - len(sizes)), device=scorer.device)
    started = time.perf_counter()
    result = bits_per_byte(
        scorer.model,
        validation_windows(tokens, tc.seq_len, tc.batch_size, tc.eval_batches),
        token_bytes,
        scorer.autocast,
    )
    console.print(f"bpb: {result['val_bpb']:.4f} bits/byte over {result['tokens']:,} validation tokens")
    return BpbResult(**result, seconds=time.perf_counter() - started)


def evaluate_task(scorer: Scorer, task: Task, limits: Limits) -> tuple[TaskResult, list[dict]]:
    """Score one task; return its summary and one detail record per example."""
    started = time.perf_counter()
    with _progress(task) as progress:
        bar = progress.add_task(task.name, total=len(task.examples))
        if task.kind == "choice":
            metrics, details = _choice(scorer, task, lambda n: progress.advance(bar, n))
        elif task.kind == "generate":
            metrics, details = _generate(scorer, task, lambda: progress.advance(bar))
        else:
            metrics, details = _code(scorer, task, limits, progress, bar)
        progress.update(bar, completed=len(task.examples))  # fractional advances may fall short by rounding
    seconds = time.perf_counter() - started
    score = metrics[task.metric]
    summary = TaskResult(
        metric=task.metric,
        score=score,
        baseline=task.baseline,
        centered=(score - task.baseline) / (1 - task.baseline),
        kind=task.kind,
        source=task.source,
        examples=len(task.examples),
        **metrics,
        seconds=seconds,
        examples_per_s=len(task.examples) / seconds if seconds else None,
    )
    return summary, details


def core_score(tasks: dict[str, TaskResult]) -> float | None:
    """Mean over tasks of the centred score: 0 at chance, 1 when every answer is right."""
    if not tasks:
        return None
    return sum(t.centered for t in tasks.values()) / len(tasks)


def _choice(scorer: Scorer, task: Task, advance) -> tuple[dict, list[dict]]:
    pairs, owner = [], []
    for i, example in enumerate(task.examples):
        for pair in example.requests(task.prefix):
            pairs.append(pair)
            owner.append(i)
    per_example = [len(e.choices) for e in task.examples]
    results = scorer.loglikelihood(pairs, lambda done: advance(sum(1 / per_example[owner[j]] for j in done)))
    details, start = [], 0
    for example in task.examples:
        logprobs = [lp for lp, _ in results[start : start + len(example.choices)]]
        start += len(example.choices)
        normed = [lp / max(1, len(choice)) for lp, choice in zip(logprobs, example.choices, strict=True)]
        pred, pred_norm = _argmax(logprobs), _argmax(normed)
        details.append(
            {
                "id": example.id,
                "gold": example.gold,
                "logprobs": logprobs,
                "pred": pred,
                "pred_norm": pred_norm,
                "acc": float(pred == example.gold),
                "acc_norm": float(pred_norm == example.gold),
            }
        )
    n = max(1, len(details))
    return {"acc": sum(d["acc"] for d in details) / n, "acc_norm": sum(d["acc_norm"] for d in details) / n}, details


def _generate(scorer: Scorer, task: Task, advance) -> tuple[dict, list[dict]]:
    details = []
    for example in task.examples:
        completion = scorer.generate(task.prefix + example.context, example.stop, example.max_new_tokens)
        extracted = extract_answer(completion, example.pattern)
        correct = extracted is not None and normalize_answer(extracted) == normalize_answer(example.answer)
        details.append(
            {
                "id": example.id,
                "completion": completion,
                "extracted": extracted,
                "answer": example.answer,
                "exact_match": float(correct),
            }
        )
        advance()
    return {"exact_match": sum(d["exact_match"] for d in details) / max(1, len(details))}, details


def _code(scorer: Scorer, task: Task, limits: Limits, progress, bar) -> tuple[dict, list[dict]]:
    completions = []
    for example in task.examples:
        completions.append(scorer.generate(task.prefix + example.context, example.stop, example.max_new_tokens))
        progress.advance(bar, 0.5)
    programs = [
        (task.prefix + e.context if e.prompt_is_code else "") + c + "\n\n" + e.test
        for e, c in zip(task.examples, completions, strict=True)
    ]
    outcomes = run_programs(programs, limits, on_done=lambda: progress.advance(bar, 0.5))
    details = [
        {"id": e.id, "completion": c, "passed": float(o.passed), "status": o.status, "detail": o.detail}
        for e, c, o in zip(task.examples, completions, outcomes, strict=True)
    ]
    layers = outcomes[0].layers if outcomes else ""
    return {"pass@1": sum(d["passed"] for d in details) / max(1, len(details)), "sandbox": layers}, details


def extract_answer(completion: str, pattern: str) -> str | None:
    """The first group of `pattern`'s first match (the stripped completion when there is no pattern)."""
    if not pattern:
        return completion.strip()
    match = re.search(pattern, completion)
    return match.group(1) if match else None


def normalize_answer(text: str) -> str:
    """Case-folded, without commas or `$`, and without quotes, brackets or final punctuation around it."""
    text = re.sub(r"^-\s+", "-", text.strip().casefold().replace(",", "").replace("$", ""))  # "- 10" is -10
    return text.rstrip(".!?;:)]\"'”’").lstrip("(\"'“‘[").strip()


def format_results(record: EvalRecord) -> str:
    """eval.json as a fixed-width table (what `mai eval` prints)."""
    table = Table(title=f"{record.model} ({record.checkpoint})", title_justify="left")
    for column in ("task", "metric", "score", "chance", "centred", "n", "ex/s"):  # chance: eval.json's baseline
        table.add_column(column, justify="left" if column in ("task", "metric") else "right")
    for name, t in record.tasks.items():
        rate = f"{t.examples_per_s:.1f}" if t.examples_per_s else "-"
        examples = "-" if t.examples is None else str(t.examples)
        table.add_row(name, t.metric, f"{t.score:.4f}", f"{t.baseline:.3f}", f"{t.centered:+z.4f}", examples, rate)
    if record.core is not None:
        table.add_row("CORE", "centred mean", "", "", f"{record.core:+z.4f}", "", "", style="bold")
    render = Console(width=120, record=True, file=io.StringIO())
    render.print(table)
    lines = [render.export_text()]
    if record.bpb is not None:
        lines.append(f"validation: {record.bpb.val_bpb:.4f} bits/byte, {record.bpb.val_loss:.4f} nats/token\n")
    return "".join(lines)


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=lambda i: (values[i], -i))


class ExamplesPerSecond(ProgressColumn):
    def render(self, task) -> Text:
        speed = task.completed / task.elapsed if task.elapsed and task.completed else None
        return Text(f"{speed:.2f} ex/s" if speed else "… ex/s", style="progress.data.speed")


def _progress(task: Task) -> Progress:
    return Progress(
        TextColumn(f"[bold]{task.name}[/] ({task.kind})"),
        BarColumn(),
        MofNCompleteColumn(),
        ExamplesPerSecond(),
        TimeRemainingColumn(),
        console=console,
    )


def _json_line(record: dict) -> str:
    return json.dumps(record) + "\n"
