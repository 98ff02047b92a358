"""`mai run`: every stage in order, skipping those whose outputs are complete, so a rerun resumes."""

from rich.console import Console

from mai.config import RunConfig
from mai.data.prepare import prepare_data
from mai.errors import MaiError
from mai.eval.record import read_eval
from mai.eval.runner import evaluate
from mai.report import write_report
from mai.run import CheckpointMeta, RunDir, Samples, make_directory, read_json
from mai.sample import write_samples
from mai.taskdata import resolve_tasks
from mai.train.loop import train

console = Console(stderr=True)
# `mai run` evaluates on the quick `core` suite, the first EVAL_LIMIT examples of each task: a
# first look that keeps the demo short (`mai eval RUN` scores whole tasks).
EVAL_TASKS, EVAL_LIMIT = ["core"], 20


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
    if _data_is_complete(run):
        console.print("data: complete, skipped")
    else:
        manifest = prepare_data(run, config)
        console.print(f"data: {manifest['tokens']['train']:,} train and {manifest['tokens']['val']:,} val tokens")
    checkpoint = run.latest_checkpoint()
    if checkpoint is not None and read_json(checkpoint / "meta.json", CheckpointMeta)["step"] >= config.train.steps:
        console.print(f"train: {checkpoint.name} is final, skipped")
    else:
        train(run, resume=checkpoint is not None)
    samples = read_json(run.samples_path, Samples) if run.samples_path.is_file() else None
    if samples is None or samples["checkpoint"] != run.latest_checkpoint().name:
        write_samples(run)
    evaluation = read_eval(run.path / "eval.json") if (run.path / "eval.json").is_file() else None
    if evaluation is None or evaluation["checkpoint"] != run.latest_checkpoint().name:
        evaluation = evaluate(run.path, EVAL_TASKS, EVAL_LIMIT)
    elif evaluation["settings"]["tasks"] != resolve_tasks(EVAL_TASKS) or evaluation["settings"]["limit"] != EVAL_LIMIT:
        tasks, limit = evaluation["settings"]["tasks"], evaluation["settings"]["limit"]
        console.print(
            f"eval: keeping eval.json of another `mai eval` (tasks {', '.join(tasks)}; limit {limit}); "
            "delete it to evaluate the default suite"
        )
    console.print(f"eval: CORE {evaluation['core']:+z.4f}, {evaluation['bpb']['val_bpb']:.4f} bits/byte")
    write_report(run)
    console.print(f"report: {run.report_path}")


def _data_is_complete(run: RunDir) -> bool:
    if not run.manifest_path.is_file():
        return False
    run.read_tokens("train")  # verifies every checksum: a corrupt shard is an error, not a silent redo
    run.read_tokens("val")
    return True
