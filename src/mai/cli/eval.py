"""`mai eval`: score a model (`mai eval RUN`), compare runs, list tasks, and interoperate with lm-eval."""

from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup

from mai.cli.common import path_value, write
from mai.precision import InferencePrecision


class DefaultToRun(TyperGroup):
    """`mai eval RUN ...` means `mai eval run RUN ...`: a first word naming no subcommand goes to `run`."""

    def resolve_command(self, ctx, args):
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["run", *args]
        return super().resolve_command(ctx, args)


eval_app = typer.Typer(
    cls=DefaultToRun,
    no_args_is_help=True,
    help="Evaluate a model: bits per byte, benchmark tasks, a CORE-style aggregate; `mai eval RUN` runs them.",
)


@eval_app.command("run")
def eval_run(
    path: Annotated[
        Path,
        typer.Argument(parser=path_value, help="Run directory, transformers checkpoint directory, or a .gguf file."),
    ],
    tasks: Annotated[
        list[str] | None,
        typer.Option(
            "--tasks",
            "-t",
            help="Task names, suites (core, code, all) or .jsonl files; repeat or comma-separate. Default: core.",
        ),
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Evaluate only the first N examples of each task.")] = None,
    precision: Annotated[
        InferencePrecision,
        typer.Option(
            help="fp32 (default: the same scores on any machine), bf16 autocast, auto (bf16 where the CPU "
            "or GPU computes it natively, as mai generate), or int8/int4 weights; eval.json records the one used."
        ),
    ] = "fp32",
    out: Annotated[
        Path | None,
        typer.Option(
            parser=path_value, help="Where to write eval.json (default: inside PATH if it is a run directory)."
        ),
    ] = None,
):
    """Bits per byte on the validation shards, each task, and the CORE-style aggregate; writes eval.json."""
    from mai.eval.runner import evaluate, format_results

    record = evaluate(path, tasks or ["core"], limit, precision, out)
    write(format_results(record))


@eval_app.command("compare")
def eval_compare(
    paths: Annotated[
        list[Path], typer.Argument(parser=path_value, help="Run directories (or eval.json files) to compare.")
    ],
    chart: Annotated[Path, typer.Option(parser=path_value, help="Bar chart to write (.png, .svg or .pdf).")] = Path(
        "eval_compare.png"
    ),
):
    """Print the runs' eval results side by side and draw them as one grouped bar chart."""
    from mai.eval.compare import compare

    write(compare(paths, chart) + f"chart: {chart}\n")


@eval_app.command("tasks")
def eval_tasks():
    """List the registered tasks: kind, metric, examples and where the data comes from."""
    from mai.taskdata import REGISTRY, SUITES, load_task

    for name, spec in REGISTRY.items():
        write(f"{name:<15} {spec.kind:<9} {spec.metric:<12} {len(load_task(name).examples):>6}  {spec.source}\n")
    write("".join(f"suite {suite}: {', '.join(names)}\n" for suite, names in SUITES.items()))


@eval_app.command("lm-eval-tasks")
def eval_lm_eval_tasks(
    folder: Annotated[
        Path, typer.Argument(parser=path_value, help="Folder for the task files (pass it to lm_eval's --include_path).")
    ],
    tasks: Annotated[
        list[str] | None, typer.Option("--tasks", "-t", help="Tasks or suites, as for `mai eval`.")
    ] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Write only the first N examples of each task.")] = None,
):
    """Write our tasks as lm-evaluation-harness task files (JSONL + YAML), named mai_<task>."""
    from mai.eval.lm_eval_tasks import write_lm_eval_tasks

    names = write_lm_eval_tasks(folder, tasks or ["core"], limit)
    write(f"{folder}: {','.join(names)}\n")


@eval_app.command(
    "lm-eval",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
)
def eval_lm_eval(ctx: typer.Context):
    """lm-evaluation-harness's command line with our model registered as `mai` (takes lm_eval's arguments)."""
    from mai.eval.harness import main as lm_eval_main

    lm_eval_main(ctx.args)
