"""`mai run`: every stage in order, skipping those whose outputs are complete, so a rerun resumes;
and `mai sft`, which is both `mai run`'s sft stage and a command of its own.

Each stage is a name, a `done` check that reads only the run directory (and says why the stage is
complete, or None when it is not), and a `run` that does the work. Stages meet only in the run
directory: each reads what earlier ones wrote there.
"""

from collections.abc import Callable
from typing import NamedTuple

from mai.config import RunConfig
from mai.console import say
from mai.data.conversations import read_sources, write_conversations
from mai.data.prepare import prepare_data
from mai.errors import MaiError
from mai.eval.record import read_eval
from mai.eval.runner import evaluate
from mai.generate import write_samples
from mai.report import write_report
from mai.run import RunDir, make_directory, read_checkpoint_meta, read_json
from mai.run_files import EvalRecord, Samples, SftRecord
from mai.taskdata import resolve_tasks
from mai.train.loop import train
from mai.train.sft import conversations_dir, create_sft_run, fine_tune

# `mai run` evaluates on the quick `core` suite, the first EVAL_LIMIT examples of each task: a
# first look that keeps the demo short (`mai eval RUN` scores whole tasks).
EVAL_TASKS, EVAL_LIMIT = ["core"], 20


class Stage(NamedTuple):
    name: str
    done: Callable[[RunDir, RunConfig], str | None]
    run: Callable[[RunDir, RunConfig], None]


def init_run(run: RunDir, config: RunConfig) -> None:
    """Write config.toml; an existing run must have been created with the same config."""
    if run.config_path.is_file():
        existing = run.read_config()
        if existing != config:
            raise MaiError(
                f"{run.path} was created with a different config; use a new run directory, "
                f"or compare {run.config_path} with `mai config show`"
            )
        return
    make_directory(run.path)
    run.write_config(config)


def run_all(run: RunDir, config: RunConfig) -> None:
    init_run(run, config)
    for stage in STAGES:
        why = stage.done(run, config)
        if why is None:
            stage.run(run, config)
        else:
            say(f"{stage.name}: {why}")


def data_done(run: RunDir, config: RunConfig) -> str | None:
    if not run.manifest_path.is_file():
        return None
    run.read_tokens("train")  # verifies every checksum: a corrupt shard is an error, not a silent redo
    run.read_tokens("val")
    return "complete, skipped"


def prepare(run: RunDir, config: RunConfig) -> None:
    manifest = prepare_data(run, config)
    say(f"data: {manifest.tokens.train:,} train and {manifest.tokens.val:,} val tokens")


def train_done(run: RunDir, config: RunConfig) -> str | None:
    return trained_to(run, config.train.steps)


def trained_to(run: RunDir, steps: int) -> str | None:
    """Why the run's training is complete (its latest checkpoint is at `steps`), or None."""
    checkpoint = run.latest_checkpoint()
    if checkpoint is not None and read_checkpoint_meta(checkpoint).step >= steps:
        return f"{checkpoint.name} is final, skipped"
    return None


def train_or_resume(run: RunDir, config: RunConfig) -> None:
    train(run, resume=run.latest_checkpoint() is not None)


def samples_done(run: RunDir, config: RunConfig) -> str | None:
    if run.samples_path.is_file() and read_json(run.samples_path, Samples).checkpoint == run.latest_checkpoint().name:
        return "complete, skipped"
    return None


def eval_done(run: RunDir, config: RunConfig) -> str | None:
    """Done when eval.json scores the latest checkpoint, ours or from a `mai eval` the user ran."""
    if not run.eval_path.is_file():
        return None
    evaluation = read_eval(run.eval_path)
    if evaluation.checkpoint != run.latest_checkpoint().name:
        return None
    settings = evaluation.settings
    if settings.tasks == resolve_tasks(EVAL_TASKS) and settings.limit == EVAL_LIMIT:
        return f"{evaluated(evaluation)}, done before, skipped"
    return (
        f"keeping eval.json of another `mai eval` (tasks {', '.join(settings.tasks)}; limit {settings.limit}); "
        f"delete it to evaluate the default suite; {evaluated(evaluation)}"
    )


def run_eval(run: RunDir, config: RunConfig) -> None:
    say(f"eval: {evaluated(evaluate(run.path, EVAL_TASKS, EVAL_LIMIT))}")


def evaluated(evaluation: EvalRecord) -> str:
    core = "no tasks" if evaluation.core is None else f"CORE {evaluation.core:+z.4f}"
    bpb = f", {evaluation.bpb.val_bpb:.4f} bits/byte" if evaluation.bpb else ""
    return core + bpb


def fine_tune_run(run: RunDir, config: RunConfig, resume: bool = False) -> SftRecord:
    """`mai sft`: sft.data checked and split into RUN/sft/ (a run directory), the model fine-tuned
    there, its report written."""
    conversations = read_sources(config.sft.data, run)
    out, sft_config = create_sft_run(run, config)
    kept, held_out = write_conversations(
        conversations, sft_config.sft.held_out, sft_config.train.seed, conversations_dir(out)
    )
    say(f"sft: {kept} training and {held_out} held-out conversations in {conversations_dir(out)}")
    record = fine_tune(out, sft_config, resume)
    write_report(out)
    return record


def sft_done(run: RunDir, config: RunConfig) -> str | None:
    if not config.sft.data:
        return "no sft.data, skipped"
    sft_run = RunDir(run.sft_dir)
    if sft_run.sft_path.is_file() and trained_to(sft_run, config.sft.steps) is not None:
        return f"{sft_run.sft_path} is complete, skipped"
    return None


def run_sft(run: RunDir, config: RunConfig) -> None:
    record = fine_tune_run(run, config, resume=RunDir(run.sft_dir).latest_checkpoint() is not None)
    say(f"sft: {fine_tuned(record)}")


def fine_tuned(record: SftRecord) -> str:
    return (
        f"held-out loss per assistant token {record.base_val_loss:.3f} → {record.val_loss:.3f}; answers ending "
        f"with the end-of-turn token {record.before.end_of_turn_rate:.0%} → {record.after.end_of_turn_rate:.0%}"
    )


def report(run: RunDir, config: RunConfig) -> None:
    write_report(run)
    say(f"report: {run.report_path}")


STAGES = [
    Stage("data", data_done, prepare),
    Stage("train", train_done, train_or_resume),
    Stage("samples", samples_done, lambda run, config: write_samples(run)),
    Stage("eval", eval_done, run_eval),
    Stage("sft", sft_done, run_sft),
    Stage("report", lambda run, config: None, report),  # rendered every time: it costs a second
]
